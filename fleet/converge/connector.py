"""pyinfra's SSH connector with TCP settings on its socket (hosts named `@fleet/<name>`).

pyinfra's own SSH connector leaves paramiko's socket as the kernel makes it. Two things
follow on a fleet of small hosts:

- A host that stops answering mid-run (power cut, cable pulled, tailnet down) hangs the
  run: the read waits for output that never comes and TCP only gives up after ~15 minutes
  of retransmissions. Here the socket gets TCP keepalive probes (after `IDLE` s of silence,
  every `INTERVAL` s, `COUNT` of them) and TCP_USER_TIMEOUT (unacknowledged data for
  `USER_TIMEOUT` s ends the connection), so such a host fails its run with an error that
  names it, within about a minute, while the other hosts finish.
- Nagle's algorithm with delayed ACKs adds ~40 ms to every small request/response round
  trip, and a converge is mostly those; TCP_NODELAY removes it.

When such a connection dies, paramiko raises EOFError, which pyinfra does not expect from a
connector: it aborts the whole run, every host with it. This connector reports it as the
SSHException pyinfra handles per host, so only that host fails, named, and the others
finish.

The options are set on the connected socket through paramiko's public Transport.sock; this
subclass changes nothing else (no paramiko internals are patched). It is registered as the
pyinfra connector `fleet` in pyproject.toml, and the inventory names every host
`@fleet/<name>`: the host is still called `<name>` everywhere (--limit, output, data).
"""

from __future__ import annotations

import socket

from paramiko import SSHException
from pyinfra.connectors.ssh import SSHConnector

IDLE = 15
INTERVAL = 5
COUNT = 4
USER_TIMEOUT = 45


def tune(sock: socket.socket) -> None:
    """Apply the fleet's TCP options to a connected socket (those the platform has)."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", IDLE), ("TCP_KEEPINTVL", INTERVAL), ("TCP_KEEPCNT", COUNT),
                        ("TCP_USER_TIMEOUT", USER_TIMEOUT * 1000)):
        option = getattr(socket, name, None)
        if option is not None:
            sock.setsockopt(socket.IPPROTO_TCP, option, value)


class FleetSSHConnector(SSHConnector):
    __examples_doc__ = "Hosts are named @fleet/<inventory name>; everything else is pyinfra's SSH connector."

    @staticmethod
    def make_names_data(name: str | None = None):
        if not name:
            raise ValueError("@fleet connector needs a host name: @fleet/<name>")
        yield name, {}, []

    def _connect(self) -> None:
        super()._connect()
        transport = self.client.get_transport() if self.client is not None else None
        if transport is not None and isinstance(transport.sock, socket.socket):
            tune(transport.sock)

    def _lost(self, exc: EOFError) -> SSHException:
        return SSHException(f"the connection to {self.host.name} was lost mid-run ({type(exc).__name__})")

    def run_shell_command(self, *args, **kwargs):
        try:
            return super().run_shell_command(*args, **kwargs)
        except EOFError as exc:
            raise self._lost(exc) from None

    def put_file(self, *args, **kwargs):
        try:
            return super().put_file(*args, **kwargs)
        except EOFError as exc:
            raise self._lost(exc) from None

    def get_file(self, *args, **kwargs):
        try:
            return super().get_file(*args, **kwargs)
        except EOFError as exc:
            raise self._lost(exc) from None

"""Services by name: where service S binds on host H, and how host A reaches S on host B.

The port map (`fleet_services` in group_data/all.py) is the one place a port, a bind scope
and the hosts that run a service are written. Everything else asks this module:

    services = ServiceMap.of_pyinfra(host)              # in a deploy
    services = fleet.services                           # in validation, specs, commands
    services.bind("llm", "jetson-prime")                # Endpoint("100.100.0.10", 8080)
    services.url("web", client="pi5-alpha", server="pi5-alpha")   # http://127.0.0.1:3000
    services.url("agents", client="pi5-alpha", server="pi5-beta") # http://100.100.0.2:8001

A service runs on the hosts of its `groups` ("all": every host) or, with `component`, on
the hosts that component applies to. Bind scopes: "loopback" is 127.0.0.1, "tailnet" the
host's tailnet address, "lan" its LAN address; never a wildcard. A client reaches a service
over 127.0.0.1 on the same host when it binds loopback, otherwise over the tailnet when it
binds the tailnet address; anything else is refused with `Unreachable`.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

SCOPES = ("loopback", "tailnet", "lan")
# Tailscale's address range (CGNAT): every node's tailnet address is in it.
TAILNET_RANGE = ipaddress.ip_network("100.64.0.0/10")
LOOPBACK = "127.0.0.1"
# The group pyinfra adds for the inventory file itself (inventory.py -> "inventory").
PYINFRA_FILE_GROUP = "inventory"


class Unreachable(ValueError):
    """A client cannot reach a service where it binds (or the host does not run it)."""


@dataclass(frozen=True)
class Endpoint:
    address: str
    port: int

    def __str__(self) -> str:
        return f"{self.address}:{self.port}"


@dataclass(frozen=True)
class HostAddresses:
    """What addressing needs to know of a host."""

    name: str
    groups: tuple[str, ...]
    tailnet_address: str
    lan_address: str  # without the prefix length
    data: Any  # effective data (for a service that follows a component's applicability)


def bare(address: Any) -> str:
    """'192.168.1.11/24' -> '192.168.1.11'."""
    return str(address or "").split("/")[0]


class ServiceMap:
    def __init__(self, services: Mapping[str, Mapping], hosts: Iterable[HostAddresses]):
        self.services = services
        self.hosts = {h.name: h for h in hosts}

    # --- construction ------------------------------------------------------------------------

    @classmethod
    def of_pyinfra(cls, host) -> "ServiceMap":
        """From inside a deploy: the port map and every inventory host (even with --limit)."""
        # pyinfra also puts every host in a group named after the inventory file: not ours
        return cls(host.data.fleet_services, [
            HostAddresses(h.name, tuple(g for g in h.groups if g != PYINFRA_FILE_GROUP), h.data.get("tailnet_address"),
                          bare(h.data.get("lan_address")), h.data)
            for h in host.inventory
        ])

    # --- questions -----------------------------------------------------------------------------

    def service(self, name: str) -> Mapping:
        if name not in self.services:
            raise Unreachable(f"no service {name!r} in fleet_services (known: {', '.join(self.services)})")
        return self.services[name]

    def port(self, name: str) -> int:
        return self.service(name)["port"]

    def scopes(self, name: str) -> list[str]:
        return list(self.service(name).get("bind", ()))

    def runs(self, name: str, host: str) -> bool:
        """Whether `host` runs service `name`."""
        svc, h = self.service(name), self.hosts[host]
        if svc.get("component"):
            from fleet.converge.component import component

            return component(svc["component"]).applies(h.groups, h.data)
        groups = svc.get("groups", ())
        return "all" in groups or bool(set(groups) & set(h.groups))

    def on(self, host: str) -> dict[str, Mapping]:
        """The services `host` runs, by name."""
        return {name: svc for name, svc in self.services.items() if self.runs(name, host)}

    def hosts_running(self, name: str) -> list[str]:
        return [h for h in self.hosts if self.runs(name, h)]

    def address(self, scope: str, host: str) -> str:
        h = self.hosts[host]
        if scope == "loopback":
            return LOOPBACK
        if scope == "tailnet":
            return h.tailnet_address
        if scope == "lan":
            return h.lan_address
        raise Unreachable(f"{scope!r} is not a bind scope (use {', '.join(SCOPES)})")

    def binds(self, name: str, host: str) -> list[Endpoint]:
        """Every address:port service `name` listens on, on `host`."""
        port = self.port(name)
        return [Endpoint(self.address(scope, host), port) for scope in self.scopes(name)]

    def bind(self, name: str, host: str, scope: str | None = None) -> Endpoint:
        """The one address:port service `name` listens on (its first scope, or `scope`)."""
        scopes = self.scopes(name)
        if not scopes:
            raise Unreachable(f"service {name!r} binds nothing")
        if scope is not None and scope not in scopes:
            raise Unreachable(f"service {name!r} does not bind {scope} (it binds {', '.join(scopes)})")
        return Endpoint(self.address(scope or scopes[0], host), self.port(name))

    def reach(self, name: str, server: str, client: str | None = None) -> Endpoint:
        """The address:port `client` connects to for service `name` on `server`.
        client None: a machine outside the fleet's hosts (the operator's, over the tailnet)."""
        if server not in self.hosts:
            raise Unreachable(f"{server!r} is not an inventory host")
        if not self.runs(name, server):
            raise Unreachable(f"{server} does not run {name!r}")
        scopes = self.scopes(name)
        if client == server and "loopback" in scopes:
            return Endpoint(LOOPBACK, self.port(name))
        if "tailnet" in scopes:
            return Endpoint(self.hosts[server].tailnet_address, self.port(name))
        who = client or "a host outside the fleet"
        raise Unreachable(f"{who} cannot reach {name!r} on {server} "
                          f"(it binds {', '.join(scopes) or 'nothing'})")

    def url(self, name: str, server: str, client: str | None = None, scheme: str = "http") -> str:
        return f"{scheme}://{self.reach(name, server, client)}"

    # --- monitoring --------------------------------------------------------------------------

    def metrics_path(self, name: str, host: str) -> str | None:
        """The path Prometheus scrapes for service `name` on `host`, or None (no metrics there,
        or not reachable from another host: only what binds the tailnet is scraped)."""
        spec = self.service(name).get("metrics")
        if not spec or not self.runs(name, host) or "tailnet" not in self.scopes(name):
            return None
        if isinstance(spec, str):
            return spec
        data = self.hosts[host].data
        if all(data.get(key) == value for key, value in (spec.get("when") or {}).items()):
            return spec["path"]
        return None

    def probe(self, name: str) -> str | None:
        """How the health prober checks service `name` ("tcp", "ssh", "http:/path", "postgres",
        "llm"), or None when it has no probe or does not bind the tailnet."""
        spec = self.service(name).get("probe")
        return spec if spec and "tailnet" in self.scopes(name) else None

    def scrape_targets(self) -> list[tuple[str, str, Endpoint, str]]:
        """(service, host, endpoint, path) for every metrics endpoint of the fleet."""
        out = []
        for name in self.services:
            for host in self.hosts:
                path = self.metrics_path(name, host)
                if path:
                    out.append((name, host, self.bind(name, host, "tailnet"), path))
        return out

    def probe_targets(self, client: str) -> list[tuple[str, str, Endpoint, str]]:
        """(service, host, endpoint, probe) for every probe `client` makes over the tailnet
        (its own services included: it reaches them on its tailnet address too)."""
        out = []
        for name in self.services:
            probe = self.probe(name)
            if not probe:
                continue
            for host in self.hosts_running(name):
                out.append((name, host, self.bind(name, host, "tailnet"), probe))
        return out

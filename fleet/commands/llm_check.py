"""Verify a host's LLM endpoint: one OpenAI-compatible chat completion, timed.

    python -m fleet llm-check [HOST] [--via HOST] [--engine E] [--model NAME] [--prompt TEXT] [--timeout S]

HOST defaults to the only host that runs the llm component. The endpoint is where the port
map's `llm` service is reached from outside the host (its tailnet address); the model is the engine's first model in data (Ollama) or its
served name (vLLM, which also needs the API key: it is read from the vault and sent as a
Bearer header, never printed). With `--via pi5-alpha` the request leaves from that host: an
SSH forward (the same user, key and known_hosts pyinfra uses) carries it, so the TCP
connection to the endpoint is made by pi5-alpha over the tailnet. This is the setup
checklist's "Verify LLM inference works via Tailscale". It prints the model that answered,
the latency and the reply's first tokens; any failure is one clear line and exit status 1.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from deploys.llm import ENGINES
from deploys.vllm import API_KEY
from fleet import probe_llm
from fleet.commands import cli
from fleet.converge import keys
from fleet.converge.services import Endpoint, Unreachable
from fleet.converge.vault import VaultError
from fleet.preflight.inventory import FleetConfigError, prepare, read_inventory_data, ssh_options

REPO = Path(__file__).resolve().parents[2]

# The request, the answer's checks and every error message are fleet.probe_llm's, which the
# health prober on the healthcheck host runs too: both judge the endpoint the same way.
LLMCheckError = probe_llm.LLMError
first_tokens = probe_llm.first_tokens
default_model = probe_llm.default_model


@dataclass(frozen=True)
class Result:
    url: str
    model: str
    latency_s: float
    first_tokens: str


def chat_completion(base_url: str, model: str, *, api_key: str | None = None,
                    prompt: str = probe_llm.DEFAULT_PROMPT, max_tokens: int = 32,
                    timeout: float = 60.0, where: str | None = None) -> Result:
    """POST {base_url}/v1/chat/completions and return what answered. Raises LLMCheckError.

    `where` names the endpoint in messages (e.g. "jetson-prime (ollama) at http://...").
    """
    done = probe_llm.chat_completion(base_url, model, api_key=api_key, prompt=prompt,
                                     max_tokens=max_tokens, timeout=timeout, where=where)
    return Result(url=base_url, model=done.model, latency_s=done.latency_s, first_tokens=first_tokens(done.text))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ssh_command(entry: dict) -> list[str]:
    """ssh with the connection settings pyinfra uses for this inventory entry."""
    cmd = ["ssh", *ssh_options(entry), "-o", "ExitOnForwardFailure=yes"]
    if entry.get("ssh_key"):
        cmd += ["-i", entry["ssh_key"], "-o", "IdentitiesOnly=yes"]
    return cmd + [f"{entry['ssh_user']}@{entry['ssh_hostname']}"]


class Forward:
    """A local URL whose connections another host makes (ssh -L), and what ssh reported."""

    def __init__(self, url: str, log):
        self.url, self._log = url, log

    def refusal(self) -> str | None:
        """ssh's "open failed" line: the remote host could not connect to the endpoint."""
        self._log.seek(0)
        lines = [line.strip() for line in self._log.read().splitlines() if "open failed" in line]
        return lines[-1] if lines else None


@contextmanager
def forward_via(entry: dict, address: str, port: int, timeout: float = 20.0):
    """A Forward to address:port through `entry`'s host (ssh -L, bounded wait until ready)."""
    local = _free_port()
    *options, login = ssh_command(entry)
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen([*options, "-N", "-L", f"127.0.0.1:{local}:{address}:{port}", login],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log, text=True)
        try:
            deadline = time.monotonic() + timeout
            while True:
                if proc.poll() is not None:
                    log.seek(0)
                    raise LLMCheckError(f"ssh to {entry['ssh_hostname']} failed: {log.read().strip()}")
                try:
                    socket.create_connection(("127.0.0.1", local), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise LLMCheckError(f"ssh forward via {entry['ssh_hostname']} not ready in {timeout:g}s") from None
                    time.sleep(0.2)
            yield Forward(f"http://127.0.0.1:{local}", log)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()


def check_host(name: str, entries: dict, data: dict, endpoint: Endpoint, *, via: str | None = None,
               model: str | None = None, api_key: str | None = None, **kw) -> Result:
    """The check for inventory host `name` (data: its effective data; endpoint: where the llm
    service is reached from outside the host), optionally from `via`."""
    engine = data["llm_engine"]
    address, port = endpoint.address, endpoint.port
    model = model or default_model(data)
    url = f"http://{address}:{port}"
    where = f"{name} ({engine}) at {url}" + (f" via {via}" if via else "")
    if via is None:
        return chat_completion(url, model, api_key=api_key, where=where, **kw)
    with forward_via(entries[via], address, port) as forward:
        try:
            result = chat_completion(forward.url, model, api_key=api_key, where=where, **kw)
        except LLMCheckError as exc:
            refused = forward.refusal()
            if refused:  # the real cause, as the via host saw it
                raise LLMCheckError(f"{where}: {via} could not connect to {address}:{port} "
                                    f"(ssh: {refused}). Is the engine running?") from None
            raise exc from None
    return Result(url=url, model=result.model, latency_s=result.latency_s, first_tokens=result.first_tokens)


def main(argv: list[str]) -> int:
    parser = cli.Parser(prog="python -m fleet llm-check", description=__doc__.splitlines()[0])
    parser.add_argument("host", nargs="?", help="the llm host (default: the only host running llm)")
    parser.add_argument("--via", help="send the request from this host (SSH forward)")
    parser.add_argument("--model", help="model name (default: from data)")
    parser.add_argument("--engine", choices=ENGINES,
                        help="the engine serving now, if a converge was given --data llm_engine=...")
    parser.add_argument("--prompt", default="Reply with one short greeting.")
    parser.add_argument("--max-tokens", type=cli.positive(int), default=32)
    parser.add_argument("--timeout", type=cli.positive(float), default=60.0, help="seconds for the reply")
    args = cli.parse(parser, argv)  # an int: argparse's exit code (--help 0, bad usage 2)
    if isinstance(args, int):
        return args

    try:
        hosts, test_fleet = read_inventory_data(REPO / "inventory.py")
        entries, fleet = prepare(hosts, test_fleet, str(REPO / "inventory.py"))
        llm_hosts = [h.name for h in fleet.hosts_with("llm")]
        name = args.host or (llm_hosts[0] if len(llm_hosts) == 1 else None)
        if name not in llm_hosts:
            raise FleetConfigError(f"{args.host or '(no host given)'} is not an llm host. "
                                   f"Fix: name one of {', '.join(llm_hosts) or '(none)'}.")
        if args.via and args.via not in entries:
            raise FleetConfigError(f"--via {args.via}: no such host. Fix: use one of {', '.join(entries)}.")
        data = dict(fleet.hosts[name].data)
        if args.engine:
            data["llm_engine"] = args.engine
        api_key = keys.secret(API_KEY) if data["llm_engine"] == "vllm" else None
        endpoint = fleet.services.reach("llm", server=name)
        result = check_host(name, entries, data, endpoint, via=args.via, model=args.model, api_key=api_key,
                            prompt=args.prompt, max_tokens=args.max_tokens, timeout=args.timeout)
    except (LLMCheckError, FleetConfigError, VaultError, Unreachable) as exc:
        print(f"LLM check FAILED: {exc}", file=sys.stderr)
        return 1
    print(f"LLM check OK: {name} ({data.get('llm_engine')}) {result.url}"
          + (f" from {args.via}" if args.via else ""))
    print(f"  model:        {result.model}")
    print(f"  latency:      {result.latency_s:.3f} s")
    print(f"  first tokens: {result.first_tokens}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

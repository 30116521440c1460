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

import argparse
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from deploys.llm import ENGINES
from deploys.vllm import API_KEY
from fleet.converge import keys
from fleet.converge.services import Endpoint, Unreachable
from fleet.converge.vault import VaultError
from fleet.preflight.inventory import FleetConfigError, prepare, read_inventory_data, ssh_options

REPO = Path(__file__).resolve().parents[2]


class LLMCheckError(Exception):
    """The endpoint did not give a usable chat completion; the message says what and where."""


@dataclass(frozen=True)
class Result:
    url: str
    model: str
    latency_s: float
    first_tokens: str


def first_tokens(text: str, count: int = 8) -> str:
    words = text.split()
    return " ".join(words[:count]) + (" ..." if len(words) > count else "")


def chat_completion(base_url: str, model: str, *, api_key: str | None = None,
                    prompt: str = "Reply with one short greeting.", max_tokens: int = 32,
                    timeout: float = 60.0, where: str | None = None) -> Result:
    """POST {base_url}/v1/chat/completions and return what answered. Raises LLMCheckError.

    `where` names the endpoint in messages (e.g. "jetson-prime (ollama) at http://...").
    """
    where = where or base_url
    if api_key is not None and (not api_key.isprintable() or " " in api_key):
        raise LLMCheckError(f"{where}: the API key holds spaces or control characters (a newline?). "
                            "Fix: set it again with `printf %s KEY | python -m fleet vault set vllm_api_key`.")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    body = {"model": model, "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens, "stream": False}
    start = time.monotonic()
    try:
        response = httpx.post(f"{base_url.rstrip('/')}/v1/chat/completions", json=body,
                              headers=headers, timeout=timeout)
    except httpx.ConnectError as exc:
        raise LLMCheckError(f"{where}: cannot connect ({exc}). Is the engine running and bound "
                            "to the tailnet address?") from None
    except httpx.TimeoutException:
        raise LLMCheckError(f"{where}: no reply within {timeout:g}s.") from None
    except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
        raise LLMCheckError(f"{where}: the connection closed without a reply ({exc}). Is the "
                            "engine running?") from None
    except httpx.HTTPError as exc:  # the message may quote headers: name the kind only
        raise LLMCheckError(f"{where}: the request failed ({type(exc).__name__}).") from None
    latency = time.monotonic() - start
    if response.status_code != 200:
        raise LLMCheckError(f"{where}: HTTP {response.status_code}: {_error_text(response)}")
    try:
        payload = response.json()
        text = payload["choices"][0]["message"]["content"]
        answered = payload.get("model") or model
    except (ValueError, KeyError, IndexError, TypeError):
        raise LLMCheckError(f"{where}: the reply is not an OpenAI chat completion: "
                            f"{response.text[:200]!r}") from None
    if not isinstance(text, str) or not text.strip():
        raise LLMCheckError(f"{where}: the completion is empty.")
    return Result(url=base_url, model=answered, latency_s=latency, first_tokens=first_tokens(text))


def _error_text(response: httpx.Response) -> str:
    try:
        err = response.json().get("error", response.json())
        return str(err.get("message", err) if isinstance(err, dict) else err)[:300]
    except ValueError:
        return response.text[:300]


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


def default_model(data: dict) -> str:
    if data["llm_engine"] == "vllm":
        return data["vllm_served_model_name"]
    return data["ollama_models"][0]


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
    parser = argparse.ArgumentParser(prog="python -m fleet llm-check", description=__doc__.splitlines()[0])
    parser.add_argument("host", nargs="?", help="the llm host (default: the only host running llm)")
    parser.add_argument("--via", help="send the request from this host (SSH forward)")
    parser.add_argument("--model", help="model name (default: from data)")
    parser.add_argument("--engine", choices=ENGINES,
                        help="the engine serving now, if a converge was given --data llm_engine=...")
    parser.add_argument("--prompt", default="Reply with one short greeting.")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds for the reply")
    args = parser.parse_args(argv)

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

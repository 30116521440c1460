"""One OpenAI-compatible chat completion: the request, its answer, and a clear error otherwise.

Two programs use this module: the operator's `python -m fleet llm-check`
(fleet/commands/llm_check.py) and the health prober on the healthcheck host
(templates/healthcheck/usr/local/lib/fleet/healthcheck/fleet-probe). The healthcheck deploy
copies this file next to the prober, which runs it with the host's own Python. Keep it that
way: standard library only, nothing from the fleet package, and only light modules (the
prober's memory budget on the 512 MB Pi Zero is 64 MB).

    done = chat_completion("http://100.100.0.10:8080", "qwen2.5:7b", api_key=None, timeout=60)
    done.model, done.latency_s, done.text

Every failure is an LLMError whose message names the endpoint (`where`) and says what went
wrong; the API key is never part of a message.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
from collections import namedtuple
from urllib.parse import urlsplit

DEFAULT_PROMPT = "Reply with one short greeting."
PATH = "/v1/chat/completions"
# The most of a reply that is read: a completion of max_tokens tokens is a few kB.
MAX_REPLY_BYTES = 1 << 20

# What answered: the model the server names, the request's latency and the completion's text.
Completion = namedtuple("Completion", "model latency_s text")


class LLMError(Exception):
    """The endpoint did not give a usable chat completion; the message says what and where."""


def default_model(data) -> str:
    """The model a client asks an llm host for, from that host's effective data: vLLM's
    served name, otherwise Ollama's first model (`data` is a dict or pyinfra's host.data)."""
    if data.get("llm_engine") == "vllm":
        return data.get("vllm_served_model_name")
    return (data.get("ollama_models") or [None])[0]


def first_tokens(text: str, count: int = 8) -> str:
    words = text.split()
    return " ".join(words[:count]) + (" ..." if len(words) > count else "")


def check_api_key(api_key: str | None, where: str) -> None:
    """A key that would make a broken header (a newline from a file, a space) is refused
    before anything is sent, without showing it."""
    if api_key is not None and (not api_key.isprintable() or " " in api_key):
        raise LLMError(f"{where}: the API key holds spaces or control characters (a newline?). "
                       "Fix: set it again with `printf %s KEY | python -m fleet vault set vllm_api_key`.")


def request(model: str, *, api_key: str | None = None, prompt: str = DEFAULT_PROMPT,
            max_tokens: int = 32) -> tuple[bytes, dict]:
    """The body and headers of a non-streaming chat completion request."""
    body = {"model": model, "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens, "stream": False}
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return json.dumps(body).encode(), headers


def error_text(body: bytes) -> str:
    """What an error reply says: OpenAI's {"error": {"message": ...}}, Ollama's and vLLM's
    {"error": "..."} or {"message": ...}, else the raw text (all cut to 300 characters)."""
    text = body.decode("utf-8", "replace")
    try:
        payload = json.loads(text)
        err = payload.get("error", payload)
        return str(err.get("message", err) if isinstance(err, dict) else err)[:300]
    except (ValueError, AttributeError):
        return text[:300]


def parse(status: int, body: bytes, model: str, where: str) -> tuple[str, str]:
    """(the model that answered, the completion's text) from a reply, or LLMError."""
    if status != 200:
        raise LLMError(f"{where}: HTTP {status}: {error_text(body)}")
    try:
        payload = json.loads(body)
        text = payload["choices"][0]["message"]["content"]
        answered = payload.get("model") or model
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        raise LLMError(f"{where}: the reply is not an OpenAI chat completion: "
                       f"{body[:200].decode('utf-8', 'replace')!r}") from None
    if not isinstance(text, str) or not text.strip():
        raise LLMError(f"{where}: the completion is empty.")
    return str(answered), text


def _read(response: http.client.HTTPResponse, sock, deadline: float) -> bytes:
    """The reply's body, read in chunks until it ends, each read bounded by what is left of
    the timeout (a server that trickles bytes cannot hold the caller past it)."""
    chunks, size = [], 0
    # a reply read to its end closes itself (and, with "Connection: close", the socket)
    while size <= MAX_REPLY_BYTES and not response.isclosed():
        left = deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout("timed out")
        sock.settimeout(left)
        chunk = response.read(65536)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def chat_completion(base_url: str, model: str, *, api_key: str | None = None,
                    prompt: str = DEFAULT_PROMPT, max_tokens: int = 32, timeout: float = 60.0,
                    where: str | None = None) -> Completion:
    """POST {base_url}/v1/chat/completions and return what answered, within `timeout` seconds
    in all. Raises LLMError. `where` names the endpoint in messages
    (e.g. "jetson-prime (ollama) at http://...")."""
    where = where or base_url
    check_api_key(api_key, where)
    url = urlsplit(base_url)
    if url.scheme != "http" or not url.hostname:
        raise LLMError(f"{where}: {base_url!r} is not an http:// URL.")
    body, headers = request(model, api_key=api_key, prompt=prompt, max_tokens=max_tokens)
    start = time.monotonic()
    deadline = start + timeout
    # A direct connection: the endpoint is a tailnet (or forwarded loopback) address, which
    # no HTTP proxy from the environment could reach.
    conn = http.client.HTTPConnection(url.hostname, url.port or 80, timeout=timeout)
    try:
        try:
            conn.connect()
        except socket.timeout:  # TimeoutError since Python 3.10
            raise LLMError(f"{where}: no reply within {timeout:g}s.") from None
        except OSError as exc:
            raise LLMError(f"{where}: cannot connect ({exc}). Is the engine running and bound "
                           "to the tailnet address?") from None
        try:
            conn.request("POST", url.path.rstrip("/") + PATH, body=body, headers=headers)
            # kept here: the connection drops its reference once a reply says it will close
            sock = conn.sock
            sock.settimeout(max(deadline - time.monotonic(), 0.001))
            response = conn.getresponse()
            reply = _read(response, sock, deadline)
        except socket.timeout:  # TimeoutError since Python 3.10
            raise LLMError(f"{where}: no reply within {timeout:g}s.") from None
        except (http.client.RemoteDisconnected, http.client.IncompleteRead, ConnectionError) as exc:
            raise LLMError(f"{where}: the connection closed without a reply ({exc or type(exc).__name__}). "
                           "Is the engine running?") from None
        except (http.client.HTTPException, OSError) as exc:  # the message may quote headers: the kind only
            raise LLMError(f"{where}: the request failed ({type(exc).__name__}).") from None
    finally:
        conn.close()
    latency = time.monotonic() - start
    answered, text = parse(response.status, reply, model, where)
    return Completion(answered, latency, text)

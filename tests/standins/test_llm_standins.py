"""The ollama and vllm STAND-INs (tests/mirror/standins): each copied with its version filled
in, run as a subprocess on 127.0.0.1 and a free port, and driven through every endpoint and
CLI command they implement. No Docker, no network beyond 127.0.0.1.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
STANDINS = REPO / "tests" / "mirror" / "standins"
OLLAMA_SRC = STANDINS / "ollama" / "ollama"
VLLM_SRC = STANDINS / "vllm" / "vllm"
VERSION = "0.0.0-test"
START_TIMEOUT = 10  # seconds a stand-in gets to answer before the test fails
API_KEY = "s3cret-test-key"
# Talk to the stand-ins directly even when the environment sets a proxy.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def install(src: Path, placeholder: str, dest: Path) -> Path:
    """A copy of a stand-in with its version placeholder filled in, as the test build does."""
    text = src.read_text()
    assert placeholder in text
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(text.replace(placeholder, VERSION))
    dest.chmod(0o755)
    return dest


def load_module(script: Path, name: str):
    """Import an extension-less script (its main() runs only under __main__)."""
    loader = importlib.machinery.SourceFileLoader(name, str(script))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(name, loader))
    loader.exec_module(module)
    return module


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(home: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OLLAMA_", "VLLM_", "HF_"))}
    env.update(HOME=str(home), PYTHONDONTWRITEBYTECODE="1", **extra)
    return env


@dataclass
class Reply:
    status: int
    headers: dict
    body: bytes

    def json(self):
        return json.loads(self.body)

    def lines(self) -> list:
        return [json.loads(line) for line in self.body.splitlines() if line.strip()]

    def events(self) -> list:
        """The data: payloads of a Server-Sent Events body, [DONE] kept as a string."""
        out = []
        for line in self.body.decode().splitlines():
            if line.startswith("data: "):
                data = line[len("data: "):]
                out.append(data if data == "[DONE]" else json.loads(data))
        return out


def http(method: str, url: str, payload=None, raw: bytes | None = None, headers=None) -> Reply:
    data = raw if raw is not None else (None if payload is None else json.dumps(payload).encode())
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with OPENER.open(req, timeout=5) as resp:
            return Reply(resp.status, dict(resp.headers), resp.read())
    except urllib.error.HTTPError as exc:
        return Reply(exc.code, dict(exc.headers), exc.read())


@dataclass
class Running:
    proc: subprocess.Popen
    port: int
    log: Path
    url: str = field(init=False)

    def __post_init__(self):
        self.url = f"http://127.0.0.1:{self.port}"

    def logs(self) -> str:
        return self.log.read_text()

    def stop(self) -> int:
        """SIGTERM, then kill after a bounded wait; the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        return self.proc.returncode


@pytest.fixture
def spawn(request):
    """spawn(argv, env, log, port, probe) starts a server and waits until `probe` answers."""
    started: list[Running] = []
    request.addfinalizer(lambda: [r.stop() for r in started])

    def start(argv, env, log: Path, port: int, probe: str = "/") -> Running:
        with open(log, "wb") as out:
            proc = subprocess.Popen([sys.executable, *map(str, argv)], env=env,
                                    stdout=out, stderr=subprocess.STDOUT)
        running = Running(proc, port, log)
        started.append(running)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"exited {proc.returncode}:\n{running.logs()}"
            try:
                http("GET", running.url + probe)
                return running
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"no answer within {START_TIMEOUT} s:\n{running.logs()}")

    return start


# --- ollama -------------------------------------------------------------------------------

class Ollama:
    def __init__(self, tmp_path: Path, spawn):
        self.script = install(OLLAMA_SRC, "@OLLAMA_VERSION@", tmp_path / "bin" / "ollama")
        self.models = tmp_path / "models"
        self.port = free_port()
        self.env = clean_env(tmp_path, OLLAMA_HOST=f"127.0.0.1:{self.port}",
                             OLLAMA_MODELS=str(self.models))
        self.log = tmp_path / "ollama.log"
        self._spawn = spawn
        self.server: Running | None = None

    def start(self) -> Running:
        self.server = self._spawn([self.script, "serve"], self.env, self.log, self.port)
        return self.server

    def cli(self, *args) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(self.script), *args], env=self.env,
                              capture_output=True, text=True, timeout=20)

    def api(self, method, path, payload=None, **kw) -> Reply:
        return http(method, self.server.url + path, payload, **kw)

    def manifests(self) -> list[Path]:
        return sorted(p for p in (self.models / "manifests").rglob("*") if p.is_file())


@pytest.fixture
def ollama(tmp_path, spawn) -> Ollama:
    o = Ollama(tmp_path, spawn)
    o.start()
    return o


@pytest.fixture
def ollama_mod(tmp_path):
    return load_module(install(OLLAMA_SRC, "@OLLAMA_VERSION@", tmp_path / "mod" / "ollama"),
                       "standin_ollama")


def test_ollama_header_and_placeholder():
    lines = OLLAMA_SRC.read_text().splitlines()
    assert lines[0] == "#!/usr/bin/python3"
    assert lines[1].startswith("# STAND-IN for tests (tests/mirror): imitates the `ollama`")
    assert 'VERSION = "@OLLAMA_VERSION@"' in lines
    assert os.access(OLLAMA_SRC, os.X_OK)


@pytest.mark.parametrize("value, address", [
    (None, ("127.0.0.1", 11434)),
    ("", ("127.0.0.1", 11434)),
    ("10.1.2.3:8080", ("10.1.2.3", 8080)),
    ("example.internal", ("example.internal", 11434)),
    ("http://10.1.2.3:9000", ("10.1.2.3", 9000)),
    ("http://10.1.2.3:9000/", ("10.1.2.3", 9000)),
    (":9001", ("127.0.0.1", 9001)),
    ("0.0.0.0", ("0.0.0.0", 11434)),
    ("127.0.0.1:notaport", ("127.0.0.1", 11434)),
])
def test_ollama_host_parsing(ollama_mod, value, address):
    assert ollama_mod.parse_host(value) == address


def test_ollama_names(ollama_mod):
    assert ollama_mod.parse_name("qwen2.5:7b") == ("library", "qwen2.5", "7b")
    assert ollama_mod.parse_name("llama3") == ("library", "llama3", "latest")
    assert ollama_mod.parse_name("acme/tool:v1") == ("acme", "tool", "v1")
    for bad in ("", "Qwen", "a/b/c", "x:", "-x", "x y", None, 3):
        assert ollama_mod.parse_name(bad) is None


def test_ollama_server_binds_only_loopback(ollama_mod, tmp_path):
    server = ollama_mod.Server(("127.0.0.1", 0), ollama_mod.Store(tmp_path / "m"))
    try:
        assert server.server_address[0] == "127.0.0.1"
    finally:
        server.server_close()


def test_ollama_serve_address_and_default_models_dir(tmp_path, spawn):
    script = install(OLLAMA_SRC, "@OLLAMA_VERSION@", tmp_path / "bin" / "ollama")
    port = free_port()
    env = clean_env(tmp_path, OLLAMA_HOST=f":{port}")  # no OLLAMA_MODELS: ~/.ollama/models
    server = spawn([script, "serve"], env, tmp_path / "log", port)
    assert f"Listening on 127.0.0.1:{port} (version {VERSION})" in server.logs()
    with pytest.raises(ConnectionRefusedError):  # bound to 127.0.0.1, not a wildcard
        socket.create_connection(("127.0.0.2", port), timeout=2).close()
    assert http("POST", server.url + "/api/pull", {"model": "tiny", "stream": False}).status == 200
    assert (tmp_path / ".ollama/models/manifests/registry.ollama.ai/library/tiny/latest").is_file()
    assert server.stop() == 0  # SIGTERM is a clean exit


def test_ollama_root_version_and_unknown(ollama):
    r = ollama.api("GET", "/")
    assert (r.status, r.body) == (200, b"Ollama is running")
    r = ollama.api("HEAD", "/")
    assert (r.status, r.body) == (200, b"")
    assert ollama.api("GET", "/api/version").json() == {"version": VERSION}
    for method, path in (("GET", "/nope"), ("GET", "/api/pull"), ("POST", "/api/tags")):
        r = ollama.api(method, path, raw=b"{}" if method == "POST" else None)
        assert (r.status, r.body) == (404, b"404 page not found")
        assert r.headers["Content-Type"].startswith("text/plain")


def test_ollama_pull_list_show_delete(ollama):
    assert ollama.api("GET", "/api/tags").json() == {"models": []}
    for _ in range(2):  # a second pull of a present model succeeds the same way
        r = ollama.api("POST", "/api/pull", {"model": "qwen2.5:7b"})
        assert r.status == 200
        events = r.lines()
        assert [e["status"] for e in events][:1] + [e["status"] for e in events][2:] == [
            "pulling manifest", "verifying sha256 digest", "writing manifest", "success"]
        layer = events[1]
        hexdigest = layer["digest"].removeprefix("sha256:")
        assert layer["status"] == f"pulling {hexdigest[:12]}"
        assert layer["total"] == layer["completed"] > 0
    manifest = ollama.models / "manifests/registry.ollama.ai/library/qwen2.5/7b"
    assert ollama.manifests() == [manifest]
    blob = ollama.models / "blobs" / f"sha256-{hexdigest}"
    assert blob.read_text() == "stand-in weights for qwen2.5:7b\n"
    assert json.loads(manifest.read_text())["layers"][0]["digest"] == layer["digest"]

    # "name" is accepted for "model"; no tag means latest; a namespace gets its own directory
    r = ollama.api("POST", "/api/pull", {"name": "acme/tool", "stream": False})
    assert (r.status, r.json()) == (200, {"status": "success"})
    assert (ollama.models / "manifests/registry.ollama.ai/acme/tool/latest").is_file()

    models = ollama.api("GET", "/api/tags").json()["models"]
    assert [m["name"] for m in models] == ["acme/tool:latest", "qwen2.5:7b"]
    qwen = models[1]
    assert qwen["model"] == "qwen2.5:7b" and qwen["size"] > 0
    assert len(qwen["digest"]) == 64 and int(qwen["digest"], 16) >= 0
    assert qwen["details"] == {"format": "gguf", "family": "stand-in", "parameter_size": "0",
                               "quantization_level": "none"}
    assert qwen["modified_at"].startswith(time.strftime("%Y-"))

    v1 = ollama.api("GET", "/v1/models").json()
    assert v1["object"] == "list"
    assert [(m["id"], m["object"], m["owned_by"]) for m in v1["data"]] == [
        ("acme/tool:latest", "model", "acme"), ("qwen2.5:7b", "model", "library")]
    assert abs(v1["data"][1]["created"] - time.time()) < 60

    r = ollama.api("POST", "/api/show", {"model": "qwen2.5:7b"})
    assert r.status == 200
    assert r.json()["details"] == qwen["details"] and r.json()["modelfile"] == "# stand-in"

    assert ollama.api("DELETE", "/api/delete", {"model": "qwen2.5:7b"}).status == 200
    assert not manifest.exists() and not blob.exists()
    r = ollama.api("DELETE", "/api/delete", {"model": "qwen2.5:7b"})
    assert (r.status, r.json()) == (404, {"error": "model 'qwen2.5:7b' not found"})
    r = ollama.api("POST", "/api/show", {"model": "qwen2.5:7b"})
    assert (r.status, r.json()) == (404, {"error": "model 'qwen2.5:7b' not found"})
    assert [m["name"] for m in ollama.api("GET", "/api/tags").json()["models"]] == [
        "acme/tool:latest"]


def test_ollama_pull_unknown_model(ollama):
    error = {"error": "pull model manifest: file does not exist"}
    for name in ("missing-model", "acme/missing:7b", "Bad Name", ""):
        r = ollama.api("POST", "/api/pull", {"model": name})
        assert (r.status, r.lines()) == (200, [error]), name  # streamed: 200, then the error
        r = ollama.api("POST", "/api/pull", {"model": name, "stream": False})
        assert (r.status, r.json()) == (500, error), name
    assert ollama.manifests() == []


def chat(model, text="say hello", **extra) -> dict:
    return {"model": model, "messages": [{"role": "system", "content": "be brief"},
                                         {"role": "user", "content": text}], **extra}


def test_ollama_chat_completions(ollama):
    ollama.api("POST", "/api/pull", {"model": "qwen2.5:7b", "stream": False})
    first = ollama.api("POST", "/v1/chat/completions", chat("qwen2.5:7b"))
    second = ollama.api("POST", "/v1/chat/completions", chat("qwen2.5:7b"))
    assert first.status == second.status == 200
    reply = first.json()
    assert second.json()["choices"] == reply["choices"] and second.json()["id"] == reply["id"]
    assert reply["id"].startswith("chatcmpl-") and len(reply["id"]) == len("chatcmpl-") + 12
    assert reply["object"] == "chat.completion" and reply["model"] == "qwen2.5:7b"
    assert reply["system_fingerprint"] == "fp_ollama"
    assert reply["choices"] == [{"index": 0, "finish_reason": "stop", "message": {
        "role": "assistant", "content": "Stand-in reply from qwen2.5:7b: say hello"}}]
    assert reply["usage"] == {"prompt_tokens": 4, "completion_tokens": 6, "total_tokens": 10}

    short = ollama.api("POST", "/v1/chat/completions", chat("qwen2.5:7b", max_tokens=3)).json()
    assert short["choices"][0]["message"]["content"] == "Stand-in reply from"
    assert short["choices"][0]["finish_reason"] == "length"
    assert short["usage"]["completion_tokens"] == 3

    r = ollama.api("POST", "/v1/chat/completions", chat("qwen2.5:7b", stream=True))
    assert r.status == 200 and r.headers["Content-Type"].startswith("text/event-stream")
    events = r.events()
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    text = "".join(c["choices"][0]["delta"]["content"] for c in chunks)
    assert text == reply["choices"][0]["message"]["content"]
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None] * 6 + ["stop"]


def test_ollama_chat_errors(ollama):
    for model in ("absent:1b", None):
        body = chat(model) if model else {"messages": [{"role": "user", "content": "hi"}]}
        r = ollama.api("POST", "/v1/chat/completions", body)
        assert r.status == 404
        assert r.json() == {"error": {
            "message": f'model "{model or ""}" not found, try pulling it first',
            "type": "api_error", "param": None, "code": None}}
    for raw in (b"{not json", json.dumps({"model": "absent:1b", "messages": []}).encode()):
        r = ollama.api("POST", "/v1/chat/completions", raw=raw)
        assert r.status == 400 and r.json()["error"]["type"] == "invalid_request_error"


def test_ollama_request_log(ollama):
    ollama.api("POST", "/api/pull", {"model": "tiny", "stream": False})
    ollama.api("GET", "/nope")
    lines = [line for line in ollama.server.logs().splitlines() if line.startswith("[GIN] ")]
    assert len(lines) == 3  # the readiness probe's GET /, then these two
    lines = lines[1:]
    assert " | 200 | " in lines[0] and " 127.0.0.1 | " in lines[0]
    assert lines[0].endswith('POST     "/api/pull"')
    assert " | 404 | " in lines[1] and lines[1].endswith('GET      "/nope"')


def test_ollama_cli(ollama):
    r = ollama.cli("--version")
    assert (r.returncode, r.stdout) == (0, f"ollama version is {VERSION}\n")
    assert ollama.cli("-v").stdout == ollama.cli("version").stdout == r.stdout

    r = ollama.cli("pull", "qwen2.5:7b")
    assert r.returncode == 0, r.stderr
    assert "pulling manifest" in r.stderr and r.stderr.rstrip().endswith("success")
    r = ollama.cli("pull", "missing-model")
    assert (r.returncode, r.stderr) == (1, "Error: pull model manifest: file does not exist\n")

    r = ollama.cli("list")
    assert r.returncode == 0
    header, row = r.stdout.splitlines()
    assert header.split() == ["NAME", "ID", "SIZE", "MODIFIED"]
    digest = ollama.api("GET", "/api/tags").json()["models"][0]["digest"]
    assert row.split()[:2] == ["qwen2.5:7b", digest[:12]]
    assert ollama.cli("ls").stdout.splitlines()[1].split()[:2] == row.split()[:2]

    r = ollama.cli("show", "qwen2.5:7b")
    assert r.returncode == 0 and "architecture" in r.stdout and "stand-in" in r.stdout
    assert ollama.cli("show", "--modelfile", "qwen2.5:7b").stdout == "# stand-in\n"
    r = ollama.cli("show", "nope")
    assert (r.returncode, r.stderr) == (1, "Error: model 'nope' not found\n")

    r = ollama.cli("rm", "qwen2.5:7b")
    assert (r.returncode, r.stdout) == (0, "deleted 'qwen2.5:7b'\n")
    r = ollama.cli("rm", "qwen2.5:7b")
    assert (r.returncode, r.stderr) == (1, "Error: model 'qwen2.5:7b' not found\n")
    assert ollama.cli("list").stdout.split() == ["NAME", "ID", "SIZE", "MODIFIED"]


def test_ollama_cli_usage(tmp_path):
    o = Ollama(tmp_path, spawn=None)
    for args in ((), ("help",), ("--help",)):
        r = o.cli(*args)
        assert r.returncode == 0 and "Usage:" in r.stderr
    r = o.cli("frobnicate")
    assert r.returncode == 2 and 'unknown command "frobnicate"' in r.stderr
    assert o.cli("pull").returncode == 1


def test_ollama_cli_without_server(ollama):
    assert ollama.server.stop() == 0
    for args in (("list",), ("ls",), ("pull", "qwen2.5:7b"), ("rm", "qwen2.5:7b"),
                 ("show", "qwen2.5:7b")):
        r = ollama.cli(*args)
        assert (r.returncode, r.stderr) == (
            1, "Error: could not connect to ollama app, is it running?\n"), args
    r = ollama.cli("--version")  # like the real one: warnings, and still exit 0
    assert (r.returncode, r.stdout) == (0, "Warning: could not connect to a running Ollama "
                                           f"instance\nWarning: client version is {VERSION}\n")


# --- vllm ---------------------------------------------------------------------------------

class Vllm:
    def __init__(self, tmp_path: Path, spawn):
        self.script = install(VLLM_SRC, "@VLLM_VERSION@", tmp_path / "bin" / "vllm")
        self.hf_home = tmp_path / "hf"
        self.tmp = tmp_path
        self.env = clean_env(tmp_path, HF_HOME=str(self.hf_home))
        self._spawn = spawn
        self.runs = 0

    def start(self, *args, model="Qwen/Qwen2.5-0.5B-Instruct", env=None) -> Running:
        self.runs += 1
        port = free_port()
        argv = [self.script, "serve", model, "--host", "127.0.0.1", "--port", str(port), *args]
        return self._spawn(argv, env or self.env, self.tmp / f"vllm{self.runs}.log", port,
                           probe="/health")


@pytest.fixture
def vllm(tmp_path, spawn) -> Vllm:
    return Vllm(tmp_path, spawn)


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def test_vllm_header_version_and_defaults(tmp_path):
    lines = VLLM_SRC.read_text().splitlines()
    assert lines[0] == "#!/usr/bin/python3"
    assert lines[1].startswith("# STAND-IN for tests (tests/mirror): imitates the `vllm`")
    assert 'VERSION = "@VLLM_VERSION@"' in lines
    assert os.access(VLLM_SRC, os.X_OK)
    script = install(VLLM_SRC, "@VLLM_VERSION@", tmp_path / "vllm")
    r = subprocess.run([sys.executable, str(script), "--version"], capture_output=True,
                       text=True, timeout=20, env=clean_env(tmp_path))
    assert (r.returncode, r.stdout) == (0, f"{VERSION}\n")
    module = load_module(script, "standin_vllm")
    opts, ignored = module.serve_parser().parse_known_args(
        ["org/m", "--gpu-memory-utilization", "0.8", "--enforce-eager"])
    assert (opts.model_tag, opts.host, opts.port, opts.max_model_len) == (
        "org/m", "0.0.0.0", 8000, 4096)
    assert ignored == ["--enforce-eager"]


def test_vllm_cache_download_then_cached(vllm):
    first = vllm.start("--gpu-memory-utilization", "0.8", "--enforce-eager")
    snapshot = vllm.hf_home / "hub/models--Qwen--Qwen2.5-0.5B-Instruct/snapshots/stand-in"
    assert first.stop() == 0
    log = first.logs().splitlines()
    assert log[0].startswith("INFO: Started server process")
    assert log[1] == f"INFO: Downloading Qwen/Qwen2.5-0.5B-Instruct into {snapshot}"
    assert log[2] == f"INFO: Uvicorn running on {first.url} (Press CTRL+C to quit)"
    config = json.loads((snapshot / "config.json").read_text())
    assert config["stand_in"] is True and config["_name_or_path"] == "Qwen/Qwen2.5-0.5B-Instruct"

    second = vllm.start()
    assert f"INFO: Using cached Qwen/Qwen2.5-0.5B-Instruct from {snapshot}" in second.logs()
    assert "Downloading" not in second.logs()
    with pytest.raises(ConnectionRefusedError):  # --host 127.0.0.1 binds only that
        socket.create_connection(("127.0.0.2", second.port), timeout=2).close()


def test_vllm_endpoints_without_key(vllm):
    s = vllm.start("--served-model-name", "qwen", "small", "--max-model-len", "2048")
    r = http("GET", s.url + "/health")
    assert (r.status, r.body) == (200, b"")
    assert http("GET", s.url + "/version").json() == {"version": VERSION}
    models = http("GET", s.url + "/v1/models").json()
    assert models["object"] == "list"
    root = "Qwen/Qwen2.5-0.5B-Instruct"
    assert [(m["id"], m["object"], m["owned_by"], m["root"], m["parent"], m["max_model_len"])
            for m in models["data"]] == [("qwen", "model", "vllm", root, None, 2048),
                                         ("small", "model", "vllm", root, None, 2048)]
    r = http("GET", s.url + "/nope")
    assert (r.status, r.json()) == (404, {"detail": "Not Found"})
    r = http("POST", s.url + "/v1/chat/completions", chat("small", max_tokens=4))
    assert r.status == 200 and r.json()["model"] == "small"
    assert r.json()["choices"][0]["message"]["content"] == "Stand-in vLLM reply from"
    assert s.stop() == 0
    assert 'INFO:     127.0.0.1:' in s.logs()
    assert any(line.startswith("INFO:     127.0.0.1:")
               and line.endswith(' - "POST /v1/chat/completions HTTP/1.1" 200 OK')
               for line in s.logs().splitlines())
    assert ' - "GET /nope HTTP/1.1" 404 Not Found' in s.logs()


def test_vllm_api_key(vllm):
    s = vllm.start("--api-key", API_KEY)
    url = s.url + "/v1/chat/completions"
    body = chat("Qwen/Qwen2.5-0.5B-Instruct")
    for headers in ({}, bearer("wrong"), {"Authorization": API_KEY}):
        for method, path, payload in (("POST", "/v1/chat/completions", body),
                                      ("GET", "/v1/models", None)):
            r = http(method, s.url + path, payload, headers=headers)
            assert (r.status, r.json()) == (401, {"error": "Unauthorized"})
    assert http("POST", url, body, headers=bearer(API_KEY)).status == 200
    assert http("GET", s.url + "/v1/models", headers=bearer(API_KEY)).status == 200
    assert http("GET", s.url + "/health").status == 200  # only /v1/* is guarded
    assert s.stop() == 0
    assert API_KEY not in s.logs()

    # the key can come from VLLM_API_KEY instead
    s = vllm.start(env={**vllm.env, "VLLM_API_KEY": API_KEY})
    assert http("GET", s.url + "/v1/models").status == 401
    assert http("GET", s.url + "/v1/models", headers=bearer(API_KEY)).status == 200


def test_vllm_chat_completions(vllm):
    s = vllm.start("--api-key", API_KEY, "--max-model-len", "40")
    url, auth = s.url + "/v1/chat/completions", bearer(API_KEY)
    model = "Qwen/Qwen2.5-0.5B-Instruct"
    first = http("POST", url, chat(model), headers=auth).json()
    second = http("POST", url, chat(model), headers=auth).json()
    assert first["choices"] == second["choices"] and first["id"] == second["id"]
    assert first["id"].startswith("chatcmpl-") and first["object"] == "chat.completion"
    choice = first["choices"][0]
    assert choice["message"] == {"role": "assistant", "tool_calls": [],
                                 "content": f"Stand-in vLLM reply from {model}: say hello"}
    assert choice["finish_reason"] == "stop"
    assert first["usage"] == {"prompt_tokens": 4, "completion_tokens": 7, "total_tokens": 11}

    # default max_tokens is 16: a long prompt is cut there
    long = http("POST", url, chat(model, " ".join(["w"] * 20)), headers=auth).json()
    assert long["choices"][0]["finish_reason"] == "length"
    assert long["usage"]["completion_tokens"] == 16
    short = http("POST", url, chat(model, max_tokens=2), headers=auth).json()
    assert short["choices"][0]["message"]["content"] == "Stand-in vLLM"
    assert short["choices"][0]["finish_reason"] == "length"

    r = http("POST", url, chat(model, stream=True), headers=auth)
    assert r.status == 200 and r.headers["Content-Type"].startswith("text/event-stream")
    events = r.events()
    assert events[-1] == "[DONE]"
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1])
    assert text == choice["message"]["content"]
    assert events[-2]["choices"][0]["finish_reason"] == "stop"

    r = http("POST", url, chat("other"), headers=auth)
    assert (r.status, r.json()) == (404, {"object": "error", "type": "NotFoundError",
                                          "message": "The model `other` does not exist.",
                                          "param": None, "code": 404})
    for raw in (b"{oops", json.dumps({"model": model, "messages": []}).encode()):
        r = http("POST", url, raw=raw, headers=auth)
        assert r.status == 400
        assert (r.json()["object"], r.json()["type"], r.json()["code"]) == (
            "error", "BadRequestError", 400)
    r = http("POST", url, chat(model, " ".join(["w"] * 30)), headers=auth)  # 32 + 16 > 40
    assert r.status == 400
    assert r.json()["message"].startswith("This model's maximum context length is 40 tokens.")

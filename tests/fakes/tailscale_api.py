"""Test stand-in for Tailscale's policy file API (v2): a local, stateful fake. Tests only.

FakeTailscale serves, on 127.0.0.1 (a free port), the endpoints fleet/commands/tailnet.py
calls, as Tailscale's own Go clients call them (tailscale/tailscale client/tailscale/acl.go,
tailscale-client-go v2 policyfile.go):

  GET  /api/v2/tailnet/{tailnet}/acl            Accept: application/hujson -> the text as
                                                stored, with an ETag header
  POST /api/v2/tailnet/{tailnet}/acl            Content-Type: application/hujson; If-Match:
                                                the ETag read (412 when it is not the current
                                                one); the new ETag back; failing tests: 400
  POST /api/v2/tailnet/{tailnet}/acl/validate   a candidate policy: 200 with {} when it is
                                                valid, and 200 with {"message", "data"} when it
                                                is not (the API's answer that is easy to take
                                                for a success)

The tailnet is its name or "-" (the key's own). The key is HTTP basic auth's user name (what
the Go clients send) or a Bearer token; anything else is 401. Every request is recorded in
.requests as (method, path, headers); .writes are the POSTs to /acl. Anything else is a 404
the test sees in .unhandled. Test hooks:

  fake.console_edit(text)       what an edit in the admin console does (new text, new ETag)
  fake.validate_failure = msg   make /acl/validate answer 200 with a failure body
  fake.policy_tests = func      how POST /acl runs a policy's tests (default: none fail)
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading

from fakes.server import LocalServer

# What a new tailnet holds: Tailscale's default policy, which allows everything.
DEFAULT_POLICY = """// Example/default ACLs for unrestricted connections.
{
\t// Allow all connections.
\t"grants": [
\t\t{"src": ["*"], "dst": ["*"], "ip": ["*"]},
\t],
\t"ssh": [
\t\t{
\t\t\t"action": "check",
\t\t\t"src": ["autogroup:member"],
\t\t\t"dst": ["autogroup:self"],
\t\t\t"users": ["autogroup:nonroot", "root"],
\t\t},
\t],
}
"""


def _strip(text: str) -> str:
    """HuJSON -> JSON, the fake's own minimal reading (comments, trailing commas)."""
    out, i = [], 0
    while i < len(text):
        if text[i] == '"':
            m = re.compile(r'"(?:[^"\\]|\\.)*"').match(text, i)
            if not m:
                raise ValueError("unterminated string")
            out.append(m.group(0))
            i = m.end()
        elif text.startswith("//", i):
            i = text.find("\n", i) if text.find("\n", i) >= 0 else len(text)
        elif text.startswith("/*", i):
            i = text.index("*/", i) + 2
        else:
            out.append(text[i])
            i += 1
    return re.sub(r",(\s*[\]}])", r"\1", "".join(out))


class FakeTailscale:
    def __init__(self, api_key: str = "tskey-api-test", tailnet: str = "example.com"):
        self.api_key = api_key
        self.tailnet = tailnet
        self.lock = threading.Lock()
        self.text = DEFAULT_POLICY
        self.etag = self._etag(self.text)
        self.validate_failure: str | None = None
        self.policy_tests = lambda policy: []  # -> [{"user": src, "errors": [...]}]
        self.requests: list[tuple[str, str, dict]] = []
        self.devices: dict[str, dict] = {}  # id -> device, as GET .../devices lists them
        self.unhandled: list[tuple[str, str]] = []
        self._server = LocalServer(self.handle, "fake-tailscale")
        self.url = self._server.url

    def stop(self) -> None:
        self._server.stop()

    @staticmethod
    def _etag(text: str) -> str:
        return '"' + hashlib.sha256(text.encode()).hexdigest() + '"'

    # --- test hooks ---------------------------------------------------------------------------

    @property
    def writes(self) -> list[tuple[str, str, dict]]:
        return [r for r in self.requests if r[0] == "POST" and r[1].endswith("/acl")]

    def console_edit(self, text: str) -> None:
        with self.lock:
            self.text, self.etag = text, self._etag(text)

    def add_device(self, hostname: str, address: str) -> str:
        """A node of the tailnet (the devices endpoints: list, delete, set its IPv4)."""
        device_id = hashlib.sha256(f"{hostname}{len(self.devices)}".encode()).hexdigest()[:16]
        self.devices[device_id] = {"id": device_id, "nodeId": "n" + device_id, "hostname": hostname,
                                   "name": f"{hostname}.tail-test.ts.net", "addresses": [address], "os": "linux"}
        return device_id

    # --- the API --------------------------------------------------------------------------------

    def _devices(self, method: str, path: str, raw: bytes) -> tuple[int, dict, bytes] | None:
        m = re.fullmatch(r"/api/v2/tailnet/([^/]+)/devices", path)
        if m and method == "GET":
            if m.group(1) not in (self.tailnet, "-"):
                return 404, {}, _json({"message": f"tailnet {m.group(1)!r} not found"})
            return 200, {}, _json({"devices": list(self.devices.values())})
        m = re.fullmatch(r"/api/v2/device/([^/]+)(/ip)?", path)
        if not m:
            return None
        if m.group(1) not in self.devices:
            return 404, {}, _json({"message": "device not found"})
        if method == "DELETE" and not m.group(2):
            del self.devices[m.group(1)]
            return 200, {}, b""
        if method == "POST" and m.group(2):
            address = json.loads(raw or b"{}").get("ipv4", "")
            if not address.startswith("100."):
                return 400, {}, _json({"message": "ipv4 must be in the tailnet's range"})
            self.devices[m.group(1)]["addresses"] = [address]
            return 200, {}, b"{}"
        return None

    def _authorized(self, headers) -> bool:
        auth = headers.get("Authorization") or ""
        if auth.startswith("Basic "):
            try:
                user = base64.b64decode(auth[6:]).decode().partition(":")[0]
            except ValueError:
                return False
            return user == self.api_key
        return auth == f"Bearer {self.api_key}"

    def _parse(self, raw: bytes) -> dict:
        value = json.loads(_strip(raw.decode()))
        if not isinstance(value, dict):
            raise ValueError("the policy is not an object")
        return value

    def handle(self, method: str, path: str, headers, raw: bytes) -> tuple[int, dict, bytes]:
        """(status, headers, body) for one request, one at a time."""
        with self.lock:
            self.requests.append((method, path, dict(headers)))
            if not self._authorized(headers):
                return 401, {}, _json({"message": "API token invalid"})
            answered = self._devices(method, path.split("?")[0], raw)
            if answered is not None:
                return answered
            m = re.fullmatch(r"/api/v2/tailnet/([^/]+)/acl(/validate)?", path.split("?")[0])
            if not m:
                self.unhandled.append((method, path))
                return 404, {}, _json({"message": "not found"})
            if m.group(1) not in (self.tailnet, "-"):
                return 404, {}, _json({"message": f"tailnet {m.group(1)!r} not found"})
            if m.group(2):
                return self._validate(method, path, raw)
            if method == "GET":
                if "application/hujson" not in (headers.get("Accept") or ""):
                    return 200, {"ETag": self.etag}, _json(self._parse(self.text.encode()))
                return 200, {"ETag": self.etag, "Content-Type": "application/hujson"}, self.text.encode()
            if method == "POST":
                return self._set(headers, raw)
            self.unhandled.append((method, path))
            return 405, {}, _json({"message": "method not allowed"})

    def _validate(self, method: str, path: str, raw: bytes) -> tuple[int, dict, bytes]:
        if method != "POST":
            self.unhandled.append((method, path))
            return 405, {}, _json({"message": "method not allowed"})
        try:
            policy = self._parse(raw)
        except ValueError as exc:
            return 200, {}, _json({"message": f"parsing policy: {exc}"})
        if self.validate_failure:
            return 200, {}, _json({"message": self.validate_failure,
                                   "data": [{"user": "tag:example", "errors": [self.validate_failure]}]})
        failed = self.policy_tests(policy)
        if failed:
            return 200, {}, _json({"message": "test(s) failed", "data": failed})
        return 200, {}, b"{}"

    def _set(self, headers, raw: bytes) -> tuple[int, dict, bytes]:
        match = headers.get("If-Match")
        if match is not None and match != self.etag:
            return 412, {}, _json({"message": "precondition failed, invalid old hash"})
        try:
            policy = self._parse(raw)
        except ValueError as exc:
            return 400, {}, _json({"message": f"parsing policy: {exc}"})
        failed = self.policy_tests(policy)
        if failed:
            return 400, {}, _json({"message": "test(s) failed", "data": failed})
        self.text, self.etag = raw.decode(), self._etag(raw.decode())
        return 200, {"ETag": self.etag, "Content-Type": "application/hujson"}, raw


def _json(value) -> bytes:
    return json.dumps(value).encode()

"""Test stand-in for the Cloudflare API v4: a local, stateful fake. Tests only.

FakeCloudflare serves, on 127.0.0.1 (a free port), exactly the endpoints fleet/edge.py
calls through the official SDK (cloudflare 5.9), with the paths, query parameters and
pagination the SDK uses (read from its source):

  GET    /zones                                   name, account.id, page, per_page
  GET    /zones/{zone_id}/dns_records             type, name, page, per_page
  POST   /zones/{zone_id}/dns_records
  PATCH  /zones/{zone_id}/dns_records/{id}
  GET    /accounts/{a}/cfd_tunnel                 name, is_deleted, page, per_page
  POST   /accounts/{a}/cfd_tunnel
  GET    /accounts/{a}/workers/scripts            (one page, like the API)
  DELETE /accounts/{a}/workers/scripts/{name}
  GET    /accounts/{a}/storage/kv/namespaces      page, per_page
  DELETE /accounts/{a}/storage/kv/namespaces/{id}

Every response is the API's envelope ({"success", "errors", "messages", "result"}, plus
"result_info" for lists). The SDK pages until it gets an empty page, so pages past the end
are empty. `Authorization: Bearer <token>` must equal .token, else 403 with the API's
"Authentication error" (code 10000). Anything else is a 404 the test can see in
.unhandled. Every request is recorded in .requests; .writes are the non-GET ones.

    fake = FakeCloudflare(token="t", account_id="acc")
    fake.add_zone("example.com")
    ...  # point CLOUDFLARE_API_BASE_URL at fake.url
    fake.stop()
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import secrets
import threading
import uuid
from datetime import datetime, timezone
from urllib.parse import parse_qs, urlsplit

from fakes.server import LocalServer

BASE_PATH = "/client/v4"
CONFLICTING_WITH_CNAME = {"A", "AAAA", "CNAME"}


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class ApiError(Exception):
    def __init__(self, status: int, code: int, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class FakeCloudflare:
    def __init__(self, token: str = "test-token", account_id: str = "0123456789abcdef0123456789abcdef"):
        self.token = token
        self.account_id = account_id
        self.max_per_page = 100  # lower it to make a test page through results
        self.lock = threading.Lock()
        self.zones: dict[str, dict] = {}
        self.records: dict[str, dict] = {}
        self.tunnels: dict[str, dict] = {}
        self.tunnel_secrets: dict[str, str] = {}
        self.workers: dict[str, dict] = {}
        self.kv: dict[str, dict] = {}
        self.kv_values: dict[str, dict[str, dict]] = {}  # namespace id -> key -> {value, metadata}
        self.rulesets: dict[tuple[str, str], dict] = {}  # (zone id, phase) -> entry-point ruleset
        self.requests: list[tuple[str, str]] = []
        self.unhandled: list[tuple[str, str]] = []
        self._server = LocalServer(self._answer, "fake-cloudflare")
        self.url = f"{self._server.url}{BASE_PATH}"

    def stop(self) -> None:
        self._server.stop()

    # --- seeding and inspecting (tests) ----------------------------------------------------

    @property
    def writes(self) -> list[tuple[str, str]]:
        return [r for r in self.requests if r[0] != "GET"]

    def add_zone(self, name: str) -> str:
        zone_id = secrets.token_hex(16)
        self.zones[zone_id] = {
            "id": zone_id, "name": name, "status": "active", "paused": False, "type": "full",
            "development_mode": 0, "name_servers": ["ada.ns.cloudflare.com", "bob.ns.cloudflare.com"],
            "original_name_servers": None, "original_registrar": None, "original_dnshost": None,
            "created_on": _now(), "modified_on": _now(), "activated_on": _now(),
            "meta": {"step": 2, "custom_certificate_quota": 0, "page_rule_quota": 3,
                     "phishing_detected": False},
            "owner": {"id": None, "type": "user", "email": None},
            "account": {"id": self.account_id, "name": "Test account"},
            "permissions": ["#dns_records:edit", "#dns_records:read", "#zone:read"],
            "plan": {"id": "0feeeeeeeeeeeeeeeeeeeeeeeeeeeeee", "name": "Free Website", "price": 0,
                     "currency": "USD", "frequency": "", "is_subscribed": False,
                     "can_subscribe": False, "legacy_id": "free", "legacy_discount": False,
                     "externally_managed": False},
        }
        return zone_id

    def zone_id(self, name: str) -> str:
        return next(z["id"] for z in self.zones.values() if z["name"] == name)

    def add_record(self, name: str, type: str, content: str, proxied: bool = False) -> str:
        zone = self._zone_for_name(name)
        return self._store_record(zone, {"name": name, "type": type, "content": content,
                                         "proxied": proxied, "ttl": 1})["id"]

    def records_named(self, name: str) -> list[dict]:
        return [r for r in self.records.values() if r["name"] == name]

    def add_tunnel(self, name: str, tunnel_secret: str | None = None, tunnel_id: str | None = None) -> str:
        """A tunnel made before the test (tunnel_id: the one a vault's credentials name)."""
        return self._store_tunnel(name, "local", tunnel_secret or base64.b64encode(secrets.token_bytes(32)).decode(),
                                  tunnel_id)["id"]

    def delete_tunnel(self, tunnel_id: str) -> None:
        """What deleting a tunnel in the dashboard does: it stays listed, with deleted_at."""
        self.tunnels[tunnel_id]["deleted_at"] = _now()

    def live_tunnels(self, name: str | None = None) -> list[dict]:
        return [t for t in self.tunnels.values()
                if t["deleted_at"] is None and (name is None or t["name"] == name)]

    def add_worker(self, name: str) -> None:
        self.workers[name] = {
            "id": name, "etag": secrets.token_hex(16), "handlers": ["fetch"], "usage_model": "standard",
            "compatibility_date": "2025-01-01", "compatibility_flags": [], "created_on": _now(),
            "modified_on": _now(), "has_assets": False, "has_modules": True, "logpush": False,
            "placement_mode": None, "tail_consumers": None,
        }

    def add_kv(self, title: str) -> str:
        namespace_id = secrets.token_hex(16)
        self.kv[namespace_id] = {"id": namespace_id, "title": title, "supports_url_encoding": True}
        return namespace_id

    def kv_titles(self) -> list[str]:
        return sorted(ns["title"] for ns in self.kv.values())

    # --- the API ----------------------------------------------------------------------------

    def _zone_for_name(self, name: str) -> dict:
        matches = [z for z in self.zones.values() if name == z["name"] or name.endswith("." + z["name"])]
        if not matches:
            raise KeyError(f"no zone holds {name}")
        return max(matches, key=lambda z: len(z["name"]))

    def _store_record(self, zone: dict, body: dict) -> dict:
        record_id = secrets.token_hex(16)
        record = {
            "id": record_id, "zone_id": zone["id"], "zone_name": zone["name"], "name": body["name"],
            "type": body["type"], "content": body["content"], "proxiable": body["type"] in {"A", "AAAA", "CNAME"},
            "proxied": bool(body.get("proxied", False)), "ttl": body.get("ttl", 1), "settings": {},
            "meta": {}, "comment": body.get("comment"), "tags": body.get("tags", []),
            "created_on": _now(), "modified_on": _now(),
        }
        if record["proxied"]:
            record["ttl"] = 1  # proxied records are always "automatic"
        self.records[record_id] = record
        return record

    def _store_tunnel(self, name: str, config_src: str, tunnel_secret: str, tunnel_id: str | None = None) -> dict:
        tunnel_id = tunnel_id or str(uuid.uuid4())
        tunnel = {
            "id": tunnel_id, "account_tag": self.account_id, "name": name, "created_at": _now(),
            "deleted_at": None, "connections": [], "conns_active_at": None, "conns_inactive_at": None,
            "tun_type": "cfd_tunnel", "status": "inactive", "config_src": config_src,
            "remote_config": config_src == "cloudflare", "metadata": {},
        }
        self.tunnels[tunnel_id] = tunnel
        self.tunnel_secrets[tunnel_id] = tunnel_secret
        return tunnel

    def _page(self, items: list[dict], query: dict) -> tuple[list[dict], dict]:
        page = max(1, int(float(query.get("page", "1"))))
        per_page = max(1, min(int(float(query.get("per_page", "20"))), self.max_per_page))
        chunk = items[(page - 1) * per_page: page * per_page]
        total_pages = max(1, -(-len(items) // per_page))
        return chunk, {"page": page, "per_page": per_page, "count": len(chunk),
                       "total_count": len(items), "total_pages": total_pages}

    def _account(self, account_id: str) -> None:
        if account_id != self.account_id:
            raise ApiError(404, 7003, f"Could not route to /accounts/{account_id}, perhaps your object identifier is invalid?")

    def _zone(self, zone_id: str) -> dict:
        if zone_id not in self.zones:
            raise ApiError(404, 7003, f"Could not route to /zones/{zone_id}, perhaps your object identifier is invalid?")
        return self.zones[zone_id]

    def list_zones(self, query):
        items = [z for z in self.zones.values()
                 if ("name" not in query or z["name"] == query["name"])
                 and ("account.id" not in query or z["account"]["id"] == query["account.id"])]
        return self._page(sorted(items, key=lambda z: z["name"]), query)

    def list_records(self, query, zone_id):
        self._zone(zone_id)
        items = [r for r in self.records.values() if r["zone_id"] == zone_id
                 and ("type" not in query or r["type"] == query["type"])
                 and ("name" not in query or r["name"] == query["name"])]
        return self._page(sorted(items, key=lambda r: (r["name"], r["type"], r["id"])), query)

    def _check_record(self, zone: dict, body: dict, exclude: str | None = None) -> None:
        for field in ("name", "type", "content"):
            if not body.get(field):
                raise ApiError(400, 9000 + len(field), f"DNS record {field} is required")
        if body["type"] in CONFLICTING_WITH_CNAME:
            clash = [r for r in self.records.values() if r["zone_id"] == zone["id"] and r["id"] != exclude
                     and r["name"] == body["name"] and r["type"] in CONFLICTING_WITH_CNAME
                     and "CNAME" in {r["type"], body["type"]}]
            if clash:
                raise ApiError(400, 81053, "An A, AAAA, or CNAME record with that host already exists.")

    def _absolute(self, zone: dict, name: str) -> str:
        name = name.rstrip(".").lower()
        if name in ("@", ""):
            return zone["name"]
        if name == zone["name"] or name.endswith("." + zone["name"]):
            return name
        return f"{name}.{zone['name']}"

    def create_record(self, query, body, zone_id):
        zone = self._zone(zone_id)
        body = dict(body, name=self._absolute(zone, body.get("name", "")))
        self._check_record(zone, body)
        return self._store_record(zone, body)

    def edit_record(self, query, body, zone_id, record_id):
        zone = self._zone(zone_id)
        record = self.records.get(record_id)
        if record is None or record["zone_id"] != zone_id:
            raise ApiError(404, 81044, "Record does not exist.")
        merged = {**record, **body}
        merged["name"] = self._absolute(zone, merged["name"])
        self._check_record(zone, merged, exclude=record_id)
        for field in ("name", "type", "content", "proxied", "ttl", "comment", "tags"):
            if field in body:
                record[field] = merged[field]
        if record["proxied"]:
            record["ttl"] = 1
        record["modified_on"] = _now()
        return record

    def list_tunnels(self, query, account_id):
        self._account(account_id)
        items = list(self.tunnels.values())
        if "is_deleted" in query:
            deleted = query["is_deleted"] == "true"
            items = [t for t in items if (t["deleted_at"] is not None) == deleted]
        if "name" in query:
            items = [t for t in items if t["name"] == query["name"]]
        return self._page(sorted(items, key=lambda t: t["created_at"]), query)

    def create_tunnel(self, query, body, account_id):
        self._account(account_id)
        name = body.get("name")
        if not name:
            raise ApiError(400, 1001, "tunnel name is required")
        if self.live_tunnels(name):
            raise ApiError(409, 1013, "You already have a tunnel with this name.")
        config_src = body.get("config_src", "local")
        tunnel_secret = body.get("tunnel_secret")
        if tunnel_secret is not None:
            try:
                raw = base64.b64decode(tunnel_secret, validate=True)
            except (binascii.Error, ValueError):
                raw = b""
            if len(raw) < 32:
                raise ApiError(400, 1003, "tunnel_secret must be at least 32 bytes, base64 encoded")
        else:
            tunnel_secret = base64.b64encode(secrets.token_bytes(32)).decode()
        return self._store_tunnel(name, config_src, tunnel_secret)

    def list_workers(self, query, account_id):
        self._account(account_id)
        items = [self.workers[name] for name in sorted(self.workers)]
        return items, {"page": 1, "per_page": len(items), "count": len(items),
                       "total_count": len(items), "total_pages": 1}

    def delete_worker(self, query, body, account_id, name):
        self._account(account_id)
        if name not in self.workers:
            raise ApiError(404, 10007, "This Worker does not exist on your account.")
        del self.workers[name]
        return None

    def list_kv(self, query, account_id):
        self._account(account_id)
        return self._page(sorted(self.kv.values(), key=lambda n: n["id"]), query)

    def delete_kv(self, query, body, account_id, namespace_id):
        self._account(account_id)
        if namespace_id not in self.kv:
            raise ApiError(404, 10013, "namespace not found")
        del self.kv[namespace_id]
        return {}

    # --- rulesets (entry points per zone and phase) and KV values --------------------------------

    def get_entrypoint(self, query, zone_id, phase):
        self._zone(zone_id)
        ruleset = self.rulesets.get((zone_id, phase))
        if ruleset is None:
            raise ApiError(404, 10003, f"could not find entrypoint ruleset in the {phase} phase")
        return ruleset, None

    def put_entrypoint(self, query, body, zone_id, phase):
        self._zone(zone_id)
        old = self.rulesets.get((zone_id, phase))
        old_ids = {r["id"] for r in (old or {}).get("rules", [])}
        version = str(int(old["version"]) + 1) if old else "1"
        rules = []
        for rule in body.get("rules") or []:
            if not rule.get("expression") or not rule.get("action"):
                raise ApiError(400, 20021, "rule is missing an expression or an action")
            if phase == "http_ratelimit" and not rule.get("ratelimit"):
                raise ApiError(400, 20021, "a rate limiting rule needs a ratelimit")
            rule_id = rule.get("id")
            if rule_id and rule_id not in old_ids:
                raise ApiError(400, 20021, f"rule {rule_id} is not in the ruleset")
            rules.append({"enabled": True, **rule, "id": rule_id or secrets.token_hex(16), "version": version,
                          "last_updated": _now()})
        ruleset = {"id": (old or {}).get("id") or secrets.token_hex(16), "name": "default", "kind": "zone",
                   "phase": phase, "version": version, "last_updated": _now(), "rules": rules,
                   "description": body.get("description", "")}
        self.rulesets[(zone_id, phase)] = ruleset
        return ruleset

    def bulk_put_kv(self, query, body, account_id, namespace_id):
        self._account(account_id)
        if namespace_id not in self.kv:
            raise ApiError(404, 10013, "namespace not found")
        if not isinstance(body, list):
            raise ApiError(400, 10026, "bulk write takes a JSON array")
        for pair in body:
            self.kv_values.setdefault(namespace_id, {})[pair["key"]] = {"value": pair["value"],
                                                                        "metadata": pair.get("metadata")}
        return {"successful_key_count": len(body), "unsuccessful_keys": []}

    def list_kv_keys(self, query, account_id, namespace_id):
        self._account(account_id)
        if namespace_id not in self.kv:
            raise ApiError(404, 10013, "namespace not found")
        keys = [{"name": k, "metadata": v["metadata"]} for k, v in sorted(self.kv_values.get(namespace_id, {}).items())]
        return keys, {"count": len(keys), "cursor": ""}

    ROUTES = [
        ("GET", r"/zones/(?P<zone_id>[^/]+)/rulesets/phases/(?P<phase>[a-z_]+)/entrypoint", "get_entrypoint"),
        ("PUT", r"/zones/(?P<zone_id>[^/]+)/rulesets/phases/(?P<phase>[a-z_]+)/entrypoint", "put_entrypoint"),
        ("PUT", r"/accounts/(?P<account_id>[^/]+)/storage/kv/namespaces/(?P<namespace_id>[^/]+)/bulk", "bulk_put_kv"),
        ("GET", r"/accounts/(?P<account_id>[^/]+)/storage/kv/namespaces/(?P<namespace_id>[^/]+)/keys", "list_kv_keys"),
        ("GET", r"/zones", "list_zones"),
        ("GET", r"/zones/(?P<zone_id>[^/]+)/dns_records", "list_records"),
        ("POST", r"/zones/(?P<zone_id>[^/]+)/dns_records", "create_record"),
        ("PATCH", r"/zones/(?P<zone_id>[^/]+)/dns_records/(?P<record_id>[^/]+)", "edit_record"),
        ("GET", r"/accounts/(?P<account_id>[^/]+)/cfd_tunnel", "list_tunnels"),
        ("POST", r"/accounts/(?P<account_id>[^/]+)/cfd_tunnel", "create_tunnel"),
        ("GET", r"/accounts/(?P<account_id>[^/]+)/workers/scripts", "list_workers"),
        ("DELETE", r"/accounts/(?P<account_id>[^/]+)/workers/scripts/(?P<name>[^/]+)", "delete_worker"),
        ("GET", r"/accounts/(?P<account_id>[^/]+)/storage/kv/namespaces", "list_kv"),
        ("DELETE", r"/accounts/(?P<account_id>[^/]+)/storage/kv/namespaces/(?P<namespace_id>[^/]+)", "delete_kv"),
    ]

    def handle(self, method: str, target: str, headers, raw_body: bytes) -> tuple[int, dict]:
        """(status, envelope) for one request. Runs under the lock: one request at a time."""
        with self.lock:
            self.requests.append((method, target))
            if headers.get("Authorization") != f"Bearer {self.token}":
                return 403, _envelope(False, None, errors=[{"code": 10000, "message": "Authentication error"}])
            parts = urlsplit(target)
            path = parts.path[len(BASE_PATH):] if parts.path.startswith(BASE_PATH) else None
            query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
            for route_method, pattern, handler in self.ROUTES:
                match = re.fullmatch(pattern, path or "")
                if path is None or route_method != method or not match:
                    continue
                try:
                    if method == "GET":
                        items, info = getattr(self, handler)(query, **match.groupdict())
                        return 200, _envelope(True, items, result_info=info)
                    try:
                        body = json.loads(raw_body) if raw_body else {}
                    except ValueError:
                        raise ApiError(400, 6007, "Malformed JSON in request body")
                    return 200, _envelope(True, getattr(self, handler)(query, body, **match.groupdict()))
                except ApiError as exc:
                    return exc.status, _envelope(False, None, errors=[{"code": exc.code, "message": exc.message}])
            self.unhandled.append((method, target))
            return 404, _envelope(False, None, errors=[{"code": 7003, "message": f"Could not route to {parts.path}"}])

    def _answer(self, method: str, target: str, headers, raw_body: bytes) -> tuple[int, dict, bytes]:
        status, envelope = self.handle(method, target, headers, raw_body)
        return status, {}, json.dumps(envelope).encode()


def _envelope(success: bool, result, errors=None, result_info=None) -> dict:
    out = {"success": success, "errors": errors or [], "messages": [], "result": result}
    if result_info is not None:
        out["result_info"] = result_info
    return out

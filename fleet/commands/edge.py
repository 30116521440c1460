"""python -m fleet edge plan | apply [--delete-unlisted]: the fleet's Cloudflare state.

Run from the operator's machine (`make edge-plan`, `make edge-apply`). The desired state
comes from inventory.py and group_data/all.py:

  tunnels  one locally configured Cloudflare Tunnel per host in the gateway, llm or
           failover group, named after the host. Its credentials (a random 32-byte secret
           made here) go into the vault as cloudflared_credentials/<host>, where the
           cloudflared deploy reads them. Cloudflare never shows a tunnel's secret again,
           so a tunnel without credentials in the vault is an error, not something to fix
           silently.
  DNS      one proxied CNAME per fleet_domains hostname -> <tunnel id>.cfargotunnel.com,
           in the edge_zones zone the hostname belongs to
  audit    Workers scripts and KV namespaces not in edge_workers_keep / edge_kv_keep
  rules    WAF custom rules (edge_waf_rules) and rate-limiting rules (edge_rate_limits) per
           zone: the zone's entry-point rulesets of Cloudflare's rulesets API. Only rules
           whose ref starts with "fleet-" are this repository's; any other rule in the same
           entry point was made by hand and is kept, unchanged, after ours.

`plan` prints one line per action (+ add, ~ change, = unchanged, - unlisted) and changes
nothing, not even the vault. `apply` makes the adds and changes and prints what it did; run
again, it finds nothing to do (`apply: no changes`).

Why nothing is deleted without --delete-unlisted: the account holds things this repository
does not describe (Workers and KV data made by hand or by other projects). Deleting a Worker
or a KV namespace destroys code and data with no undo, so the audit only reports them until
an operator has read the list and asks for it explicitly with `apply --delete-unlisted`.
Tunnels, zones and DNS records are never deleted: when a change would need one removed
(a tunnel whose secret is lost, an A record where a CNAME must go), the run stops with an
error that says what to do by hand.

The API token: CLOUDFLARE_API_TOKEN when set, else the vault's cloudflare_api_token. It
needs Zone:DNS:Edit, Account:Cloudflare Tunnel:Edit, Workers Scripts:Read/Edit and Workers KV
Storage:Read/Edit, and Zone WAF:Edit for the rules. CLOUDFLARE_API_BASE_URL points the client at another API (tests). The
token and tunnel secrets are never printed.

Exit codes: 0 done; 1 an error (changes printed before it were made); 2 bad usage.
"""

from __future__ import annotations

import base64
import json
import os
import secrets as pysecrets
import sys
from dataclasses import dataclass, field
from pathlib import Path

from deploys.cloudflared import credentials_key
from fleet.commands import cli
from fleet.commands.cli import load_data
from fleet.converge import keys
from fleet.converge.vault import Vault, VaultError
from fleet.preflight.model import Fleet
from fleet.preflight.validate import EDGE_RULESETS, MANAGED_REF, edge_list_problems, edge_rule_problems

REPO = Path(__file__).resolve().parents[2]
DEFAULT_BASE_URL = "https://api.cloudflare.com/client/v4"
TOKEN_KEY = "cloudflare_api_token"
TOKEN_ENV = "CLOUDFLARE_API_TOKEN"
BASE_URL_ENV = "CLOUDFLARE_API_BASE_URL"
TUNNEL_SUFFIX = ".cfargotunnel.com"
# DNS types a CNAME cannot share a name with (the API refuses the CNAME).
CNAME_CONFLICTS = ("A", "AAAA", "NS")
PER_PAGE = 50
MAX_PAGES = 1000  # a listing longer than this is a broken API, not an account
PERMISSIONS = ("Zone:DNS:Edit, Zone:Zone WAF:Edit, Account:Cloudflare Tunnel:Edit, Workers Scripts:Read/Edit "
               "and Workers KV Storage:Read/Edit")


class EdgeError(Exception):
    """Problems found before or while talking to Cloudflare; each says what to do."""

    def __init__(self, problems: str | list[str]):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


# --- desired state (pure) ------------------------------------------------------------------

@dataclass(frozen=True)
class Record:
    name: str
    zone: str
    tunnel: str


@dataclass(frozen=True)
class Ruleset:
    zone: str
    phase: str
    kind: str
    rules: tuple[str, ...]  # each rule as canonical JSON (hashable)

    def wanted(self) -> list[dict]:
        return [json.loads(r) for r in self.rules]


@dataclass(frozen=True)
class Desired:
    account_id: str
    tunnels: tuple[str, ...]
    records: tuple[Record, ...]
    workers_keep: frozenset[str]
    kv_keep: frozenset[str]
    rulesets: tuple[Ruleset, ...] = ()

    @property
    def zones(self) -> list[str]:
        return sorted({r.zone for r in self.records})


def zone_of(domain: str, zones: list[str]) -> str | None:
    """The zone a hostname is in: the longest zone it equals or ends with (".zone")."""
    found = [z for z in zones if domain == z.lower() or domain.endswith("." + z.lower())]
    return max(found, key=len).lower() if found else None


def desired_state(fleet: Fleet) -> Desired:
    """What Cloudflare should hold, from the fleet's data: a tunnel per host that runs the
    cloudflared component, a CNAME per domain of the domain map."""
    all_data = fleet.all_data
    # the shapes first: the zones and lists below are read as the rules found them
    problems = [f"{p.key}: {p.message} Fix: {p.fix}"
                for p in edge_rule_problems(all_data) + edge_list_problems(all_data)]
    if problems:
        raise EdgeError(problems)
    account_id = all_data.get("edge_account_id", "").strip()
    if not account_id:
        problems.append("edge_account_id is empty. Fix: set it in group_data/all.py to the Cloudflare "
                        "account ID (dashboard, Account Home; an ID, not a secret).")
    tunnels = tuple(h.name for h in fleet.hosts_with("cloudflared"))
    zones = list(all_data.get("edge_zones") or [])
    records = []
    for domain, route in sorted((all_data.get("fleet_domains") or {}).items()):
        name = domain.lower().rstrip(".")
        tunnel = route.get("tunnel")
        if tunnel not in tunnels:
            problems.append(
                f"fleet_domains[{domain!r}]: tunnel {tunnel!r} is not a host that runs cloudflared "
                f"({', '.join(tunnels) or 'none'}). Fix: name one of them as its tunnel in "
                "group_data/all.py, or add the host to a group that runs cloudflared.")
        zone = zone_of(name, zones)
        if zone is None:
            problems.append(
                f"fleet_domains[{domain!r}]: {domain} is in none of edge_zones ({', '.join(zones) or 'empty'}). "
                "Fix: add its zone (the registered domain) to edge_zones in group_data/all.py, "
                "or correct the hostname.")
        if tunnel in tunnels and zone is not None:
            records.append(Record(name, zone, tunnel))
    if problems:
        raise EdgeError(problems)
    return Desired(account_id, tunnels, tuple(records),
                   frozenset(all_data.get("edge_workers_keep") or ()), frozenset(all_data.get("edge_kv_keep") or ()),
                   tuple(_rulesets(all_data)))


def _rulesets(all_data: dict):
    """The WAF and rate-limiting entry points the data asks for (edge_rule_problems found it valid)."""
    for key, (phase, kind) in EDGE_RULESETS.items():
        for zone, rules in sorted((all_data.get(key) or {}).items()):
            yield Ruleset(zone.lower(), phase, kind,
                          tuple(json.dumps({"enabled": True, **rule}, sort_keys=True) for rule in rules))


# --- current state -------------------------------------------------------------------------

@dataclass
class Current:
    zone_ids: dict[str, str] = field(default_factory=dict)
    records: dict[str, list[dict]] = field(default_factory=dict)  # name -> [{id, type, content, proxied}]
    tunnels: dict[str, list[str]] = field(default_factory=dict)  # name -> ids of live tunnels
    credentials: dict[str, dict] = field(default_factory=dict)  # tunnel name -> vault credentials
    workers: list[str] = field(default_factory=list)
    kv: list[tuple[str, str]] = field(default_factory=list)  # (title, id)
    rulesets: dict[tuple[str, str], list[dict] | None] = field(default_factory=dict)  # (zone, phase) -> rules


def _all(first_page, what: str) -> list:
    """Every item of a paginated listing; the SDK asks for pages until one is empty."""
    items = []
    for count, page in enumerate(first_page.iter_pages(), 1):
        if count > MAX_PAGES:
            raise EdgeError(f"listing {what} did not end after {MAX_PAGES} pages; the API misbehaves")
        items.extend(page.result or [])
    return items


def api_keys_namespace(all_data: dict, kv: list[tuple[str, str]]) -> tuple[str, str | None]:
    """(title, id) of the KV namespace the guide's API keys live in (edge_api_keys_namespace, AUTH
    by default), the first of `kv`'s (title, id) pairs with that title; id None when there is none."""
    title = str(all_data.get("edge_api_keys_namespace") or "AUTH")
    return title, next((ns_id for t, ns_id in kv if t == title), None)


def read_credentials(vault_data: dict[str, str], tunnels: tuple[str, ...]) -> dict[str, dict]:
    creds, problems = {}, []
    for name in tunnels:
        key = credentials_key(name)
        if key not in vault_data:
            continue
        try:
            value = json.loads(vault_data[key])
            if not isinstance(value, dict) or not value.get("TunnelID"):
                raise ValueError("no TunnelID")
        except ValueError as exc:
            problems.append(f"vault key {key} is not tunnel credentials JSON ({exc}). Fix: restore it "
                            "from a backup of the vault, or delete the tunnel in the dashboard and the key "
                            "(`python -m fleet vault edit`), then apply again.")
            continue
        creds[name] = value
    if problems:
        raise EdgeError(problems)
    return creds


def fetch_current(client, desired: Desired, vault_data: dict[str, str]) -> Current:
    """What Cloudflare holds for the desired state's zones and the account (read-only)."""
    current = Current(credentials=read_credentials(vault_data, desired.tunnels))
    account = desired.account_id
    missing = []
    for zone in desired.zones:
        found = _all(client.zones.list(name=zone, account={"id": account}, per_page=PER_PAGE), f"zone {zone}")
        if not found:
            missing.append(f"zone {zone} is not in Cloudflare account {account}. Fix: add the site in the "
                           "dashboard, or correct edge_zones / edge_account_id in group_data/all.py.")
            continue
        current.zone_ids[zone] = found[0].id
        for rec in _all(client.dns.records.list(zone_id=found[0].id, per_page=PER_PAGE), f"DNS records of {zone}"):
            current.records.setdefault(rec.name.lower(), []).append(
                {"id": rec.id, "type": rec.type, "content": rec.content or "", "proxied": bool(rec.proxied)})
    if missing:
        raise EdgeError(missing)
    tunnels = client.zero_trust.tunnels.cloudflared.list(account_id=account, is_deleted=False, per_page=PER_PAGE)
    for tunnel in _all(tunnels, "tunnels"):
        current.tunnels.setdefault(tunnel.name, []).append(tunnel.id)
    current.workers = sorted(s.id for s in _all(client.workers.scripts.list(account_id=account), "Workers"))
    namespaces = _all(client.kv.namespaces.list(account_id=account, per_page=PER_PAGE), "KV namespaces")
    current.kv = sorted((ns.title, ns.id) for ns in namespaces)
    import cloudflare

    for want in desired.rulesets:
        if want.zone not in current.zone_ids:
            continue
        try:
            entry = client.rulesets.phases.get(want.phase, zone_id=current.zone_ids[want.zone])
            current.rulesets[(want.zone, want.phase)] = [r.to_dict(mode="json") for r in entry.rules or []]
        except cloudflare.NotFoundError:  # the zone has no entry point for the phase yet
            current.rulesets[(want.zone, want.phase)] = None
    return current


# --- the difference (pure) -----------------------------------------------------------------

@dataclass(frozen=True)
class TunnelAction:
    op: str  # "+" create, "=" unchanged
    name: str
    tunnel_id: str = ""  # "=": the existing tunnel
    replaces: str = ""  # "+": the TunnelID of vault credentials whose tunnel is gone

    def line(self) -> str:
        if self.op == "=":
            return f"= tunnel {self.name} ({self.tunnel_id}, ok)"
        if self.replaces:
            return (f"+ tunnel {self.name} (the vault's credentials are for tunnel {self.replaces}, which "
                    "no longer exists: a new tunnel replaces them)")
        return f"+ tunnel {self.name}"


@dataclass(frozen=True)
class DnsAction:
    op: str  # "+" create, "~" change, "=" unchanged
    name: str
    zone: str
    tunnel: str
    tunnel_id: str = ""  # "" when this run creates the tunnel
    record_id: str = ""
    old: str = ""
    old_proxied: bool = True

    @property
    def target(self) -> str:
        return f"{self.tunnel_id or f'<new {self.tunnel} tunnel id>'}{TUNNEL_SUFFIX}"

    def line(self) -> str:
        if self.op == "+":
            return f"+ dns {self.name} CNAME {self.target} (proxied)"
        if self.op == "=":
            return f"= dns {self.name} CNAME {self.target} (proxied, ok)"
        if self.old.rstrip(".").lower() == self.target:
            return f"~ dns {self.name} CNAME {self.target} (not proxied -> proxied)"
        return f"~ dns {self.name} CNAME {self.old} -> {self.target} (proxied)"


@dataclass(frozen=True)
class UnlistedAction:
    op: str  # always "-": reported, deleted only with --delete-unlisted
    kind: str  # "worker" or "kv"
    name: str
    item_id: str

    def line(self) -> str:
        shown = self.name if self.kind == "worker" else f"{self.name} ({self.item_id})"
        return f"- {self.kind} {shown} (unlisted; apply --delete-unlisted deletes it)"


@dataclass(frozen=True)
class RulesetAction:
    op: str  # "+" create the entry point, "~" change our rules in it, "=" unchanged
    want: Ruleset
    kept: tuple[str, ...] = ()  # hand-made rules in the entry point (canonical JSON), kept after ours

    def line(self) -> str:
        count = len(self.want.rules)
        kept = f"; {len(self.kept)} hand-made rule(s) kept" if self.kept else ""
        if self.op == "=":
            return f"= {self.want.kind} {self.want.zone} ({count} rule(s), ok{kept})"
        verb = "new entry point" if self.op == "+" else "rules differ"
        return f"{self.op} {self.want.kind} {self.want.zone} ({count} rule(s): {verb}{kept})"


def _matches(want, have) -> bool:
    """`have` (from the API) says what `want` (from data) says; the API's own extra fields
    (id, version, last_updated, defaults it fills in) are not a difference."""
    if isinstance(want, dict):
        return isinstance(have, dict) and all(_matches(v, have.get(k)) for k, v in want.items())
    return want == have


def _ruleset_action(want: Ruleset, current: Current) -> RulesetAction:
    have = current.rulesets.get((want.zone, want.phase))
    if have is None:
        return RulesetAction("+", want)
    ours = [r for r in have if str(r.get("ref") or "").startswith(MANAGED_REF)]
    kept = tuple(json.dumps(r, sort_keys=True) for r in have if not str(r.get("ref") or "").startswith(MANAGED_REF))
    wanted = want.wanted()
    same = len(ours) == len(wanted) and all(_matches(w, h) for w, h in zip(wanted, ours)) \
        and have[:len(ours)] == ours  # ours come first: a hand-made rule never runs before them
    return RulesetAction("=" if same else "~", want, kept)


def _tunnel_action(name: str, current: Current) -> TunnelAction | str:
    live = current.tunnels.get(name, [])
    creds = current.credentials.get(name)
    held = creds["TunnelID"] if creds else ""
    if held and held in live:
        return TunnelAction("=", name, tunnel_id=held)
    if live:
        return (f"tunnel {name} exists in Cloudflare ({', '.join(live)}) but the vault holds no credentials "
                f"for it ({credentials_key(name)}"
                f"{f' is for tunnel {held}' if held else ' is missing'}), and Cloudflare never shows a "
                "tunnel's secret again. Fix: restore the vault that holds its credentials, or delete the "
                "tunnel in the dashboard (Zero Trust, Networks, Tunnels) and apply again to make a new one.")
    return TunnelAction("+", name, replaces=held)


def _dns_action(rec: Record, tunnel_id: str, current: Current) -> DnsAction | str:
    existing = current.records.get(rec.name, [])
    conflicts = [r for r in existing if r["type"] in CNAME_CONFLICTS]
    if conflicts:
        shown = ", ".join(f"{r['type']} {r['content']}" for r in conflicts)
        return (f"dns {rec.name} has records a CNAME cannot share a name with ({shown}); this tool "
                "deletes no record it does not manage. Fix: delete them in the dashboard (DNS, Records), "
                f"or remove {rec.name} from fleet_domains.")
    action = DnsAction("+", rec.name, rec.zone, rec.tunnel, tunnel_id=tunnel_id)
    cnames = [r for r in existing if r["type"] == "CNAME"]
    if not cnames:
        return action
    cur = cnames[0]
    same = bool(tunnel_id) and cur["content"].rstrip(".").lower() == action.target and cur["proxied"]
    return DnsAction("=" if same else "~", rec.name, rec.zone, rec.tunnel, tunnel_id=tunnel_id,
                     record_id=cur["id"], old=cur["content"], old_proxied=cur["proxied"])


def diff(desired: Desired, current: Current) -> list:
    """The actions that turn `current` into `desired`, in the order apply makes them."""
    actions, problems = [], []
    for name in desired.tunnels:
        result = _tunnel_action(name, current)
        (problems.append if isinstance(result, str) else actions.append)(result)
    ids = {a.name: a.tunnel_id for a in actions if a.op == "="}
    for rec in desired.records:
        result = _dns_action(rec, ids.get(rec.tunnel, ""), current)
        (problems.append if isinstance(result, str) else actions.append)(result)
    if problems:
        raise EdgeError(problems)
    actions += [_ruleset_action(want, current) for want in desired.rulesets if want.zone in current.zone_ids]
    actions += [UnlistedAction("-", "worker", name, name) for name in current.workers
                if name not in desired.workers_keep]
    actions += [UnlistedAction("-", "kv", title, ns_id) for title, ns_id in current.kv
                if title not in desired.kv_keep]
    return actions


def summary(actions: list) -> str:
    count = {op: sum(1 for a in actions if a.op == op) for op in "+~-"}
    return f"plan: {count['+']} to add, {count['~']} to change, {count['-']} unlisted (not deleted)"


# --- apply ---------------------------------------------------------------------------------

def _save_credentials(vault: Vault, name: str, credentials: dict) -> None:
    key = credentials_key(name)
    try:
        data = vault.load()
        data[key] = json.dumps(credentials)
        vault.save(data)
    except (VaultError, OSError) as exc:
        raise EdgeError(f"tunnel {name} ({credentials['TunnelID']}) was created, but its credentials could "
                        f"not be saved to the vault as {key} ({exc}), so its secret is lost. Fix the "
                        "vault, delete the tunnel in the dashboard (Zero Trust, Networks, Tunnels), "
                        "then apply again.") from None


def apply(client, actions: list, desired: Desired, current: Current, vault: Vault,
          delete_unlisted: bool = False) -> int:
    """Make the actions; prints each change as it is made. Returns how many writes it made."""
    writes = 0
    ids = {a.name: a.tunnel_id for a in actions if isinstance(a, TunnelAction) and a.op == "="}
    for action in actions:
        if isinstance(action, TunnelAction) and action.op == "+":
            secret = base64.b64encode(pysecrets.token_bytes(32)).decode()
            tunnel = client.zero_trust.tunnels.cloudflared.create(
                account_id=desired.account_id, name=action.name, config_src="local", tunnel_secret=secret)
            writes += 1
            _save_credentials(vault, action.name, {"AccountTag": desired.account_id, "TunnelSecret": secret,
                                                   "TunnelID": tunnel.id})
            ids[action.name] = tunnel.id
            print(f"created tunnel {action.name} ({tunnel.id}); credentials saved to the vault as "
                  f"{credentials_key(action.name)}")
        elif isinstance(action, DnsAction) and action.op in "+~":
            action = DnsAction(action.op, action.name, action.zone, action.tunnel, ids[action.tunnel],
                               action.record_id, action.old, action.old_proxied)
            fields = dict(zone_id=current.zone_ids[action.zone], name=action.name, type="CNAME",
                          content=action.target, proxied=True, ttl=1)
            if action.op == "+":
                client.dns.records.create(**fields)
            else:
                client.dns.records.edit(action.record_id, **fields)
            writes += 1
            print(("created " if action.op == "+" else "changed ") + action.line()[2:])
        elif isinstance(action, RulesetAction) and action.op in "+~":
            # PUT replaces the entry point's rule list: ours first, then every hand-made
            # rule as it was (by id, so Cloudflare keeps it as the same rule).
            hand_made = [{k: v for k, v in json.loads(r).items() if k not in ("version", "last_updated")}
                         for r in action.kept]
            client.rulesets.phases.update(action.want.phase, zone_id=current.zone_ids[action.want.zone],
                                          rules=[*action.want.wanted(), *hand_made])
            writes += 1
            print(("created " if action.op == "+" else "changed ") + action.line()[2:])
        elif isinstance(action, UnlistedAction):
            if not delete_unlisted:
                print(action.line())
                continue
            if action.kind == "worker":
                client.workers.scripts.delete(action.item_id, account_id=desired.account_id)
            else:
                client.kv.namespaces.delete(action.item_id, account_id=desired.account_id)
            writes += 1
            print(f"deleted {action.kind} {action.name} (unlisted)")
    return writes


# --- the command ---------------------------------------------------------------------------

def api_token(vault_data: dict[str, str]) -> tuple[str, str]:
    """(token, where it came from): the environment wins over the vault."""
    if os.environ.get(TOKEN_ENV):
        return os.environ[TOKEN_ENV], TOKEN_ENV
    if vault_data.get(TOKEN_KEY, "").strip():
        return vault_data[TOKEN_KEY].strip(), f"vault key {TOKEN_KEY}"
    raise EdgeError(f"no Cloudflare API token. Fix: set {TOKEN_ENV}, or store it in the vault "
                    f"({keys.vault_path()}) as {TOKEN_KEY}: "
                    f"`python -m fleet vault set {TOKEN_KEY}`. It needs {PERMISSIONS}.")


def make_client(token: str):
    import cloudflare

    client = cloudflare.Cloudflare(api_token=token, base_url=os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL,
                                   timeout=60.0)
    # The SDK also picks up CLOUDFLARE_API_KEY / CLOUDFLARE_EMAIL and would send those
    # instead of the token: only the token is used here.
    client.api_key = client.api_email = client.user_service_key = None
    return client


def _api_errors(exc) -> str:
    body = exc.body if isinstance(exc.body, dict) else {}
    errors = [f"{e.get('message')} [{e.get('code')}]" for e in body.get("errors") or [] if isinstance(e, dict)]
    return "; ".join(errors) or (exc.response.text[:200] if exc.response is not None else str(exc))


def explain_api_error(exc, source: str) -> str:
    import cloudflare

    if isinstance(exc, cloudflare.APIStatusError):
        where = f"HTTP {exc.status_code} on {exc.request.method} {exc.request.url.path}: {_api_errors(exc)}"
        if isinstance(exc, (cloudflare.AuthenticationError, cloudflare.PermissionDeniedError)):
            return (f"the Cloudflare API rejected the token ({where}; token from {source}): "
                    f"check it has {PERMISSIONS}")
        return f"the Cloudflare API refused a request ({where})"
    if isinstance(exc, cloudflare.APIConnectionError):
        return f"cannot reach the Cloudflare API at {exc.request.url.host}: {exc}"
    return f"the Cloudflare API answered unexpectedly: {exc}"


def run(args) -> int:
    desired = desired_state(load_data(Path(args.repo)))
    vault = keys.vault()
    vault_data = vault.load()
    token, source = api_token(vault_data)
    args.redact.append(token)
    import cloudflare

    client = make_client(token)
    try:
        current = fetch_current(client, desired, vault_data)
        actions = diff(desired, current)
        if args.command == "plan":
            for action in actions:
                print(action.line())
            print(summary(actions))
            return 0
        writes = apply(client, actions, desired, current, vault, delete_unlisted=args.delete_unlisted)
    except cloudflare.CloudflareError as exc:
        raise EdgeError(explain_api_error(exc, source)) from None
    left = sum(1 for a in actions if a.op == "-") if not args.delete_unlisted else 0
    note = f" ({left} unlisted left in place; --delete-unlisted deletes them)" if left else ""
    print(f"apply: {'no changes' if not writes else f'{writes} change(s) made'}{note}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser, sub = cli.commands("python -m fleet edge", __doc__, REPO)
    sub.add_parser("plan", help="print what apply would change; change nothing")
    applyp = sub.add_parser("apply", help="make the changes the plan shows")
    applyp.add_argument("--delete-unlisted", action="store_true",
                        help="also delete Workers scripts and KV namespaces not in the keep lists")
    args = cli.parse(parser, argv)
    if isinstance(args, int):
        return args
    args.delete_unlisted = getattr(args, "delete_unlisted", False)
    return cli.report("edge", run, args, {EdgeError: 1}, interrupted="interrupted (changes printed above were made)")


if __name__ == "__main__":
    sys.exit(main())

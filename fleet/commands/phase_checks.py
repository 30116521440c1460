"""The checklist's machine checks that no spec covers (fleet/checklist.py names them).

Each check takes the run's Context and returns a Result: done, failing (with the evidence:
which host, what was seen) or not applicable (with the reason). A check never raises for a
failing fleet; an error reaching an API or a host is evidence of a failing item.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from fleet.checklist import KV_MAX, WORKERS_MAX


@dataclass
class Result:
    status: str  # "done" | "failing" | "n/a"
    evidence: list[str] = field(default_factory=list)
    detail: list[str] = field(default_factory=list)  # printed under the item (e.g. a matrix)


@dataclass
class Context:
    repo: Path
    entries: dict  # prepared inventory entries (connection data), by host
    fleet: object  # fleet.preflight.model.Fleet
    hosts: list[str]  # the hosts this run concerns (LIMIT)
    _edge: object = None

    def edge(self):
        """(desired, current) of the Cloudflare state, read once per run, or an error line."""
        if self._edge is None:
            self._edge = _read_edge(self.repo)
        return self._edge


# --- the tailnet ------------------------------------------------------------------------------

PING = "sudo -n tailscale ping --c 2 --timeout 2s {address} >/dev/null 2>&1 && echo '{address} ok' || echo '{address} fail'"


def _pings(entry: dict, targets: list[str]) -> dict[str, str]:
    """target address -> "ok" | "fail" | the SSH error, pinged from the entry's host."""
    from fleet.commands.llm_check import ssh_command

    script = "; ".join(PING.format(address=a) for a in targets)
    try:
        proc = subprocess.run([*ssh_command(entry), script], capture_output=True, text=True,
                              timeout=20 + 5 * len(targets), stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return {a: "ssh timed out" for a in targets}
    seen = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if " " in line)
    if proc.returncode != 0 and not seen:
        error = (proc.stderr.strip().splitlines() or [f"ssh exit {proc.returncode}"])[-1]
        return {a: f"ssh: {error}" for a in targets}
    return {a: seen.get(a, "no answer") for a in targets}


def tailnet_matrix(ctx: Context) -> Result:
    """Each host `tailscale ping`s every other host's tailnet address (N x N)."""
    nodes = [h for h in ctx.fleet.hosts.values() if h.runs("tailscale")]
    sources = [h for h in nodes if h.name in ctx.hosts]
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        futures = {src.name: pool.submit(_pings, ctx.entries[src.name],
                                         [d.tailnet_address for d in nodes if d.name != src.name])
                   for src in sources}
        seen = {name: f.result() for name, f in futures.items()}
    width = max(len(h.name) for h in nodes)
    detail = [" " * (width + 2) + " ".join(f"{i:>2}" for i in range(1, len(nodes) + 1)) + "   (columns: "
              + ", ".join(f"{i} {h.name}" for i, h in enumerate(nodes, 1)) + ")"]
    failing = []
    for src in sources:
        cells = []
        for dst in nodes:
            if dst.name == src.name:
                cells.append(" -")
                continue
            answer = seen[src.name][dst.tailnet_address]
            cells.append("ok" if answer == "ok" else "XX")
            if answer != "ok":
                failing.append(f"{src.name} -> {dst.name} ({dst.tailnet_address}): "
                               f"{'no reply to tailscale ping' if answer == 'fail' else answer}")
        detail.append(f"{src.name:<{width}}  " + " ".join(cells))
    pairs = sum(len(nodes) - 1 for _ in sources)
    if failing:
        return Result("failing", failing, detail)
    return Result("done", [f"{pairs} of {pairs} pairs answer"], detail)


# --- Cloudflare (the edge command's own reading of it) -----------------------------------------

def _read_edge(repo: Path):
    from fleet.commands import edge
    from fleet.commands.cli import load_data
    from fleet.converge import keys
    from fleet.converge.vault import VaultError

    try:
        import cloudflare

        desired = edge.desired_state(load_data(repo))
        vault_data = keys.vault().load()
        token, source = edge.api_token(vault_data)
        client = edge.make_client(token)
        try:
            current = edge.fetch_current(client, desired, vault_data)
        except cloudflare.CloudflareError as exc:
            return edge.explain_api_error(exc, source)
        return desired, current, client
    except (edge.EdgeError, VaultError) as exc:
        return str(exc).splitlines()[0]


def _edge_or_fail(ctx: Context):
    state = ctx.edge()
    if isinstance(state, str):
        return None, Result("failing", [f"edge: {state}"])
    return state, None


def edge_tunnels(ctx: Context) -> Result:
    """A tunnel exists for each cloudflared host this run concerns, with the vault's credentials."""
    state, failed = _edge_or_fail(ctx)
    if failed:
        return failed
    desired, current, _ = state
    from fleet.commands.edge import _tunnel_action

    wanted = [t for t in desired.tunnels if t in ctx.hosts]
    bad, good = [], []
    for name in wanted:
        action = _tunnel_action(name, current)
        if isinstance(action, str):
            bad.append(action.split(". Fix:")[0])
        elif action.op != "=":
            bad.append(f"tunnel {name}: none in Cloudflare (make edge-apply creates it)")
        else:
            good.append(f"tunnel {name} = {action.tunnel_id}")
    return Result("failing", bad) if bad else Result("done", good or ["no cloudflared host in this run"])


def edge_dns(ctx: Context) -> Result:
    """Every fleet_domains name is a proxied CNAME to its tunnel's <id>.cfargotunnel.com."""
    state, failed = _edge_or_fail(ctx)
    if failed:
        return failed
    desired, current, _ = state
    from fleet.commands.edge import EdgeError, TUNNEL_SUFFIX, diff

    try:
        actions = diff(desired, current)
    except EdgeError as exc:
        return Result("failing", [f"edge: {p.split('. Fix:')[0]}" for p in exc.problems])
    dns = [a for a in actions if type(a).__name__ == "DnsAction"]
    bad = [a.line()[2:] for a in dns if a.op != "="]
    if bad:
        return Result("failing", [f"dns {line} still to make (make edge-apply)" for line in bad])
    return Result("done", [f"{len(dns)} proxied CNAMEs to *{TUNNEL_SUFFIX}, one per domain"])


def _count(ctx: Context, what: str, limit: int, keep_key: str) -> Result:
    state, failed = _edge_or_fail(ctx)
    if failed:
        return failed
    _, current, _ = state
    names = current.workers if what == "Workers" else [title for title, _ in current.kv]
    keep = set(ctx.fleet.all_data.get(keep_key) or ())
    unlisted = sorted(n for n in names if n not in keep)
    line = f"{len(names)} {what} (target <= {limit}), {len(unlisted)} not in {keep_key}"
    if len(names) > limit:
        return Result("failing", [line + ": read `make edge-plan`, then `make edge-apply DELETE=1` "
                                  "deletes the unlisted ones"])
    return Result("done", [line])


def edge_worker_count(ctx: Context) -> Result:
    return _count(ctx, "Workers", WORKERS_MAX, "edge_workers_keep")


def edge_kv_count(ctx: Context) -> Result:
    return _count(ctx, "KV namespaces", KV_MAX, "edge_kv_keep")


def edge_auth_namespace(ctx: Context) -> Result:
    """The namespace the guide's API keys live in exists, and holds only hashes."""
    state, failed = _edge_or_fail(ctx)
    if failed:
        return failed
    desired, current, client = state
    import cloudflare
    from fleet.commands.edge import api_keys_namespace

    title, found = api_keys_namespace(ctx.fleet.all_data, current.kv)
    if found is None:
        return Result("failing", [f"no KV namespace titled {title} in the account (create it: Storage & "
                                  "Databases, KV; keep it listed in edge_kv_keep)"])
    try:
        names = [k.name for k in client.kv.namespaces.keys.list(found, account_id=desired.account_id)]
    except cloudflare.CloudflareError as exc:
        return Result("failing", [f"listing the keys of {title}: {exc}"])
    raw = [n for n in names if not (len(n) == 64 and all(c in "0123456789abcdef" for c in n))]
    if raw:
        return Result("failing", [f"{len(raw)} key(s) in {title} are not SHA-256 hashes (a key stored in "
                                  "clear): delete them and issue new ones with `make apikey NAME=...`"])
    return Result("done", [f"KV namespace {title} = {found}: {len(names)} key(s), hashes only; "
                           "`make apikey NAME=...` issues one"])


def _rules(ctx: Context, phase: str) -> Result:
    state, failed = _edge_or_fail(ctx)
    if failed:
        return failed
    desired, current, _ = state
    from fleet.commands.edge import _ruleset_action

    wants = [w for w in desired.rulesets if w.phase == phase]
    if not wants:
        return Result("failing", ["the data asks for none (edge_waf_rules / edge_rate_limits in group_data/all.py)"])
    bad, good = [], []
    for want in wants:
        if want.zone not in current.zone_ids:
            bad.append(f"zone {want.zone} is not in the account")
            continue
        action = _ruleset_action(want, current)
        (good if action.op == "=" else bad).append(action.line()[2:] + ("" if action.op == "=" else
                                                                       " (make edge-apply writes it)"))
    return Result("failing", bad) if bad else Result("done", good)


def edge_waf_rules(ctx: Context) -> Result:
    return _rules(ctx, "http_request_firewall_custom")


def edge_rate_limits(ctx: Context) -> Result:
    return _rules(ctx, "http_ratelimit")


# --- apps and the LLM --------------------------------------------------------------------------

def public_https(ctx: Context) -> Result:
    """From the operator's machine, each app domain's public HTTPS answer carries its version."""
    fleet = ctx.fleet
    domains = {d: r for d, r in (fleet.all_data.get("fleet_domains") or {}).items() if r.get("host") in ctx.hosts}
    if not domains:
        return Result("n/a", ["no domain served by a host of this run"])
    first = fleet.hosts[next(iter(domains.values()))["host"]]
    if not first.data.get("checklist_public_https", True):
        return Result("n/a", [str(first.data.get("checklist_public_https_reason")
                                  or "checklist_public_https is off in data")])
    releases = first.data.get("apps_releases") or {}
    definitions = first.data.get("apps_definitions") or {}
    bad, good = [], []
    for domain, route in sorted(domains.items()):
        app = next((name for name, d in definitions.items() if d.get("service") == route.get("service")), None)
        if app is None:
            continue
        version = str((releases.get(app) or {}).get("version") or "")
        try:
            with urllib.request.urlopen(f"https://{domain}/", timeout=10) as resp:
                body = resp.read(65536).decode("utf-8", "replace")
                status = resp.status
        except (urllib.error.URLError, OSError) as exc:
            bad.append(f"https://{domain}/: {getattr(exc, 'reason', exc)}")
            continue
        if status != 200 or (version and version not in body):
            bad.append(f"https://{domain}/: HTTP {status}, version {version or '?'} not in the answer")
        else:
            good.append(f"https://{domain}/ 200 ({app} {version or 'no version in data'})")
    return Result("failing", bad) if bad else Result("done", good)


def llm_via_pi(ctx: Context) -> Result:
    """One chat completion on the llm host's endpoint, sent from a Pi over the tailnet."""
    from deploys.vllm import API_KEY
    from fleet.commands import llm_check
    from fleet.converge import keys
    from fleet.converge.services import Unreachable
    from fleet.converge.vault import VaultError

    fleet = ctx.fleet
    llm_hosts = [h for h in fleet.hosts_with("llm") if h.name in ctx.hosts]
    pis = [h.name for h in fleet.hosts.values() if "pis" in h.groups and h.runs("tailscale")]
    if not llm_hosts:
        return Result("n/a", ["no llm host in this run"])
    if not pis:
        return Result("failing", ["no Pi on the tailnet to send the request from"])
    done, bad = [], []
    for host in llm_hosts:
        try:
            api_key = keys.secret(API_KEY) if host.data["llm_engine"] == "vllm" else None
            result = llm_check.check_host(host.name, ctx.entries, host.data, fleet.services.reach("llm", server=host.name),
                                          via=pis[0], api_key=api_key, timeout=60.0)
            done.append(f"{host.name} answered {pis[0]} in {result.latency_s:.2f} s ({result.model})")
        except (llm_check.LLMCheckError, Unreachable, VaultError) as exc:
            bad.append(str(exc))
    return Result("failing", bad) if bad else Result("done", done)


# --- documents -----------------------------------------------------------------------------

def _doc_current(ctx: Context, which: str) -> Result:
    from fleet.commands import docs

    path, text = docs.generated(ctx.repo)[which]
    rel = path.relative_to(ctx.repo)
    if not path.exists():
        return Result("failing", [f"{rel} does not exist: run `make docs`"])
    if path.read_text() != text:
        return Result("failing", [f"{rel} is stale (the data changed since it was generated): run `make docs`"])
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    return Result("done", [f"{rel} matches the current data (sha256 {digest})"])


def fleet_doc_current(ctx: Context) -> Result:
    return _doc_current(ctx, "fleet")


def runbook_current(ctx: Context) -> Result:
    return _doc_current(ctx, "runbook")


CHECKS = {f.__name__: f for f in (tailnet_matrix, edge_tunnels, edge_dns, edge_worker_count, edge_kv_count,
                                  edge_auth_namespace, edge_waf_rules, edge_rate_limits, public_https, llm_via_pi, fleet_doc_current,
                                  runbook_current)}

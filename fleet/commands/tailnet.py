"""python -m fleet tailnet show [--hujson] | check | plan | apply [--force]: the tailnet policy.

The policy is generated from the service graph (fleet/policy; docs/tailnet-policy.md):

  show    the generated policy's grants and test counts (--hujson: the whole file); offline
  check   the offline evaluator: the flows the generated policy allows between the hosts
          equal the service graph's, and its own tests hold; no credentials, no network
  plan    the difference between the live policy (Tailscale's API) and the generated one;
          changes nothing
  apply   write the generated policy: checked offline, then by the API's validate endpoint,
          then written with If-Match on the ETag just read, so an edit made between the
          read and the write is never overwritten. Run again, it finds nothing to do.

Why apply refuses an edit made in the admin console: the generated file carries a
fingerprint of its content. When the live policy no longer matches its fingerprint (or has
none: a first apply, or a policy written by hand), someone changed access by hand, and
overwriting it would silently undo that. Apply stops and says so; plan shows the edit;
`apply --force` (make tailnet-apply FORCE=1) replaces it after you have carried what should
stay into group_data/.

The tailnet: TAILSCALE_TAILNET when set, else tailnet_policy_tailnet ("-": the key's own).
The API key: TAILSCALE_API_KEY when set, else the vault's tailscale_api_key; an API access
token (admin console, Settings, Keys). TAILSCALE_API_BASE_URL points the client at another API
(tests). The key is never printed.

Exit codes: 0 done (check: the policy is sound); 1 an error, or check found a problem; 2 bad usage.
"""

from __future__ import annotations

import base64
import difflib
import json
import os
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from fleet.commands import cli
from fleet.commands.cli import load_data
from fleet.converge import keys
from fleet.converge.vault import Vault
from fleet.policy import evaluate, tailnet
from fleet.policy.graph import ServiceGraph, check_service_graph
from fleet.preflight.model import Fleet

REPO = Path(__file__).resolve().parents[2]
DEFAULT_BASE_URL = "https://api.tailscale.com"
KEY_NAME = "tailscale_api_key"
KEY_ENV = "TAILSCALE_API_KEY"
TAILNET_ENV = "TAILSCALE_TAILNET"
BASE_URL_ENV = "TAILSCALE_API_BASE_URL"
TIMEOUT = 60  # seconds per request; nothing is retried


class TailnetError(Exception):
    """Problems found before or while talking to Tailscale; each says what to do."""

    def __init__(self, problems: str | list[str]):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


# --- the generated policy ------------------------------------------------------------------

def generated(fleet: Fleet) -> tuple[tailnet.Policy, str, evaluate.Report]:
    """The policy, its HuJSON text, and the offline evaluator's report on that text."""
    problems = check_service_graph(fleet)
    if problems:
        raise TailnetError([f"{p}" for p in problems])
    graph = ServiceGraph(fleet)
    policy = tailnet.generate(fleet, graph)
    text = tailnet.render(policy)
    return policy, text, evaluate.check(fleet, evaluate.parse(text), graph)


# --- the API -------------------------------------------------------------------------------

def api_key(fleet_vault: Path) -> tuple[str, str]:
    """(key, where it came from): the environment wins over the vault."""
    if os.environ.get(KEY_ENV):
        return os.environ[KEY_ENV], KEY_ENV
    fix = (f"Fix: set {KEY_ENV}, or store an API access token (admin console, Settings, Keys) in the "
           f"vault ({fleet_vault}) as {KEY_NAME}: `python -m fleet vault set {KEY_NAME}`.")
    if not fleet_vault.exists():
        raise TailnetError(f"no Tailscale API key: {KEY_ENV} is not set and there is no vault. {fix}")
    value = Vault(fleet_vault, keys.passphrase()).load().get(KEY_NAME, "").strip()
    if not value:
        raise TailnetError(f"no Tailscale API key: {KEY_ENV} is not set and the vault has no {KEY_NAME}. {fix}")
    return value, f"vault key {KEY_NAME}"


@dataclass
class Response:
    status: int
    body: bytes
    etag: str


class Api:
    def __init__(self, key: str, source: str, tailnet_name: str, base_url: str):
        self.auth = "Basic " + base64.b64encode(f"{key}:".encode()).decode()  # as Tailscale's Go clients
        self.source = source
        self.tailnet = tailnet_name
        self.base = base_url.rstrip("/")

    def request(self, method: str, path: str, body: bytes | None = None, **headers: str) -> Response:
        url = f"{self.base}/api/v2/tailnet/{quote(self.tailnet, safe='')}/{path}"
        req = urllib.request.Request(url, data=body, method=method,
                                     headers={"Authorization": self.auth, **{k.replace("_", "-"): v
                                                                             for k, v in headers.items()}})
        try:
            with urllib.request.urlopen(req, timeout=TIMEOUT) as resp:
                return Response(resp.status, resp.read(), resp.headers.get("ETag") or "")
        except urllib.error.HTTPError as exc:
            return Response(exc.code, exc.read(), exc.headers.get("ETag") or "")
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise TailnetError(f"cannot reach Tailscale's API at {self.base}: {reason}. Fix: check the network "
                               f"(or {BASE_URL_ENV}).") from None

    def refused(self, what: str, resp: Response) -> TailnetError:
        message = _message(resp.body) or resp.body[:200].decode(errors="replace")
        if resp.status in (401, 403):
            return TailnetError(f"Tailscale's API rejected the key (HTTP {resp.status} on {what}: {message}; key "
                                f"from {self.source}). Fix: use a current API access token of an Owner, Admin or "
                                "Network admin of the tailnet.")
        if resp.status == 404:
            return TailnetError(f"Tailscale's API knows no tailnet {self.tailnet!r} (HTTP 404 on {what}: {message}). "
                                f"Fix: set tailnet_policy_tailnet in group_data/all.py (or {TAILNET_ENV}), or '-'.")
        return TailnetError(f"Tailscale's API refused {what} (HTTP {resp.status}: {message}).")

    def live(self) -> tuple[str, str]:
        resp = self.request("GET", "acl", Accept="application/hujson")
        if resp.status != 200:
            raise self.refused("reading the policy", resp)
        if not resp.etag:
            raise TailnetError("Tailscale's API sent the policy without an ETag, so a write could not be "
                               "guarded against a concurrent edit; nothing was written.")
        return resp.body.decode(), resp.etag

    def validate(self, text: str) -> None:
        """The validate endpoint answers 200 even for a policy it refuses: the body says."""
        resp = self.request("POST", "acl/validate", text.encode(), Content_Type="application/hujson")
        if resp.status != 200:
            raise self.refused("validating the policy", resp)
        message = _message(resp.body)
        if message or _json(resp.body) is None and resp.body.strip():
            raise TailnetError(f"Tailscale's validate endpoint refused the generated policy (HTTP 200 with a "
                               f"failure: {message or resp.body[:200].decode(errors='replace')}{_details(resp.body)}); "
                               "nothing was written. Fix: correct the data it names and plan again.")

    def write(self, text: str, etag: str) -> str:
        resp = self.request("POST", "acl", text.encode(), Content_Type="application/hujson",
                            Accept="application/hujson", If_Match=etag)
        if resp.status == 412:
            raise TailnetError("the live policy changed between this run's read and its write (HTTP 412 on "
                               "If-Match); nothing was written. Fix: run `make tailnet-plan` to see the edit, "
                               "then apply again.")
        if resp.status != 200:
            raise self.refused("writing the policy", resp)
        return resp.etag


def _json(body: bytes):
    try:
        return json.loads(body or b"{}")
    except ValueError:
        return None


def _message(body: bytes) -> str:
    value = _json(body)
    return str(value.get("message") or "") if isinstance(value, dict) else ""


def _details(body: bytes) -> str:
    value = _json(body)
    data = value.get("data") if isinstance(value, dict) else None
    parts = [f"{d.get('user')}: {'; '.join(d.get('errors') or [])}" for d in data or [] if isinstance(d, dict)]
    return f" [{' | '.join(parts)}]" if parts else ""


# --- plan and apply ------------------------------------------------------------------------

def pretty(content: dict) -> list[str]:
    """The policy's content, one value per line, comments left out: both sides of a diff."""
    return tailnet.render(tailnet.Policy(content, ())).splitlines()[3:]


def compare(live_text: str, desired: tailnet.Policy) -> tuple[list[str], str]:
    """(the diff lines, the live policy's origin: "ours", "edited" or "foreign")."""
    try:
        live = evaluate.parse(live_text)
    except evaluate.PolicyError:
        return list(difflib.unified_diff(live_text.splitlines(), pretty(desired.content), "live", "generated",
                                         lineterm="")), "foreign"
    mark = tailnet.fingerprint_matches(live_text, live)
    origin = "ours" if mark else ("foreign" if mark is None else "edited")
    if tailnet.fingerprint(live) == tailnet.fingerprint(desired.content):
        return [], origin
    return list(difflib.unified_diff(pretty(live), pretty(desired.content), "live", "generated", lineterm="")), origin


ORIGIN = {
    "ours": "written by the last apply, unchanged since",
    "edited": "EDITED outside this tool since the last apply (admin console or another tool)",
    "foreign": "not written by this tool (no fingerprint: a first apply, or a policy written by hand)",
}


def run(args) -> int:
    fleet = load_data(Path(args.repo))
    policy, text, report = generated(fleet)
    if args.command == "show":
        sys.stdout.write(text if args.hujson else "\n".join(tailnet.summary(policy)) + "\n")
        return 0
    if args.command == "check":
        print("\n".join(report.lines()))
        return 0 if report.ok else 1
    if not report.ok:
        raise TailnetError(["the generated policy fails the offline evaluator; nothing was sent:", *report.lines()])
    key, source = api_key(keys.vault_path())
    args.redact.append(key)
    if not fleet.all_data.get("tailnet_policy_admins"):
        raise TailnetError("tailnet_policy_admins is empty: the policy would let no person reach the fleet over "
                           "the tailnet (ssh, grafana, the llm). Fix: list your Tailscale login(s) in "
                           "group_data/all.py.")
    name = os.environ.get(TAILNET_ENV) or str(fleet.all_data.get("tailnet_policy_tailnet") or "-")
    api = Api(key, source, name, os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL)
    live_text, etag = api.live()
    diff, origin = compare(live_text, policy)
    print(f"tailnet {name}: live policy {etag} is {ORIGIN[origin]}")
    if args.command == "plan":
        if diff:
            print("\n".join(diff))
        added = sum(1 for line in diff if line.startswith("+") and not line.startswith("+++"))
        removed = sum(1 for line in diff if line.startswith("-") and not line.startswith("---"))
        refuse = " (apply refuses the hand edit unless forced: make tailnet-apply FORCE=1)" if origin != "ours" else ""
        print(f"plan: {added} line(s) to add, {removed} to remove{refuse}" if diff else "plan: no changes")
        return 0
    if not diff:
        print("apply: no changes")
        return 0
    if origin != "ours" and not args.force:
        raise TailnetError(f"the live policy of tailnet {name} is {ORIGIN[origin]}; applying would undo that edit, "
                           "so nothing was written. Fix: run `make tailnet-plan` to see it, carry what should stay "
                           "into group_data/, then `make tailnet-apply FORCE=1`.")
    api.validate(text)
    new_etag = api.write(text, etag)
    assertions = report.result.assertions
    print(f"apply: policy written to tailnet {name} ({len(policy.grants)} grants, {assertions} test assertions"
          f"{', replacing a hand edit' if origin != 'ours' else ''}); ETag {new_etag}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser, sub = cli.commands("python -m fleet tailnet", __doc__, REPO)
    show = sub.add_parser("show", help="the generated policy's grants and tests (offline)")
    show.add_argument("--hujson", action="store_true", help="print the whole policy file")
    sub.add_parser("check", help="evaluate the generated policy offline against the service graph")
    sub.add_parser("plan", help="diff the live policy against the generated one; change nothing")
    applyp = sub.add_parser("apply", help="validate and write the generated policy")
    applyp.add_argument("--force", action="store_true", help="replace a policy edited outside this tool")
    args = cli.parse(parser, argv)
    if isinstance(args, int):
        return args
    args.force = getattr(args, "force", False)
    args.hujson = getattr(args, "hujson", False)
    return cli.report("tailnet", run, args, {TailnetError: 1, evaluate.PolicyError: 1},
                      interrupted="interrupted (a write the output does not show was not made)")


if __name__ == "__main__":
    sys.exit(main())

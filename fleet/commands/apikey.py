"""python -m fleet apikey create NAME [--user ID] | list: the guide's API keys, in Workers KV.

`create` makes a key the guide's way: "br_" + 32 random bytes (URL-safe base64), whose
SHA-256 (hex) is the KV key in the edge_api_keys_namespace namespace (AUTH), with
{"name", "userId", "created"} as its value. The key itself is printed once, on stdout, and
stored nowhere: whoever runs this hands it to the client; a Worker checks a presented key
by hashing it and looking the hash up. `list` prints the stored hashes' names (not keys).

The token and account come from where `make edge-apply` takes them (fleet.commands.edge).
Exit codes: 0 done; 1 an error; 2 bad usage.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import sys
from datetime import datetime, timezone
from pathlib import Path

from fleet.commands import cli, edge
from fleet.converge import keys


REPO = Path(__file__).resolve().parents[2]
PREFIX = "br_"


def generate_api_key() -> tuple[str, str]:
    """(the key to give the client, the hash to store): the guide's generate_api_key."""
    key = f"{PREFIX}{secrets.token_urlsafe(32)}"
    return key, hashlib.sha256(key.encode()).hexdigest()


def verify_api_key(key: str, stored_hash: str) -> bool:
    return secrets.compare_digest(hashlib.sha256(key.encode()).hexdigest(), stored_hash)


def _namespace(client, fleet, account: str) -> tuple[str, str]:
    namespaces = edge._all(client.kv.namespaces.list(account_id=account, per_page=edge.PER_PAGE), "KV namespaces")
    title, found = edge.api_keys_namespace(fleet.all_data, [(ns.title, ns.id) for ns in namespaces])
    if found is None:
        raise edge.EdgeError(f"no KV namespace titled {title} in account {account}. Fix: create it (dashboard: "
                             "Storage & Databases, KV) and keep it listed in edge_kv_keep.")
    return title, found


def check_names(args) -> None:
    """NAME (and --user) before anything is opened: a key needs a name its owner can be told by."""
    for flag, value in (("NAME", getattr(args, "name", None)), ("--user", getattr(args, "user", None))):
        if value is None and flag == "--user":
            continue
        if not (value or "").strip() or not value.isprintable() or len(value) > 100:
            shown = repr(value) if value else "(none)"
            raise edge.EdgeError(f"{flag}={shown} is not a name for a key. Fix: 1-100 printable characters "
                                 "naming who or what the key is for (e.g. NAME=partner-x).")


def run(args) -> int:
    if args.command == "create":
        check_names(args)
    fleet = cli.load_data(Path(args.repo))
    account = str(fleet.all_data.get("edge_account_id") or "").strip()
    if not account:
        raise edge.EdgeError("edge_account_id is empty. Fix: set it in group_data/all.py to the Cloudflare account ID.")
    vault_data = keys.vault().load()
    token, source = edge.api_token(vault_data)
    args.redact.append(token)
    import cloudflare

    client = edge.make_client(token)
    try:
        title, namespace = _namespace(client, fleet, account)
        if args.command == "list":
            stored = client.kv.namespaces.keys.list(namespace, account_id=account)
            names = [(k.name, (k.metadata or {}) if isinstance(k.metadata, dict) else {}) for k in stored]
            for name, meta in names:
                print(f"{name[:12]}…  {meta.get('name', '?')}  user {meta.get('userId', '?')}  {meta.get('created', '')}")
            print(f"apikey: {len(names)} key(s) in {title}")
            return 0
        key, key_hash = generate_api_key()
        args.redact.append(key)
        created = datetime.now(timezone.utc).isoformat(timespec="seconds")
        meta = {"name": args.name, "userId": args.user or args.name, "created": created}
        client.kv.namespaces.bulk_update(namespace, account_id=account,
                                         body=[{"key": key_hash, "value": json.dumps(meta), "metadata": meta}])
    except cloudflare.CloudflareError as exc:
        raise edge.EdgeError(edge.explain_api_error(exc, source)) from None
    print(f"apikey: stored the SHA-256 of a new key for {args.name} in {title} ({key_hash[:12]}…); "
          "the key, shown this once:", file=sys.stderr)
    print(key)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser, sub = cli.commands("python -m fleet apikey", __doc__, REPO)
    create = sub.add_parser("create", help="make a key; print it once; store only its SHA-256")
    create.add_argument("name", help="who or what the key is for")
    create.add_argument("--user", help="the userId the Worker forwards (default: NAME)")
    sub.add_parser("list", help="the stored keys' hashes and names")
    args = cli.parse(parser, argv)
    if isinstance(args, int):
        return args
    return cli.report("apikey", run, args, {edge.EdgeError: 1},
                      interrupted="interrupted (nothing was stored unless printed)")


if __name__ == "__main__":
    sys.exit(main())

"""python -m fleet vault COMMAND: manage the secrets vault.

  init                 create an empty vault (asks for the passphrase twice)
  view                 print every secret (names and values) as JSON
  list                 print the names only
  get KEY              print one value
  set KEY              read the value from standard input (never from the command line);
                       --generate N stores N random bytes, URL-safe base64, instead
  edit                 edit as JSON in $EDITOR (a private temporary file, removed after)
  rekey                re-encrypt under a new passphrase (FLEET_VAULT_NEW_PASSPHRASE[_FILE]
                       or a prompt)
  hostkeys             generate an ed25519 SSH host key for every inventory host lacking one

The vault is FLEET_VAULT, or the target's (see fleet/converge/keys.py). Nothing is written unless
the vault opened with the right passphrase and the new content is valid.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets as pysecrets
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

from fleet.commands import cli
from fleet.converge import keys
from fleet.converge.vault import KdfParams, Vault, VaultError
from fleet.preflight.inventory import extra_test_hosts, read_inventory_data, select_vault, target_from_env


def _private_tempdir() -> str:
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    return tempfile.mkdtemp(prefix="fleet-vault-", dir=base)  # mode 0700


def cmd_init(args) -> int:
    path = keys.vault_path()
    if path.exists():
        raise VaultError(f"{path} already exists; use `rekey` to change its passphrase")
    path.parent.mkdir(parents=True, exist_ok=True)
    phrase = keys.passphrase("new vault passphrase: ", confirm=True)
    params = KdfParams(n=args.scrypt_n) if args.scrypt_n else KdfParams()
    Vault(path, phrase).save({}, params)
    print(f"created {path} (scrypt n={params.n}, r={params.r}, p={params.p}; AES-256-GCM)")
    return 0


def cmd_view(args) -> int:
    print(json.dumps(keys.vault().load(), indent=2, sort_keys=True))
    return 0


def cmd_list(args) -> int:
    for key in sorted(keys.vault().load()):
        print(key)
    return 0


def cmd_get(args) -> int:
    data = keys.vault().load()
    if args.key not in data:
        raise VaultError(f"no secret {args.key!r} in {keys.vault_path()}. "
                         "Fix: `python -m fleet vault list` names the secrets it holds.")
    sys.stdout.write(data[args.key])
    if sys.stdout.isatty() and not data[args.key].endswith("\n"):
        sys.stdout.write("\n")
    return 0


def cmd_set(args) -> int:
    vault = keys.vault()
    data = vault.load()
    if args.generate:
        value = pysecrets.token_urlsafe(args.generate)
    else:
        if sys.stdin.isatty():
            print(f"value for {args.key} (end with Ctrl-D):", file=sys.stderr)
        value = sys.stdin.read()
        if not value:
            raise VaultError("no value on standard input; nothing was written")
    data[args.key] = value
    vault.save(data)
    print(f"set {args.key} in {vault.path}", file=sys.stderr)
    return 0


def cmd_edit(args) -> int:
    vault = keys.vault()
    data = vault.load()
    tmpdir = _private_tempdir()
    tmp = Path(tmpdir) / "vault.json"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(data, out, indent=2, sort_keys=True)
            out.write("\n")
        editor = os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi"
        if subprocess.call([*shlex.split(editor), str(tmp)]) != 0:
            raise VaultError("the editor failed; the vault was not changed")
        try:
            edited = json.loads(tmp.read_text())
        except ValueError as exc:
            raise VaultError(f"the edited text is not valid JSON ({exc}); the vault was not changed")
        if not isinstance(edited, dict) or not all(isinstance(v, str) for v in edited.values()):
            raise VaultError("the vault must stay a JSON object of names to strings; not changed")
        if edited == data:
            print("no change", file=sys.stderr)
            return 0
        vault.save(edited)
        print(f"saved {vault.path}", file=sys.stderr)
        return 0
    finally:
        if tmp.exists():
            tmp.write_bytes(b"\0" * tmp.stat().st_size)
            tmp.unlink()
        os.rmdir(tmpdir)


def cmd_rekey(args) -> int:
    vault = keys.vault()
    vault.load()  # the old passphrase must be right before anything else is asked
    new = keys.passphrase("new vault passphrase: ", confirm=True, env_prefix="FLEET_VAULT_NEW")
    vault.rekey(new)
    print(f"re-encrypted {vault.path} under the new passphrase", file=sys.stderr)
    return 0


def cmd_hostkeys(args) -> int:
    # with the test fleet's extra hosts (FLEET_TEST_EXTRA_HOSTS), which need host keys too
    hosts, _ = extra_test_hosts(*read_inventory_data(keys.REPO / "inventory.py"), target_from_env())
    vault = keys.vault()
    data = vault.load()
    missing = [h for h in hosts if keys.host_key_name(h) not in data]
    for host in missing:
        data[keys.host_key_name(host)] = keys.new_host_key()
    if missing:
        vault.save(data)
    print(f"generated host keys for: {', '.join(missing) or 'none (all present)'}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = cli.Parser(prog="python -m fleet vault", description=__doc__.split("\n\n")[0],
                        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    init = sub.add_parser("init")
    init.add_argument("--scrypt-n", type=int, help=argparse.SUPPRESS)  # tests only: a cheaper KDF
    sub.add_parser("view")
    sub.add_parser("list")
    sub.add_parser("get").add_argument("key")
    setp = sub.add_parser("set")
    setp.add_argument("key")
    setp.add_argument("--generate", type=cli.positive(int), metavar="N", help="store N random bytes (base64url)")
    sub.add_parser("edit")
    sub.add_parser("rekey")
    sub.add_parser("hostkeys")
    args = cli.parse(parser, argv)
    if isinstance(args, int):
        return args
    return cli.report("vault", run, args, {}, interrupted="interrupted; nothing was written", every_line=False)


def run(args: argparse.Namespace) -> int:
    _, test_fleet = read_inventory_data(keys.REPO / "inventory.py")
    select_vault(keys.REPO, test_fleet)
    return globals()[f"cmd_{args.command}"](args)


if __name__ == "__main__":
    sys.exit(main())

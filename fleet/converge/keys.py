"""How deploys and tools reach the vault: which file, which passphrase, which secret.

Deploys read secrets only through `secret(key)`. A secret reaches a host only as a file
(fleet.converge.ops.secret_file), never as an argument, template variable or command line.
Which secret files a host gets is declared by its components (fleet.converge.component).

Which vault (first that applies):
  FLEET_VAULT                      an explicit path
  use(...)                         the target's vault, chosen before any host is touched
                                   (fleet.preflight.target: the demo vault for FLEET_TARGET=test)
  otherwise                        secrets/fleet.vault
Its passphrase (first that applies):
  FLEET_VAULT_PASSPHRASE_FILE      a file holding it (best for automation)
  FLEET_VAULT_PASSPHRASE           the environment
  use(..., passphrase_file=...)    the test fleet's documented, test-only passphrase file
  a prompt                         when there is a terminal
"""

from __future__ import annotations

import getpass
import os
import sys
from functools import lru_cache
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fleet.converge.vault import KeyCache, Vault, VaultError

REPO = Path(__file__).resolve().parents[2]
DEFAULT_VAULT = "secrets/fleet.vault"

_selected: dict[str, Path | None] = {"path": None, "passphrase_file": None}


def use(path: Path, passphrase_file: Path | None = None) -> None:
    """Select the vault the target uses (FLEET_VAULT still wins)."""
    _selected["path"] = Path(path).resolve()
    _selected["passphrase_file"] = Path(passphrase_file).resolve() if passphrase_file else None


def vault_path() -> Path:
    if os.environ.get("FLEET_VAULT"):
        return Path(os.environ["FLEET_VAULT"]).resolve()
    return _selected["path"] or REPO / DEFAULT_VAULT


def passphrase_file(env_prefix: str = "FLEET_VAULT") -> Path | None:
    """The file the passphrase is read from, when it is read from one."""
    file_var, value_var = f"{env_prefix}_PASSPHRASE_FILE", f"{env_prefix}_PASSPHRASE"
    if os.environ.get(file_var):
        path = Path(os.environ[file_var])
        if not path.exists():
            raise VaultError(f"{file_var}={path} does not exist. Fix: point it at the file holding the passphrase")
        if not path.is_file():
            raise VaultError(f"{file_var}={path} is not a file. Fix: point it at the file holding the passphrase")
        return path
    selected = _selected["passphrase_file"]
    if env_prefix == "FLEET_VAULT" and selected and not os.environ.get(value_var) and not os.environ.get("FLEET_VAULT"):
        return selected
    return None


def _known_passphrase(env_prefix: str = "FLEET_VAULT") -> str | None:
    """The passphrase when it is given (a file, the environment, the target's file), else None."""
    path = passphrase_file(env_prefix)
    if path is not None:
        try:
            return path.read_text().rstrip("\n")
        except (OSError, UnicodeDecodeError) as exc:  # unreadable, or not text: one line, no traceback
            raise VaultError(f"{path}: the passphrase file cannot be read as text ({exc.__class__.__name__}: "
                             f"{getattr(exc, 'strerror', None) or exc}). Fix: make it a readable UTF-8 text file "
                             "holding the passphrase") from None
    return os.environ.get(f"{env_prefix}_PASSPHRASE") or None


def key_cache() -> KeyCache | None:
    """Where the current vault's derived key is kept: beside its passphrase file (never for a
    passphrase typed or given in the environment; fleet.converge.vault.KeyCache says why)."""
    try:
        path = passphrase_file()
    except VaultError:
        return None
    return KeyCache(path.resolve()) if path is not None else None


def vault() -> Vault:
    """The current vault, opened with its key cache (a command that reads or writes it)."""
    return Vault(vault_path(), passphrase(), key_cache())


def passphrase(prompt: str = "vault passphrase: ", confirm: bool = False, env_prefix: str = "FLEET_VAULT") -> str:
    known = _known_passphrase(env_prefix)
    if known is not None:
        return known
    if not sys.stdin.isatty():
        raise VaultError(f"no vault passphrase: set {env_prefix}_PASSPHRASE_FILE (or {env_prefix}_PASSPHRASE), "
                         "or run in a terminal to be prompted")
    first = getpass.getpass(prompt)
    if confirm and getpass.getpass("again: ") != first:
        raise VaultError("the two passphrases differ; nothing was written")
    return first


# The vault opened on another OS thread while the caller goes on (open_early): scrypt releases
# the GIL, so its ~0.4 s of key derivation runs beside the inventory's validation instead of
# after it. A real thread even under pyinfra's gevent (its monkey-patched threading would make
# a greenlet, which runs nothing in parallel): gevent's originals of _thread.
_early: dict[tuple[str, str], tuple[object, list]] = {}


def open_early() -> None:
    """Start opening the current vault, when its passphrase needs no prompt; current() takes
    the result (or raises the error) when it is first asked."""
    from gevent import monkey

    try:
        phrase = _known_passphrase()
    except (VaultError, OSError):
        return  # current() reports it
    path = str(vault_path())
    if phrase is None or path in _adopted or (path, phrase) in _early or _open.cache_info().currsize:
        return
    cache = key_cache()
    done = monkey.get_original("_thread", "allocate_lock")()
    done.acquire()
    box: list = []

    def work():
        try:
            box.append((True, Vault(path, phrase, cache).load()))
        except BaseException as exc:  # handed to the caller of current(), as if raised there
            box.append((False, exc))
        finally:
            done.release()

    _early[(path, phrase)] = (done, box)
    monkey.get_original("_thread", "start_new_thread")(work, ())


@lru_cache(maxsize=None)
def _open(path: str, phrase: str) -> dict[str, str]:
    early = _early.pop((path, phrase), None)
    if early is None:
        return Vault(path, phrase, key_cache()).load()
    done, box = early
    done.acquire()
    ok, value = box[0]
    if not ok:
        raise value
    return value


_adopted: dict[str, dict[str, str]] = {}


def adopt(path: str, content: dict[str, str]) -> None:
    """Use `content` as the vault at `path`, as another process of the same run opened it (the
    spec runner hands its opened vault to its xdist workers), instead of deriving the key again."""
    _adopted[str(Path(path).resolve())] = dict(content)


def current() -> dict[str, str]:
    """The current vault's content, decrypted once per process."""
    path = str(vault_path())
    if path in _adopted:
        return _adopted[path]
    return _open(path, passphrase())


def secret(key: str) -> str:
    """The one way deploys read a secret. A missing key is a clear error."""
    data = current()
    if key not in data:
        raise VaultError(f"{vault_path()}: no secret {key!r}; add it with `python -m fleet vault set {key}`")
    return data[key]


# --- SSH host keys: every host's identity is in the vault --------------------------------------

def host_key_name(host: str) -> str:
    return f"ssh_host_ed25519_key/{host}"


def new_host_key() -> str:
    """A new ed25519 host key, OpenSSH private key format."""
    return Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    ).decode()


def public_host_key(private_pem: str, comment: str = "") -> str:
    key = serialization.load_ssh_private_key(private_pem.encode(), password=None)
    line = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    return f"{line} {comment}".strip()


def known_hosts_lines(data: dict[str, str], hosts: dict[str, list[str]]) -> list[str]:
    """known_hosts lines for hosts whose key is in the vault. hosts: name -> addresses."""
    lines = []
    for name, addresses in hosts.items():
        pem = data.get(host_key_name(name))
        if pem:
            lines.append(f"{','.join(addresses)} {public_host_key(pem)}")
    return lines

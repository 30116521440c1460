"""How deploys and tools reach the vault: which file, which passphrase, which secrets.

Deploys read secrets only through `secret(key)`. A secret reaches a host only as a file
(fleet.ops.secret_file), never as an argument, template variable or command line.

Which vault (first that applies):
  FLEET_VAULT                      an explicit path
  FLEET_TARGET=test                TEST_FLEET["vault"] in inventory.py (the demo vault)
  otherwise                        secrets/fleet.vault
Its passphrase (first that applies):
  FLEET_VAULT_PASSPHRASE_FILE      a file holding it (best for automation)
  FLEET_VAULT_PASSPHRASE           the environment
  FLEET_TARGET=test                TEST_FLEET["vault_passphrase_file"] (documented, test-only)
  a prompt                         when there is a terminal
"""

from __future__ import annotations

import getpass
import os
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fleet.vault import Vault, VaultError

REPO = Path(__file__).resolve().parent.parent
DEFAULT_VAULT = "secrets/fleet.vault"


@dataclass(frozen=True)
class SecretFile:
    """A secret the deploys install on a host: vault key -> file, owner, mode 0600."""
    key: str
    path: str
    user: str
    group: str
    mode: str = "600"
    # How the value is written: "{value}" as is, or wrapped, e.g. "VLLM_API_KEY={value}\n".
    fmt: str = "{value}"

    def content(self, value: str) -> str:
        return self.fmt.format(value=value)


TAILSCALE_AUTHKEY = "tailscale_authkey"
TAILSCALE_AUTHKEY_FILE = "/etc/tailscale/authkey"


CLOUDFLARED_CREDENTIALS_FILE = "/etc/cloudflared/credentials.json"
CLOUDFLARED_GROUPS = ("gateway", "llm", "failover")


def cloudflared_credentials_key(host: str) -> str:
    """The vault key of a host's tunnel credentials (`make edge-apply` writes it)."""
    return f"cloudflared_credentials/{host}"


# vLLM reads its API key from the environment; Docker passes it from this file (never argv).
VLLM_API_KEY = "vllm_api_key"
VLLM_ENV_FILE = "/etc/fleet/vllm.env"
VLLM_ENV_FORMAT = "VLLM_API_KEY={value}\n"


def host_key_name(host: str) -> str:
    return f"ssh_host_ed25519_key/{host}"


def secret_files(host: str, groups: tuple[str, ...] | list[str], data: dict | None = None) -> list[SecretFile]:
    """Every secret file a host gets. The deploys install these; the specs check them.
    `data`: the host's effective data (which LLM engine it runs)."""
    files = [
        SecretFile(host_key_name(host), "/etc/ssh/ssh_host_ed25519_key", "root", "root"),
        # tailscaled runs as root and reads the key only through `up --auth-key=file:`
        SecretFile(TAILSCALE_AUTHKEY, TAILSCALE_AUTHKEY_FILE, "root", "root"),
    ]
    if set(groups) & set(CLOUDFLARED_GROUPS):
        files.append(SecretFile(cloudflared_credentials_key(host), CLOUDFLARED_CREDENTIALS_FILE,
                                "cloudflared", "cloudflared"))
    if "llm" in groups and (data or {}).get("llm_engine") == "vllm":
        files.append(SecretFile(VLLM_API_KEY, VLLM_ENV_FILE, "root", "root", fmt=VLLM_ENV_FORMAT))
    return files


def _test_fleet() -> dict:
    from fleet.inventory import read_inventory_data

    return read_inventory_data(REPO / "inventory.py")[1]


def vault_path() -> Path:
    if os.environ.get("FLEET_VAULT"):
        return Path(os.environ["FLEET_VAULT"]).resolve()
    if os.environ.get("FLEET_TARGET") == "test":
        return REPO / _test_fleet()["vault"]
    return REPO / DEFAULT_VAULT


def passphrase(prompt: str = "vault passphrase: ", confirm: bool = False, env_prefix: str = "FLEET_VAULT") -> str:
    file_var, value_var = f"{env_prefix}_PASSPHRASE_FILE", f"{env_prefix}_PASSPHRASE"
    if os.environ.get(file_var):
        path = Path(os.environ[file_var])
        if not path.exists():
            raise VaultError(f"{file_var}={path} does not exist")
        return path.read_text().rstrip("\n")
    if os.environ.get(value_var):
        return os.environ[value_var]
    if env_prefix == "FLEET_VAULT" and os.environ.get("FLEET_TARGET") == "test" and not os.environ.get("FLEET_VAULT"):
        return (REPO / _test_fleet()["vault_passphrase_file"]).read_text().rstrip("\n")
    if not sys.stdin.isatty():
        raise VaultError(f"no vault passphrase: set {file_var} (or {value_var}), or run in a terminal to be prompted")
    first = getpass.getpass(prompt)
    if confirm and getpass.getpass("again: ") != first:
        raise VaultError("the two passphrases differ; nothing was written")
    return first


@lru_cache(maxsize=None)
def _open(path: str, phrase: str) -> dict[str, str]:
    return Vault(path, phrase).load()


def current() -> dict[str, str]:
    """The current vault's content, decrypted once per process."""
    return _open(str(vault_path()), passphrase())


def secret(key: str) -> str:
    """The one way deploys read a secret. A missing key is a clear error."""
    data = current()
    if key not in data:
        raise VaultError(f"{vault_path()}: no secret {key!r}; add it with `python -m fleet.vault set {key}`")
    return data[key]


# --- SSH host keys ---------------------------------------------------------------------------

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

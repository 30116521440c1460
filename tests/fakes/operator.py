"""The operator's machine, for tests of the commands that talk to a vendor's API: a copy of the
repository's data with a few settings added, and a vault of test secrets selected through the
environment (no proxy, nothing else inherited). Tests only.

    root = copy_repo(tmp_path, 'edge_account_id = "0123456789abcdef0123456789abcdef"')
    vault = use_vault(tmp_path / "x.vault", "passphrase", {"key": "value"}, monkeypatch, CLEAN_ENV)
"""

from __future__ import annotations

import shutil
from pathlib import Path

from fleet.converge.vault import KdfParams, Vault

REPO = Path(__file__).resolve().parents[2]
PROXIES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


def copy_repo(tmp_path: Path, all_py: str) -> Path:
    """inventory.py and group_data/ under tmp_path/repo, `all_py` appended to group_data/all.py."""
    root = tmp_path / "repo"
    shutil.copytree(REPO / "group_data", root / "group_data", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "inventory.py", root / "inventory.py")
    with open(root / "group_data" / "all.py", "a") as out:
        out.write(f"\n{all_py}\n")
    return root


def use_vault(path: Path, passphrase: str, values: dict[str, str], monkeypatch, clean_env=()) -> Vault:
    """A vault holding `values` (cheap KDF), selected by FLEET_VAULT; `clean_env` and the proxy
    variables unset, so requests go to 127.0.0.1 directly."""
    for var in (*clean_env, *PROXIES):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    vault = Vault(path, passphrase)
    vault.save(values, KdfParams(n=2**14))
    monkeypatch.setenv("FLEET_VAULT", str(path))
    monkeypatch.setenv("FLEET_VAULT_PASSPHRASE", passphrase)
    return vault

"""docs/architecture.md's "Add a component" walk-through, followed literally.

The repository is copied to a temporary directory; the walk-through's code blocks become
deploys/hello.py and tests/specs/test_hello.py, its template and data lines are written
where it says, and nothing else is edited. A Python process in the copy then shows the new
component picked up by site.py's order, validation, the secrets registry, spec selection
and the settings reference.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
GUIDE = REPO / "docs" / "architecture.md"
IGNORE = shutil.ignore_patterns(".git", ".venv", ".state", "__pycache__", "*.egg-info", ".pytest_cache")

PROBE = r'''
import json, runpy, sys
from pathlib import Path
sys.path[:0] = [".", "tests"]
from fleet.commands import docs
from fleet.converge import component as registry
from fleet.converge.render import render
from fleet.preflight.inventory import FleetConfigError, check_vault, read_inventory_data, select_vault
from fleet.preflight.model import build_fleet, load_fleet, load_group_data
from fleet.preflight.validate import InventoryError, problems
from pyinfra.context import ctx_host
from specs.selection import spec_hosts

hosts, test_fleet = read_inventory_data("inventory.py")
for entry in hosts.values():  # an admin key, so only the new component's rules speak
    entry["base_admin_ssh_keys"] = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAdminKeyForTheProbe probe"]
all_data, group_data = load_group_data(Path("group_data"))
group_data["llm"]["ollama_sha256"] = {"ollama-linux-arm64.tar.zst": "ab" * 32}
all_data["apps_releases"] = {app: {"image": f"ghcr.io/blackroad/{app}@sha256:" + "ab" * 32} for app in all_data["apps_definitions"]}
group_data["monitoring"]["grafana_apt"] = {**registry.component("grafana").defaults["grafana_apt"], "key_sha256": "ab" * 32}
fleet = build_fleet(hosts, all_data, group_data)

# site.py, run for the monitoring host with each deploy replaced by a recorder
calls = []
for c in registry.components():
    object.__setattr__(c, "deploy", (lambda name: lambda: calls.append(name))(c.name))
class Data(dict):
    __getattr__ = dict.__getitem__
class Host:
    name = "pi400-delta"
    groups = fleet.hosts["pi400-delta"].groups
    data = Data(fleet.hosts["pi400-delta"].data)
    def loop(self, items):  # pyinfra's Host.loop, without its operation bookkeeping
        return iter(items)
with ctx_host.use(Host()):
    runpy.run_path("deploys/site.py")

group_data["monitoring"]["hello_greeting"] = ""
refused = [str(p) for p in problems(build_fleet(hosts, all_data, group_data)) if "hello" in p.key]

select_vault(Path("."), test_fleet, "test")
try:
    check_vault(fleet)
    vault = []
except InventoryError as exc:
    vault = [str(p) for p in exc.problems]

print(json.dumps({
    "repo": str(registry.REPO),
    "order": [c.name for c in registry.components()],
    "site_calls_on_pi400_delta": calls,
    "greeting": fleet.hosts["pi400-delta"].data["hello_greeting"],
    "problems_with_data_as_is": [str(p) for p in problems(fleet)],
    "problems_with_an_empty_greeting": refused,
    "vault_problems": vault,
    "secret_files": {n: [s.path for s in registry.secret_files(n, h.groups, h.data)] for n, h in fleet.hosts.items()},
    "spec_hosts": spec_hosts("tests/specs/test_hello.py", fleet.hosts),
    "rendered": render("etc/hello.j2", "hello", greeting="hi"),
    "settings": "`hello_greeting`" in docs.render(),
}))
'''


def walkthrough() -> dict[str, str]:
    """The code blocks and one-line files of the guide's "Add a component" section."""
    text = GUIDE.read_text()
    section = text[text.index("## Add a component"):]
    section = section[:section.index("\n## ", 5)]
    blocks = [re.sub(r"^   ", "", b, flags=re.M) for b in re.findall(r"```python\n(.*?)```", section, re.S)]
    template = re.search(r"`templates/hello/etc/hello\.j2` holding `(.*?)`", section).group(1)
    data = re.search(r"\(`(hello_greeting = .*?)` in `group_data/monitoring\.py`\)", section).group(1)
    return {"deploys/hello.py": blocks[0], "tests/specs/test_hello.py": blocks[1],
            "templates/hello/etc/hello.j2": template + "\n", "data": data}


def test_a_new_component_is_picked_up_everywhere_without_other_edits(tmp_path):
    steps = walkthrough()
    copy = tmp_path / "repo"
    shutil.copytree(REPO, copy, ignore=IGNORE)
    before = {p.relative_to(copy): p.read_bytes() for p in copy.rglob("*") if p.is_file()}

    for path in ("deploys/hello.py", "tests/specs/test_hello.py", "templates/hello/etc/hello.j2"):
        (copy / path).parent.mkdir(parents=True, exist_ok=True)
        (copy / path).write_text(steps[path])
    with open(copy / "group_data" / "monitoring.py", "a") as f:
        f.write(f"\n{steps['data']}\n")

    after = {p.relative_to(copy): p.read_bytes() for p in copy.rglob("*") if p.is_file()}
    edited = sorted(str(p) for p in after if before.get(p) != after[p])
    assert edited == ["deploys/hello.py", "group_data/monitoring.py", "templates/hello/etc/hello.j2",
                      "tests/specs/test_hello.py"]

    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLEET_", "PYTEST"))}
    env["PYTHONPATH"] = str(copy)
    proc = subprocess.run([sys.executable, "-c", PROBE], cwd=copy, env=env, text=True,
                          capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = json.loads(proc.stdout)

    assert seen["repo"] == str(copy)  # the copy's code ran, not this checkout's
    order = seen["order"]
    assert order.index("docker") < order.index("hello") < order.index("cloudflared")
    # site.py ran it on the monitoring host, in registry order
    assert "hello" in seen["site_calls_on_pi400_delta"]
    assert seen["site_calls_on_pi400_delta"] == [c for c in order if c in seen["site_calls_on_pi400_delta"]]
    assert seen["greeting"] == "hi"  # the data line beats the default
    assert seen["problems_with_data_as_is"] == []
    assert seen["problems_with_an_empty_greeting"] == [
        "pi400-delta: hello_greeting: is empty. Fix: write a greeting in group data."]
    assert "/etc/hello.token" in seen["secret_files"]["pi400-delta"]
    assert all("/etc/hello.token" not in files for host, files in seen["secret_files"].items()
               if host != "pi400-delta")
    assert any("pi400-delta: vault['hello_token']: is missing" in p for p in seen["vault_problems"])
    assert seen["spec_hosts"] == ["pi400-delta"]
    assert seen["rendered"].endswith("hi\n") and "deploys/hello.py" in seen["rendered"]
    assert seen["settings"] is True

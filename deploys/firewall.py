"""Each host's firewall from the service graph: nftables input rules on the tailnet address accept each service port only from its clients' tailnet addresses; loopback, established traffic and the LAN's SSH stay open, any other TCP to any of the host's addresses is dropped, and the converge's own SSH connection can never be cut.

The tailnet policy (make tailnet-plan / tailnet-apply) is the first wall; this is the
second, on every host, from the same graph (fleet/policy/graph.py): a compromised node, or
a policy edited in the admin console, still cannot reach a database, exporter or admin UI
the graph does not give it. For a service whose clients include "admins", devices in
`firewall_admin_sources` are accepted too, but never a fleet host's own address (the
tailnet policy decides which devices those are).

The rules are one nftables table of the fleet's own (`inet fleet_firewall`), written to
/etc/fleet/firewall.nft, checked with `nft -c` before it replaces the live file, and loaded
in one transaction by fleet-firewall.service (at boot, and reloaded when the file changed
after the last load: crash-safe, fleet.converge.daemons). Debian's nftables.service is not
used: its /etc/nftables.conf flushes the whole ruleset, Docker's and tailscaled's tables
with it. Docker's own chains keep working: containers are published on loopback or the
tailnet address. Of forwarded traffic, this table looks only at connections Docker DNATed
to a published container: those to the tailnet address get the same rules as input, any
other is dropped; containers' own connections are not its business.

The connection the converge itself uses (the address SSH_CONNECTION names) is accepted on
the SSH port before any other rule, and `firewall_extra_rules` come after the fleet's own,
so no rule in data can lock the operator out of the run that applies it.
"""

from __future__ import annotations

import ipaddress
from io import StringIO

from pyinfra import host
from pyinfra.api import FactBase, StringCommand, deploy, operation
from pyinfra.operations import apt, files

from fleet.converge.component import Component, Problem
from fleet.converge.daemons import keep_running
from fleet.converge.ops import validated_file
from fleet.converge.render import render
from fleet.converge.services import TAILNET_RANGE
from fleet.policy.firewall import graph_of, ruleset

DEFAULTS = {
    # Whether the host gets the firewall.
    "firewall_enabled": True,
    # Where admins' devices are (IPv4 networks within the tailnet, 100.64.0.0/10): a service
    # whose clients include "admins" accepts them, but never a fleet host's address. The
    # tailnet policy says which devices of the tailnet are admins', so the default is the
    # whole tailnet range.
    "firewall_admin_sources": ["100.64.0.0/10"],
    # Tailnet addresses of the machines the converge and `make verify` run from (IPv4, e.g.
    # your laptop's pinned tailnet address): they reach every service on the tailnet address,
    # as the specs need. Empty: only the admin path and the graph's clients. Both lists are
    # refused outside 100.64.0.0/10: a LAN source could reach the tailnet address only by
    # routing to it through the host's LAN address, around the tailnet policy.
    "firewall_operator_sources": [],
    # Keep SSH open on the LAN address (the way in while the tailnet is down). Off, SSH there
    # is dropped like any other TCP to the LAN address (the running converge's own excepted).
    "firewall_lan_ssh": True,
    # Further nftables rules for the input chain, after the fleet's own accepts and before
    # the final drop (e.g. "ip saddr 100.100.0.50 tcp dport 9100 accept").
    "firewall_extra_rules": [],
}

RULES = "/etc/fleet/firewall.nft"
UNIT = "fleet-firewall.service"
UNIT_FILE = f"/etc/systemd/system/{UNIT}"
TABLE = "inet fleet_firewall"


class SshSource(FactBase):
    """The address the converge's SSH connection comes from (SSH_CONNECTION), or None.
    Read without sudo: sudo resets the environment."""

    def command(self) -> str:
        return 'echo "${SSH_CONNECTION%% *}"'

    def process(self, output):
        text = "".join(output).strip()
        try:
            return str(ipaddress.IPv4Address(text))
        except ValueError:
            return None


class TableLoaded(FactBase):
    """Whether the fleet's nftables table is in the kernel."""

    def command(self) -> str:
        return f"nft list table {TABLE} >/dev/null 2>&1 && echo yes || echo no"

    def process(self, output):
        return "".join(output).strip() == "yes"


@operation()
def table_loaded():
    """The fleet's table is loaded (someone may have flushed the ruleset by hand)."""
    if host.get_fact(TableLoaded):
        host.noop(f"table {TABLE} is loaded")
        return
    yield StringCommand(f"systemctl reload-or-restart {UNIT}")


@deploy("Firewall", data_defaults=DEFAULTS)
def firewall():
    name = host.name
    source = host.get_fact(SshSource, _sudo=False)
    context = ruleset(name, graph_of(host.inventory), [source] if source else [])
    apt.packages(name="Install nftables", packages=["nftables"], no_recommends=True)
    files.directory(name="Create /etc/fleet", path="/etc/fleet", user="root", group="root", mode="755")
    rules = validated_file(name="Install the firewall's rules (checked with nft -c)", dest=RULES, mode="600",
                           content=render("etc/fleet/firewall.nft.j2", "firewall", **context),
                           validate="nft -c -f {path}")
    unit = files.put(name="Install fleet-firewall.service", dest=UNIT_FILE, user="root", group="root", mode="644",
                     src=StringIO(render("etc/systemd/system/fleet-firewall.service.j2", "firewall", rules=RULES)))
    keep_running("the firewall", UNIT, inputs=[UNIT_FILE], why="for its new unit", changed=(unit,), unit_files=True)
    keep_running("the firewall", UNIT, inputs=[RULES], why="for its new rules", changed=(rules,), reload=True)
    table_loaded(name="Load the firewall's table if it is missing")


# --- validation ----------------------------------------------------------------------------------

def check_settings(fleet, hosts) -> list[Problem]:
    problems = []
    for h in hosts:
        for key in ("firewall_admin_sources", "firewall_operator_sources"):
            for value in h.data.get(key) or []:
                try:
                    network = ipaddress.IPv4Network(str(value), strict=False)
                except ValueError:
                    problems.append(Problem(h.name, key, f"{value!r} is not an IPv4 address or network.",
                                            "write it like '100.64.0.0/10' or '100.100.0.50'."))
                    continue
                # Their rules accept connections to the tailnet address. A source outside the
                # tailnet reaches that address only around Tailscale (a LAN machine routing to it
                # through the host's LAN address), where no tailnet policy applies: '0.0.0.0/0'
                # would open every service to the whole LAN.
                if not network.subnet_of(TAILNET_RANGE):
                    problems.append(Problem(h.name, key, f"{value!r} is outside the tailnet ({TAILNET_RANGE}): "
                                            "its rules accept connections to the tailnet address, which a "
                                            "source outside the tailnet reaches only around Tailscale.",
                                            f"use tailnet addresses (within {TAILNET_RANGE}), e.g. your "
                                            "machine's pinned tailnet address."))
        for i, rule in enumerate(h.data.get("firewall_extra_rules") or []):
            if not isinstance(rule, str) or any(c in rule for c in "\n;{}"):
                problems.append(Problem(h.name, f"firewall_extra_rules[{i}]", f"{rule!r} is not one nftables rule.",
                                        "write one rule per entry, e.g. 'ip saddr 100.100.0.50 tcp dport 9100 accept'."))
    return problems


COMPONENT = Component(
    name="firewall",
    deploy=firewall,
    defaults=DEFAULTS,
    when=lambda data: bool(data.get("firewall_enabled")),
    rules=(check_settings,),
    after=("base", "tailscale"),
)

"""What a host's firewall accepts, from the service graph (the firewall deploy renders it).

    ruleset(name, graph_of(host.inventory), guard_sources)   # in deploys/firewall.py

The graph is built from pyinfra's inventory (every host, even with --limit) once per run.
"""

from __future__ import annotations

from functools import lru_cache

from fleet.converge.services import PYINFRA_FILE_GROUP
from fleet.policy.graph import ServiceGraph
from fleet.preflight.model import Fleet, Host


def fleet_model(inventory) -> Fleet:
    """The fleet model (fleet.preflight.model) of pyinfra's inventory."""
    hosts = {h.name: Host(h.name, tuple(g for g in h.groups if g != PYINFRA_FILE_GROUP), h.data.dict())
             for h in inventory}
    first = next(iter(hosts.values()))
    return Fleet(hosts=hosts, all_data=first.data, group_data={})


@lru_cache(maxsize=4)
def graph_of(inventory) -> ServiceGraph:
    return ServiceGraph(fleet_model(inventory))


def _address_key(address: str) -> tuple[int, ...]:
    return tuple(int(p) for p in address.split("."))


def ruleset(name: str, graph: ServiceGraph, guard_sources: list[str], data=None) -> dict:
    """What templates/firewall/etc/fleet/firewall.nft.j2 needs for host `name`: one rule per
    service it serves on the tailnet, with its clients' addresses, whether admins' devices
    are accepted, and who they are; the services it serves on its LAN address; plus the guard
    (the converge's own SSH source) and the data's operator sources and extra rules (from
    `data`, default: the host's). Everything else, to any address of the host but loopback, is
    dropped."""
    fleet = graph.fleet
    h = fleet.hosts[name]
    data = h.data if data is None else data
    services = fleet.services
    rules = []
    lan = []
    for service in services.on(name):
        if "lan" in services.scopes(service) and (service != "ssh" or data.get("firewall_lan_ssh")):
            lan.append({"service": service, "port": services.port(service)})
        if "tailnet" not in services.scopes(service):
            continue
        clients = graph.clients_of(service, name)
        rules.append({
            "service": service,
            "port": services.port(service),
            "sources": graph.tailnet_sources(service, name),
            "admins": graph.admits_admins(service, name) and bool(data.get("firewall_admin_sources")),
            # who, not why: the reasons name data (a role, a domain) that can change without
            # changing who may connect, and the rules must not change with them
            "why": ", ".join(sorted(clients)) or "no client: dropped",
        })
    return {
        "tailnet": h.tailnet_address,
        "lan": h.lan_address,
        "ssh_port": services.port("ssh"),
        "fleet_hosts": sorted({x.tailnet_address for x in fleet.hosts.values()}, key=_address_key),
        "admin_sources": list(data.get("firewall_admin_sources") or []),
        "operator_sources": list(data.get("firewall_operator_sources") or []),
        "guard_sources": guard_sources,
        "services": rules,
        # what the host serves on its LAN address (the port map's `lan` binds: SSH, unless
        # firewall_lan_ssh is off), open to the LAN; any other TCP there is dropped
        "lan_services": lan,
        "extra_rules": list(data.get("firewall_extra_rules") or []),
    }

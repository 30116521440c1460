"""The service graph: every (client, server host, service) flow the fleet uses, and why.

A flow is either declared or derived, never both:

  declared  the `clients` of a service in the port map (fleet_services, group_data/all.py):
            group names, "all", host names, or "admins" (the people listed in
            tailnet_policy_admins, from their own devices over the tailnet)
  derived   implied by another fact, so data never repeats it (validation says so when it does):
            Prometheus scrapes every service with `metrics` and alerts every Alertmanager;
            the health prober probes every service with `probe`; a domain's tunnel host
            reaches its service on another host (fleet_domains); postgres_roles / redis_users
            name their clients; the dead man's switch reads each prober's node exporter;
            every host's journal goes to journal-remote; backups go to the repository host
            over ssh; Grafana queries Prometheus

    graph = ServiceGraph(fleet)
    graph.flows()                                    # [Flow(client, server, service, why), ...]
    graph.tailnet_sources("postgres", "pi5-gamma")   # the clients' tailnet addresses
    graph.admits_admins("ssh", "pi5-gamma")          # True

A flow crosses the tailnet unless client and server are one host and the service binds
loopback (the rule ServiceMap.reach follows). `tailnet_sources` is what a host firewall
asks: which fleet hosts' tailnet addresses may reach service S on host H.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterator

from fleet.converge.component import Problem
from fleet.converge.services import Unreachable
from fleet.preflight.model import Fleet

ADMINS = "admins"
ALL = "all"
DECLARED = "declared in clients"
SSH_MODES = ("plain", "tailscale")
LOGIN = re.compile(r"^[^@\s]+@[^@\s]+\Z")


@dataclass(frozen=True)
class Flow:
    client: str  # a host name, or ADMINS
    server: str
    service: str
    why: tuple[str, ...]  # DECLARED and/or the facts it is derived from

    @property
    def derived(self) -> tuple[str, ...]:
        return tuple(w for w in self.why if w != DECLARED)


def _runs(fleet: Fleet, name: str) -> list[str]:
    return [h.name for h in fleet.hosts.values() if h.runs(name)]


def client_hosts(fleet: Fleet, client: str) -> list[str]:
    """The hosts (or [ADMINS]) a `clients` entry names."""
    if client == ADMINS:
        return [ADMINS]
    if client == ALL:
        return list(fleet.hosts)
    if client in fleet.hosts:
        return [client]
    return [h.name for h in fleet.hosts.values() if client in h.groups]


# --- where flows come from ------------------------------------------------------------------

Edge = tuple[str, str, str, str]  # client, server, service, why


def declared(fleet: Fleet) -> Iterator[Edge]:
    services = fleet.services
    for name, svc in services.services.items():
        clients = svc.get("clients")
        if not isinstance(clients, list):
            continue
        for server in services.hosts_running(name):
            for entry in clients:
                for client in client_hosts(fleet, str(entry)):
                    yield client, server, name, DECLARED


def scraped(fleet: Fleet) -> Iterator[Edge]:
    for scraper in _runs(fleet, "prometheus"):
        for service, host, _, _ in fleet.services.scrape_targets():
            yield scraper, host, service, "Prometheus scrapes its metrics"


def alerted(fleet: Fleet) -> Iterator[Edge]:
    """Prometheus sends its alerts to every Alertmanager (deploys/prometheus.py)."""
    if "alertmanager" in fleet.services.services:
        for sender in _runs(fleet, "prometheus"):
            for host in fleet.services.hosts_running("alertmanager"):
                yield sender, host, "alertmanager", "Prometheus sends it alerts"


def probed(fleet: Fleet) -> Iterator[Edge]:
    for prober in _runs(fleet, "healthcheck"):
        for service, host, _, _ in fleet.services.probe_targets(prober):
            yield prober, host, service, "the health prober probes it"


def routed(fleet: Fleet) -> Iterator[Edge]:
    services = fleet.services
    for domain, route in fleet.domains.items():
        tunnel, host, service = route.get("tunnel"), route.get("host"), route.get("service")
        if tunnel in fleet.hosts and host in fleet.hosts and service in services.services \
                and services.runs(service, host):
            yield tunnel, host, service, f"{domain} is routed through {tunnel}'s tunnel"


def _role_clients(fleet: Fleet, service: str, key: str) -> Iterator[Edge]:
    for server in fleet.services.hosts_running(service) if service in fleet.services.services else ():
        for name, spec in (fleet.hosts[server].data.get(key) or {}).items():
            for entry in spec.get("clients", ()) if isinstance(spec, dict) else ():
                for client in client_hosts(fleet, entry):
                    if client != ADMINS:
                        yield client, server, service, f"{key}[{name!r}] names it"


def database_roles(fleet: Fleet) -> Iterator[Edge]:
    yield from _role_clients(fleet, "postgres", "postgres_roles")
    yield from _role_clients(fleet, "redis", "redis_users")


def deadman_reads(fleet: Fleet) -> Iterator[Edge]:
    from deploys import deadman

    for switch in _runs(fleet, "deadman"):
        for prober in deadman.probers(fleet.services):
            yield switch, prober, deadman.READ_FROM, "the dead man's switch reads the prober's metrics"


def journal_uploads(fleet: Fleet) -> Iterator[Edge]:
    from deploys import journal

    receivers = journal.receivers(fleet.services)
    for sender in _runs(fleet, "journal"):
        if receivers and sender not in receivers:
            yield sender, receivers[0], "journal-remote", "journal-upload sends the journal"


def backups(fleet: Fleet) -> Iterator[Edge]:
    from deploys import backup

    repos = backup.repository_hosts(fleet.services)
    for host in _runs(fleet, "backup"):
        if repos and host != repos[0]:
            yield host, repos[0], "ssh", "backups go to the repository host over ssh"


def grafana_queries(fleet: Fleet) -> Iterator[Edge]:
    from deploys import grafana

    for host in _runs(fleet, "grafana"):
        yield host, grafana.prometheus_server(host, fleet.services), "prometheus", "Grafana queries it"


DERIVED = (scraped, alerted, probed, routed, database_roles, deadman_reads, journal_uploads, backups, grafana_queries)


# --- the graph ------------------------------------------------------------------------------

class ServiceGraph:
    def __init__(self, fleet: Fleet):
        self.fleet = fleet
        self.services = fleet.services
        self.errors: list[str] = []  # sources that could not be read (validation reports them)
        whys: dict[tuple[str, str, str], list[str]] = {}
        for source in (declared, *DERIVED):
            try:
                edges = list(source(fleet))
            except (KeyError, TypeError, ValueError, AttributeError, Unreachable) as exc:
                self.errors.append(f"{source.__name__}: {type(exc).__name__}: {exc}")
                continue
            for client, server, service, why in edges:
                reasons = whys.setdefault((client, server, service), [])
                if why not in reasons:
                    reasons.append(why)
        self._flows = [Flow(c, s, svc, tuple(w)) for (c, s, svc), w in sorted(whys.items())]
        self._by_target: dict[tuple[str, str], list[Flow]] = {}
        for f in self._flows:
            self._by_target.setdefault((f.service, f.server), []).append(f)
        self._tailnet_flows: list[Flow] = []
        self._tailnet_index: dict[tuple[str, str], list[Flow]] | None = None

    def flows(self) -> list[Flow]:
        return list(self._flows)

    def route(self, flow: Flow) -> str:
        """"loopback", "tailnet", or "" when the client cannot reach the service where it binds."""
        scopes = self.services.scopes(flow.service)
        if flow.client == flow.server and "loopback" in scopes:
            return "loopback"
        return "tailnet" if "tailnet" in scopes else ""

    def _tailnet(self) -> dict[tuple[str, str], list[Flow]]:
        """The flows that cross the tailnet, by (service, server). Routed on the first question,
        not in __init__, so that a flow whose service the port map lacks raises where it is
        asked, as it did before; then kept: the graph does not change. A converge asks for
        every service of every host (the firewall's ruleset): each question scanned and routed
        every flow again: ~630 routes for each host of a 10-host test fleet, more as it grows."""
        if self._tailnet_index is None:
            flows = [f for f in self._flows if self.route(f) == "tailnet"]
            index: dict[tuple[str, str], list[Flow]] = {}
            for f in flows:
                index.setdefault((f.service, f.server), []).append(f)
            self._tailnet_flows, self._tailnet_index = flows, index
        return self._tailnet_index

    def tailnet_flows(self) -> list[Flow]:
        self._tailnet()
        return list(self._tailnet_flows)

    def clients_of(self, service: str, host: str) -> dict[str, tuple[str, ...]]:
        """Every client of `service` on `host` (host names, ADMINS) and why."""
        return {f.client: f.why for f in self._by_target.get((service, host), ())}

    def tailnet_sources(self, service: str, host: str) -> list[str]:
        """The tailnet addresses of the fleet hosts that may reach `service` on `host` over
        the tailnet (the host itself included when it does). Admins' devices are not fleet
        hosts: ask admits_admins."""
        self.services.service(service)  # an unknown service is an error, not "nobody"
        return sorted({self.fleet.hosts[f.client].tailnet_address for f in self._tailnet().get((service, host), ())
                       if f.client != ADMINS},
                      key=lambda a: tuple(int(p) for p in a.split(".")))

    def admits_admins(self, service: str, host: str) -> bool:
        return any(f.client == ADMINS for f in self._tailnet().get((service, host), ()))


# --- validation -----------------------------------------------------------------------------

def _clients_shape(fleet: Fleet) -> list[Problem]:
    problems = []
    known = set(fleet.known_groups) | set(fleet.hosts) | {ADMINS, ALL}
    for name, svc in fleet.services.services.items():
        key = f"fleet_services[{name!r}].clients"
        clients = svc.get("clients")
        if clients is None:
            problems.append(Problem("all", key, "is missing: every service names its clients.",
                                    "add 'clients': groups, host names or 'admins', or [] when only flows "
                                    "derived from other facts reach it (docs/tailnet-policy.md)."))
        elif not isinstance(clients, list) or not all(isinstance(c, str) for c in clients):
            problems.append(Problem("all", key, f"{clients!r} is not a list of names.",
                                    "write it like ['agents', 'gateway', 'admins']."))
        else:
            problems += [Problem("all", key, f"{c!r} is not a group, a host or 'admins'.",
                                 f"use one of {', '.join(sorted(known))}.") for c in clients if c not in known]
    return problems


def _declared_problems(fleet: Fleet, graph: ServiceGraph) -> list[Problem]:
    """Declared clients that cannot reach the service, or that repeat a derived flow."""
    problems = []
    by_key = {(f.client, f.server, f.service): f for f in graph.flows()}
    for name, svc in fleet.services.services.items():
        key = f"fleet_services[{name!r}].clients"
        running = fleet.services.hosts_running(name)
        for entry in svc.get("clients") or ():
            flows = [by_key[(c, s, name)] for c in client_hosts(fleet, entry) for s in running
                     if (c, s, name) in by_key]
            blocked = sorted({f"{f.client} -> {f.server}" for f in flows if not graph.route(f)})
            if blocked:
                problems.append(Problem(
                    "all", key, f"{entry!r} cannot reach {name} ({', '.join(blocked)}): it binds "
                    f"{', '.join(fleet.services.scopes(name)) or 'nothing'}, not the tailnet.",
                    f"bind {name} on the tailnet, or remove {entry!r} from its clients."))
            if flows and all(f.derived for f in flows):
                whys = sorted({w for f in flows for w in f.derived})
                problems.append(Problem(
                    "all", key, f"{entry!r} is already a client of {name}, derived from other facts "
                    f"({'; '.join(whys)}).",
                    f"remove {entry!r} from its clients: the flow follows from those facts."))
    return problems


def _policy_settings(fleet: Fleet, graph: ServiceGraph) -> list[Problem]:
    data = fleet.all_data
    problems = []
    for key in ("tailnet_policy_admins", "tailnet_policy_tag_owners"):
        value = data.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            problems.append(Problem("all", key, f"{value!r} is not a list of names.",
                                    "write it like ['alice@example.com'] in group_data/all.py."))
    admins = data.get("tailnet_policy_admins")
    bad = [a for a in admins if isinstance(a, str) and not LOGIN.match(a)] if isinstance(admins, list) else []
    if bad:
        problems.append(Problem("all", "tailnet_policy_admins", f"{', '.join(map(repr, bad))} is not a Tailscale "
                                "login (user@domain).", "use the login shown in the admin console's Users page."))
    tailnet = data.get("tailnet_policy_tailnet", "-")
    if not isinstance(tailnet, str) or not re.fullmatch(r"[^\s/?#%]+", tailnet):  # one segment of the API's URL
        problems.append(Problem("all", "tailnet_policy_tailnet", f"{tailnet!r} is not a tailnet name.",
                                "use the tailnet's name (admin console, Settings, General), or '-' for the "
                                "API key's own tailnet."))
    mode = data.get("tailnet_policy_ssh", "plain")
    if mode not in SSH_MODES:
        problems.append(Problem("all", "tailnet_policy_ssh", f"{mode!r} is not an SSH mode.",
                                f"use one of {', '.join(SSH_MODES)}."))
    if mode == "tailscale":
        machine = sorted({f"{f.client} -> {f.server}" for f in graph.tailnet_flows()
                          if f.service == "ssh" and f.client != ADMINS})
        if machine:
            problems.append(Problem(
                "all", "tailnet_policy_ssh", f"is 'tailscale', but hosts reach sshd over the tailnet "
                f"({', '.join(machine)}); Tailscale SSH answers port 22 there instead of sshd.",
                "keep 'plain' (admins use sshd with their keys)."))
    return problems


def check_service_graph(fleet: Fleet) -> list[Problem]:
    """The port map's `clients`, the flows derived from other facts, the policy settings."""
    problems = _clients_shape(fleet)
    if problems:
        return problems
    graph = ServiceGraph(fleet)
    problems += [Problem("all", "fleet_services", f"the service graph cannot be derived ({e}).",
                         "correct the data that message names.") for e in graph.errors]
    return problems + _declared_problems(fleet, graph) + _policy_settings(fleet, graph)

"""The service graph (fleet.policy.graph): declared clients, flows derived from the other facts
(read from the data, never copied here), the firewall's question, and validation."""

from __future__ import annotations

import pytest

from fleet.converge.services import Unreachable
from fleet.policy.graph import ADMINS, DECLARED, ServiceGraph, check_service_graph


def hosts_in(fleet, group: str) -> set[str]:
    return {h.name for h in fleet.hosts.values() if group in h.groups}


def running(fleet, component: str) -> set[str]:
    return {h.name for h in fleet.hosts.values() if h.runs(component)}


def pairs(graph: ServiceGraph, service: str) -> set[tuple[str, str]]:
    return {(f.client, f.server) for f in graph.flows() if f.service == service}


def messages(fleet) -> list[str]:
    return [str(p) for p in check_service_graph(fleet)]


def test_the_real_data_is_a_valid_graph(data):
    assert messages(data.fleet()) == []


def test_every_service_names_its_clients(data):
    """Adding a service forces a decision about who reaches it."""
    assert all("clients" in svc for svc in data.all_data["fleet_services"].values())
    del data.all_data["fleet_services"]["agents"]["clients"]
    assert messages(data.fleet()) == [
        "all: fleet_services['agents'].clients: is missing: every service names its clients. Fix: add 'clients': "
        "groups, host names or 'admins', or [] when only flows derived from other facts reach it "
        "(docs/tailnet-policy.md)."]


def test_prometheus_scrapes_every_metrics_service(data):
    fleet = data.fleet()
    graph = ServiceGraph(fleet)
    for service, host, _, _ in fleet.services.scrape_targets():
        for scraper in running(fleet, "prometheus"):
            assert (scraper, host) in pairs(graph, service)
    assert ("pi400-delta", "pi5-gamma") in pairs(graph, "postgres-exporter")
    for sender in running(fleet, "prometheus"):
        for host in fleet.services.hosts_running("alertmanager"):
            assert "Prometheus sends it alerts" in graph.clients_of("alertmanager", host)[sender]


def test_the_prober_probes_every_probe_service(data):
    fleet = data.fleet()
    graph = ServiceGraph(fleet)
    probers = running(fleet, "healthcheck")
    assert probers
    for prober in probers:
        for service, host, _, _ in fleet.services.probe_targets(prober):
            flow = {f.server: f for f in graph.flows() if f.service == service and f.client == prober}[host]
            assert "the health prober probes it" in flow.why


def test_database_clients_come_from_roles_and_users(data):
    fleet = data.fleet()
    graph = ServiceGraph(fleet)
    database = data.group_data["database"]
    for service, key in (("postgres", "postgres_roles"), ("redis", "redis_users")):
        for server in fleet.services.hosts_running(service):
            for spec in database[key].values():
                for group in spec["clients"]:
                    for client in hosts_in(fleet, group):
                        assert (client, server) in pairs(graph, service)
    assert "postgres_roles['api'] names it" in graph.clients_of("postgres", "pi5-gamma")["pi5-alpha"]


def test_a_routed_domain_makes_its_tunnel_host_a_client(data):
    """agents.blackroad.io: pi5-alpha's tunnel reaches pi5-beta's agents: derived, not declared."""
    graph = ServiceGraph(data.fleet())
    assert graph.clients_of("agents", "pi5-beta") == {
        "pi5-alpha": ("agents.blackroad.io is routed through pi5-alpha's tunnel",)}
    data.all_data["fleet_domains"]["agents2.blackroad.io"] = {"host": "pi5-beta", "service": "agents",
                                                             "tunnel": "jetson-prime"}
    graph = ServiceGraph(data.fleet())
    assert set(graph.clients_of("agents", "pi5-beta")) == {"pi5-alpha", "jetson-prime"}
    assert graph.tailnet_sources("agents", "pi5-beta") == ["100.100.0.1", "100.100.0.10"]


def test_same_host_loopback_routes_are_not_tailnet_flows(data):
    graph = ServiceGraph(data.fleet())
    web = [f for f in graph.flows() if f.service == "web"]
    assert web and all(graph.route(f) == "loopback" for f in web)
    assert not [f for f in graph.tailnet_flows() if f.service in ("web", "api", "lucidia")]


def test_deadman_journal_backups_and_grafana_flows(data):
    fleet = data.fleet()
    graph = ServiceGraph(fleet)
    from deploys import backup, deadman, journal

    for switch in running(fleet, "deadman"):
        for prober in deadman.probers(fleet.services):
            assert (switch, prober) in pairs(graph, "node-exporter")
    receiver = journal.receivers(fleet.services)[0]
    assert {c for c, s in pairs(graph, "journal-remote") if s == receiver} >= running(fleet, "journal") - {receiver}
    repo = backup.repository_hosts(fleet.services)[0]
    assert {(h, repo) for h in running(fleet, "backup")} <= pairs(graph, "ssh")
    assert ("pi400-delta", "pi400-delta") in pairs(graph, "prometheus")


def test_llm_clients_are_declared_or_derived(data):
    fleet = data.fleet()
    graph = ServiceGraph(fleet)
    (llm,) = fleet.services.hosts_running("llm")
    clients = graph.clients_of("llm", llm)
    for group in ("agents", "gateway"):
        assert all(DECLARED in clients[h] for h in hosts_in(fleet, group))
    assert all(clients[h] == ("the health prober probes it",) for h in running(fleet, "healthcheck"))
    assert DECLARED in clients[ADMINS]


def test_the_firewall_question_which_addresses_may_reach_a_service(data):
    fleet = data.fleet()
    graph = ServiceGraph(fleet)
    expected = sorted({fleet.hosts[h].tailnet_address for h in hosts_in(fleet, "gateway") | running(fleet, "healthcheck")},
                      key=lambda a: tuple(map(int, a.split("."))))
    assert graph.tailnet_sources("postgres", "pi5-gamma") == expected == ["100.100.0.1", "100.100.0.5"]
    assert graph.tailnet_sources("node-exporter", "pi0-epsilon") == ["100.100.0.4", "100.100.0.5", "100.100.0.100"]
    assert graph.tailnet_sources("web", "pi5-alpha") == []  # loopback only
    assert graph.tailnet_sources("agents", "pi5-alpha") == []  # nobody routes to pi5-alpha's agents
    assert graph.admits_admins("ssh", "pi5-gamma") and not graph.admits_admins("postgres", "pi5-gamma")
    with pytest.raises(Unreachable):
        graph.tailnet_sources("nosuch", "pi5-gamma")


def test_the_firewall_questions_answer_as_a_scan_of_every_flow(data):
    """The answers come from flows indexed once by (service, server); each must be what
    scanning and routing every flow gives, for every service on every host."""
    fleet = data.fleet()
    graph = ServiceGraph(fleet)
    flows = graph.flows()
    tailnet = [f for f in flows if graph.route(f) == "tailnet"]
    assert graph.tailnet_flows() == tailnet and 0 < len(tailnet) < len(flows)
    asked = 0
    for service in fleet.services.services:
        for host in fleet.hosts:
            assert graph.clients_of(service, host) == {
                f.client: f.why for f in flows if f.service == service and f.server == host}
            assert graph.tailnet_sources(service, host) == sorted(
                {fleet.hosts[f.client].tailnet_address for f in tailnet
                 if f.service == service and f.server == host and f.client != ADMINS},
                key=lambda a: tuple(map(int, a.split("."))))
            assert graph.admits_admins(service, host) == any(
                f.client == ADMINS and f.service == service and f.server == host for f in tailnet)
            asked += bool(graph.clients_of(service, host))
    assert asked > 20
    graph.tailnet_flows().clear()  # a copy: the caller's list, not the graph's
    assert graph.tailnet_flows() == tailnet


# --- validation ------------------------------------------------------------------------------

def test_an_unknown_client_is_refused(data):
    data.all_data["fleet_services"]["llm"]["clients"] = ["agents", "gatway"]
    [msg] = messages(data.fleet())
    assert msg.startswith("all: fleet_services['llm'].clients: 'gatway' is not a group, a host or 'admins'. Fix: use one of ")


def test_a_client_that_cannot_reach_the_service_is_refused(data):
    data.all_data["fleet_services"]["api"]["clients"] = ["agents"]
    [msg] = messages(data.fleet())
    assert msg == ("all: fleet_services['api'].clients: 'agents' cannot reach api (pi5-beta -> pi5-alpha): it binds "
                   "loopback, not the tailnet. Fix: bind api on the tailnet, or remove 'agents' from its clients.")


def test_a_client_that_repeats_a_derived_flow_is_refused(data):
    data.all_data["fleet_services"]["node-exporter"]["clients"] = ["monitoring"]
    assert messages(data.fleet()) == [
        "all: fleet_services['node-exporter'].clients: 'monitoring' is already a client of node-exporter, derived "
        "from other facts (Prometheus scrapes its metrics). Fix: remove 'monitoring' from its clients: the flow "
        "follows from those facts."]


def test_a_client_partly_derived_is_kept(data):
    """pi5-alpha reaches pi5-beta's agents through the domain map, but not its own: declaring
    it adds a flow, so it is not a repetition."""
    data.all_data["fleet_services"]["agents"]["clients"] = ["pi5-alpha"]
    assert messages(data.fleet()) == []
    graph = ServiceGraph(data.fleet())
    assert graph.clients_of("agents", "pi5-alpha") == {"pi5-alpha": (DECLARED,)}


def test_tailscale_ssh_is_refused_while_hosts_reach_sshd(data):
    data.all_data["tailnet_policy_ssh"] = "tailscale"
    [msg] = messages(data.fleet())
    assert msg.startswith("all: tailnet_policy_ssh: is 'tailscale', but hosts reach sshd over the tailnet "
                          "(pi0-epsilon -> ")
    assert "pi5-gamma -> droplet-failover" in msg and "Fix: keep 'plain'" in msg


def test_policy_settings_are_checked(data):
    data.all_data.update(tailnet_policy_admins=["alice@example.com", "bob"], tailnet_policy_ssh="telnet",
                         tailnet_policy_tailnet="")
    assert messages(data.fleet()) == [
        "all: tailnet_policy_admins: 'bob' is not a Tailscale login (user@domain). Fix: use the login shown in the "
        "admin console's Users page.",
        "all: tailnet_policy_tailnet: '' is not a tailnet name. Fix: use the tailnet's name (admin console, "
        "Settings, General), or '-' for the API key's own tailnet.",
        "all: tailnet_policy_ssh: 'telnet' is not an SSH mode. Fix: use one of plain, tailscale."]


def test_graph_problems_stop_the_run_in_validation(data):
    from fleet.preflight.validate import problems

    data.all_data["fleet_services"]["llm"]["clients"] = ["nobody"]
    assert "fleet_services['llm'].clients" in [p.key for p in problems(data.fleet())]

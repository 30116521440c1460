"""cloudflared (gateway, llm and failover hosts): one tunnel per host, ingress from the maps.

The tunnel's credentials come from the vault (0600, owned by the cloudflared system user);
config.yml is generated from the domain map and port map, each hostname routed to the
service the port map names (127.0.0.1 on the tunnel's own host, the serving host's tailnet
address otherwise), the catch-all last, metrics on 127.0.0.1. It is validated with
`cloudflared tunnel ingress validate` before it replaces the live file, and the service
restarts only when its config, credentials or unit changed. No token or secret is ever
on a command line: cloudflared reads the credentials file itself.
"""

import json
from io import StringIO

import yaml
from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import apt, files

from fleet.converge import accounts, aptsource
from fleet.converge.accounts import account
from fleet.converge.aptsource import vendor_apt_source
from fleet.converge.component import HOSTNAME, Component, Problem, Problems, SecretFile
from fleet.converge.keys import secret
from fleet.converge.daemons import keep_running
from fleet.converge.ops import secret_file, validated_file
from fleet.converge.render import header, render
from fleet.converge.services import ServiceMap, Unreachable

DEFAULTS = {
    # Cloudflare's apt repository for cloudflared (deb822 source, key pinned by SHA-256).
    "cloudflared_apt": {
        "uris": "https://pkg.cloudflare.com/cloudflared",
        "suites": "any",
        "components": "main",
        "key_url": "https://pkg.cloudflare.com/cloudflare-main.gpg",
        "key_sha256": "1bd95f4082b320d541bee351560fc2765aa9f9cd8efa4c9e32135e63f252721d",
        "key_file": "cloudflare-main.gpg",
    },
    # The system user cloudflared runs as.
    "cloudflared_user": "cloudflared",
    # Where requests matching no hostname go: the catch-all rule cloudflared requires last.
    "cloudflared_catch_all_service": "http_status:404",
}

CONFIG = "/etc/cloudflared/config.yml"
UNIT = "/etc/systemd/system/cloudflared.service"
CREDENTIALS_FILE = "/etc/cloudflared/credentials.json"


def credentials_key(host: str) -> str:
    """The vault key of a host's tunnel credentials (`make edge-apply` writes it)."""
    return f"cloudflared_credentials/{host}"


def ingress_rules(name: str, data, services: ServiceMap) -> list[dict]:
    """The tunnel's ingress, in order: the domain map's hostnames it carries (each to the
    URL its service is reached at from this host), the failover wildcards where this host
    runs the maintenance page, then the catch-all (omitted only if data empties it, which
    validation then refuses)."""
    rules = [
        {"hostname": domain, "service": services.url(route["service"], server=route["host"], client=name)}
        for domain, route in sorted(data.fleet_domains.items()) if route.get("tunnel") == name
    ]
    if services.runs("maintenance", name):
        page = services.url("maintenance", server=name, client=name)
        rules += [{"hostname": domain, "service": page} for domain in data.edge_failover_domains]
    if data.cloudflared_catch_all_service:
        rules.append({"service": data.cloudflared_catch_all_service})
    return rules


def render_config(name: str, tunnel_id: str, data, services: ServiceMap) -> str:
    config = {
        "tunnel": tunnel_id,
        "credentials-file": CREDENTIALS_FILE,
        "metrics": str(services.bind("cloudflared-metrics", name, "loopback")),
        "no-autoupdate": True,
        "ingress": ingress_rules(name, data, services),
    }
    return header("cloudflared") + yaml.safe_dump(config, sort_keys=False)


@deploy("cloudflared", data_defaults=DEFAULTS)
def cloudflared():
    user = host.data.cloudflared_user
    vendor_apt_source("cloudflared", host.data.cloudflared_apt, "cloudflared", ["cloudflared"])
    apt.packages(
        name="Install cloudflared (pinned)",
        packages=[f"cloudflared={host.data.cloudflared_version}"],
    )
    account(
        name="Create the cloudflared system user",
        user=user,
        system=True,
        shell="/usr/sbin/nologin",
        home="/var/lib/cloudflared",
        create_home=False,
    )
    files.directory(
        name="Create /etc/cloudflared",
        path="/etc/cloudflared",
        user="root",
        group=user,
        mode="750",
    )
    key = credentials_key(host.name)
    credentials = secret_file(
        name="Install the tunnel credentials",
        key=key,
        dest=CREDENTIALS_FILE,
        user=user,
        group=user,
    )
    tunnel_id = json.loads(secret(key))["TunnelID"]
    config = validated_file(
        name="Render cloudflared ingress",
        content=render_config(host.name, tunnel_id, host.data, ServiceMap.of_pyinfra(host)),
        dest=CONFIG,
        validate="cloudflared tunnel --config {path} ingress validate",
        user="root",
        group=user,
        mode="640",
    )
    unit = files.put(
        name="Install the cloudflared unit",
        src=StringIO(render("etc/systemd/system/cloudflared.service.j2", "cloudflared", user=user,
                            config=CONFIG)),
        dest=UNIT,
        user="root", group="root", mode="644",
    )
    keep_running("cloudflared", "cloudflared.service", inputs=[CONFIG, CREDENTIALS_FILE, UNIT],
                 why="for its new config or credentials", changed=(config, credentials, unit), unit_files=True,
                 service="cloudflared-metrics")


def credentials(name: str, data) -> list[SecretFile]:
    user = data.get("cloudflared_user")
    return [SecretFile(credentials_key(name), CREDENTIALS_FILE, user, user)]


def check_tunnels(fleet, hosts) -> list[Problem]:
    """Each domain's tunnel is a host that runs cloudflared and can reach the service: over
    127.0.0.1 on its own host, otherwise only where the service binds the tailnet address."""
    problems = []
    runners = [h.name for h in hosts]
    for domain, route in fleet.domains.items():
        key = f"fleet_domains[{domain!r}].tunnel"
        tunnel, target, service = route.get("tunnel"), route.get("host"), route.get("service")
        if tunnel not in runners:
            problems.append(Problem(str(tunnel), key, f"{tunnel!r} is not a host that runs cloudflared.",
                                    f"use one of {', '.join(runners) or '(none: add a host to ' + ', '.join(COMPONENT.groups) + ')'}."))
            continue
        if target not in fleet.hosts or service not in fleet.services.services:
            continue  # the domain map's own check reports it
        if not fleet.services.runs(service, target):
            continue  # likewise
        try:
            fleet.services.reach(service, server=target, client=tunnel)
        except Unreachable:
            problems.append(Problem(
                tunnel, key, f"the tunnel on {tunnel} cannot reach {service!r} on {target} "
                f"(it binds {', '.join(fleet.services.scopes(service)) or 'nothing'}).",
                f"carry the domain on {target}'s own tunnel, or bind the service to the tailnet."))
    return problems


def check_catch_all(fleet, hosts) -> list[Problem]:
    return [Problem(h.name, "cloudflared_catch_all_service", "is empty, but cloudflared requires a "
                    "catch-all rule last.", "set it to e.g. 'http_status:404'.")
            for h in hosts if not h.data.get("cloudflared_catch_all_service")]


def check_failover_domains(fleet, hosts) -> list[Problem]:
    """The failover wildcards a maintenance host's tunnel answers: a list of hostnames (text
    would be read letter by letter into the ingress)."""
    found = Problems(fleet)
    for h in hosts:
        if not fleet.services.runs("maintenance", h.name):
            continue
        value = h.data.get("edge_failover_domains")
        if not isinstance(value, list) or not all(isinstance(d, str) and HOSTNAME.fullmatch(d) for d in value):
            found.add(h, "edge_failover_domains", f"{value!r} is not a list of hostnames.",
                      "write it like ['*.blackroad.io'] in group_data/all.py.")
    return found


COMPONENT = Component(
    name="cloudflared",
    deploy=cloudflared,
    defaults=DEFAULTS,
    groups=("gateway", "llm", "failover"),
    secrets=credentials,
    rules=(check_tunnels, check_catch_all, check_failover_domains, accounts.account_name("cloudflared_user"),
           aptsource.rule("cloudflared_apt", version="cloudflared_version")),
    after=("tailscale",),  # what its tunnel routes to says before=("cloudflared",)
)

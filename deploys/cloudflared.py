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
from pyinfra.operations import apt, files, server
from pyinfra.operations.util import any_changed

from fleet.aptsource import vendor_apt_source
from fleet.ops import keep_running, secret_file, validated_file
from fleet.render import header, render
from fleet.secrets import CLOUDFLARED_CREDENTIALS_FILE, cloudflared_credentials_key, secret

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


def service_url(fleet_hosts: dict, services: dict, tunnel_host: str, target: str, port: int) -> str:
    """How the tunnel on `tunnel_host` reaches `target`:`port` (the port map says where it binds)."""
    binds = next((svc["bind"] for svc in services.values() if svc["port"] == port
                  and ("all" in svc["groups"] or set(svc["groups"]) & set(fleet_hosts[target]["groups"]))), [])
    if target == tunnel_host and "loopback" in binds:
        return f"http://127.0.0.1:{port}"
    if "tailnet" in binds:
        return f"http://{fleet_hosts[target]['tailnet_address']}:{port}"
    raise ValueError(f"the tunnel on {tunnel_host} cannot reach {target}:{port} (binds {binds})")


def ingress_rules(name: str, data, fleet_hosts: dict) -> list[dict]:
    """The tunnel's ingress, in order: the domain map's hostnames it carries, the failover
    wildcards on failover hosts, then the catch-all (omitted only if data empties it, which
    validation then refuses)."""
    services = data.fleet_services
    rules = [
        {"hostname": domain, "service": service_url(fleet_hosts, services, name, route["host"], route["port"])}
        for domain, route in sorted(data.fleet_domains.items()) if route.get("tunnel") == name
    ]
    if "failover" in fleet_hosts[name]["groups"]:
        port = services["maintenance"]["port"]
        rules += [{"hostname": domain, "service": f"http://127.0.0.1:{port}"}
                  for domain in data.edge_failover_domains]
    if data.cloudflared_catch_all_service:
        rules.append({"service": data.cloudflared_catch_all_service})
    return rules


def render_config(name: str, tunnel_id: str, data, fleet_hosts: dict) -> str:
    config = {
        "tunnel": tunnel_id,
        "credentials-file": CLOUDFLARED_CREDENTIALS_FILE,
        "metrics": f"127.0.0.1:{data.fleet_services['cloudflared-metrics']['port']}",
        "no-autoupdate": True,
        "ingress": ingress_rules(name, data, fleet_hosts),
    }
    return header("cloudflared") + yaml.safe_dump(config, sort_keys=False)


def fleet_hosts_view() -> dict:
    """name -> {groups, tailnet_address} for every host in the inventory."""
    return {h.name: {"groups": list(h.groups), "tailnet_address": h.data.tailnet_address}
            for h in host.inventory}


@deploy("cloudflared", data_defaults=DEFAULTS)
def cloudflared():
    user = host.data.cloudflared_user
    vendor_apt_source("cloudflared", host.data.cloudflared_apt, "cloudflared", ["cloudflared"])
    apt.packages(
        name="Install cloudflared (pinned)",
        packages=[f"cloudflared={host.data.cloudflared_version}", "python3-yaml"],
    )
    server.user(
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
    key = cloudflared_credentials_key(host.name)
    credentials = secret_file(
        name="Install the tunnel credentials",
        key=key,
        dest=CLOUDFLARED_CREDENTIALS_FILE,
        user=user,
        group=user,
    )
    tunnel_id = json.loads(secret(key))["TunnelID"]
    config = validated_file(
        name="Render cloudflared ingress",
        content=render_config(host.name, tunnel_id, host.data, fleet_hosts_view()),
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
        mode="644",
    )
    keep_running("cloudflared", "cloudflared.service", any_changed(config, credentials, unit),
                 why="for its new config or credentials", unit_file=unit)

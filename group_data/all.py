"""Data for every host. A group file (group_data/<group>.py) overrides a key for its hosts;
inventory.py overrides per host. Keys are prefixed with the component that reads them.
"""

# --- fleet-wide maps (read by validation and by several components) ----------------------

# The port map: every service the fleet runs, its TCP port, where it binds and where it
# runs: the hosts of its `groups` ("all": every host), or, with `component`, the hosts that
# component applies to (deploys/<component>.py says which). bind: "loopback" = 127.0.0.1,
# "tailnet" = the host's tailnet address, "lan" = the host's LAN address. Nothing ever
# binds 0.0.0.0 or ::. Everything else names a service, never its port
# (fleet/converge/services.py answers where it binds and how another host reaches it).
# Monitoring reads two more keys: "metrics", the path Prometheus scrapes (or {"path": ...,
# "when": {data key: value}} for hosts whose data matches), and "probe", how the health
# prober checks it: "tcp" (connect), "ssh" (sshd's identification line, answered), "http:<path>"
# (200 expected), "postgres" (pg_isready) or "llm" (one chat completion). Only what binds the tailnet is scraped or probed.
# "clients": who else reaches it: groups, host names, "all" or "admins" (the people of
# tailnet_policy_admins, from their own devices). Only flows no other fact implies: scraping,
# probing, the domain map's tunnels, postgres_roles / redis_users, the dead man's switch,
# journal upload, backups and Grafana are derived (docs/tailnet-policy.md lists them), and
# validation refuses a client that repeats one. The tailnet policy is generated from this.
fleet_services = {
    "ssh": {"port": 22, "bind": ["lan", "tailnet"], "groups": ["all"], "probe": "ssh", "clients": ["admins"]},
    "node-exporter": {"port": 9100, "bind": ["tailnet"], "groups": ["all"], "metrics": "/metrics",
                      "probe": "http:/", "clients": []},
    "web": {"port": 3000, "bind": ["loopback"], "groups": ["gateway"], "clients": []},
    "lucidia": {"port": 3001, "bind": ["loopback"], "groups": ["gateway"], "clients": []},
    "api": {"port": 8000, "bind": ["loopback"], "groups": ["gateway"], "clients": []},
    "agents": {"port": 8001, "bind": ["tailnet"], "groups": ["agents"], "clients": []},
    "postgres": {"port": 5432, "bind": ["loopback", "tailnet"], "groups": ["database"], "probe": "postgres",
                 "clients": []},
    "postgres-exporter": {"port": 9187, "bind": ["tailnet"], "groups": ["database"], "metrics": "/metrics",
                          "probe": "http:/", "clients": []},
    "postgres-side": {"port": 5433, "bind": ["loopback"], "groups": ["database"], "clients": []},
    "postgres-drill": {"port": 5434, "bind": ["loopback"], "groups": ["database"], "clients": []},
    "redis": {"port": 6379, "bind": ["loopback", "tailnet"], "groups": ["database"], "probe": "tcp", "clients": []},
    "prometheus": {"port": 9090, "bind": ["tailnet"], "groups": ["monitoring"], "metrics": "/metrics",
                   "probe": "http:/-/healthy", "clients": ["admins"]},
    "alertmanager": {"port": 9093, "bind": ["tailnet"], "groups": ["monitoring"], "metrics": "/metrics",
                     "probe": "http:/-/healthy", "clients": ["admins"]},
    "grafana": {"port": 3000, "bind": ["tailnet"], "groups": ["monitoring"], "probe": "http:/api/health",
                "clients": ["admins"]},
    "journal-remote": {"port": 19532, "bind": ["tailnet"], "groups": ["monitoring"], "probe": "tcp", "clients": []},
    "llm": {"port": 8080, "bind": ["tailnet"], "component": "llm", "probe": "llm",
            "metrics": {"path": "/metrics", "when": {"llm_engine": "vllm"}},
            "clients": ["agents", "gateway", "admins"]},
    "maintenance": {"port": 8080, "bind": ["loopback"], "component": "maintenance", "clients": []},
    "cloudflared-metrics": {"port": 20241, "bind": ["loopback"], "component": "cloudflared", "clients": []},
}

# The domain map (the guide's "Domain Routing"): public hostname -> the host and the service
# (a name of the port map) that serve it, and the tunnel (a host running cloudflared) that
# carries it from Cloudflare.
# The tunnel reaches a service on its own host over 127.0.0.1, another host's over the
# tailnet. status.blackroad.io is a Cloudflare Worker, not a tunnel route: not here.
fleet_domains = {
    "blackroad.io": {"host": "pi5-alpha", "service": "web", "tunnel": "pi5-alpha"},
    "www.blackroad.io": {"host": "pi5-alpha", "service": "web", "tunnel": "pi5-alpha"},
    "api.blackroad.io": {"host": "pi5-alpha", "service": "api", "tunnel": "pi5-alpha"},
    "lucidia.earth": {"host": "pi5-alpha", "service": "lucidia", "tunnel": "pi5-alpha"},
    "www.lucidia.earth": {"host": "pi5-alpha", "service": "lucidia", "tunnel": "pi5-alpha"},
    "agents.blackroad.io": {"host": "pi5-beta", "service": "agents", "tunnel": "pi5-alpha"},
    "llm.blackroad.io": {"host": "jetson-prime", "service": "llm", "tunnel": "jetson-prime"},
}

# The team's apps (deploys/apps.py): the services the domain map routes to. Each runs on
# the hosts that run its port-map service; the port map says where it is served (loopback:
# only the local tunnel reaches it; tailnet: other hosts do). Every key: docs/settings.md.
apps_definitions = {
    # The site (blackroad.io).
    "web": {"service": "web", "port": 8080, "health": "/health", "memory": "256m",
            "env": {"APP_NAME": "web"}},
    # The FastAPI backend (api.blackroad.io): its PostgreSQL and Redis passwords arrive as
    # read-only files (DATABASE_PASSWORD_FILE, REDIS_PASSWORD_FILE), never in its environment.
    "api": {"service": "api", "port": 8080, "health": "/health", "memory": "512m",
            "env": {"APP_NAME": "api"},
            "secrets": {"DATABASE_PASSWORD": "postgres_password/api", "REDIS_PASSWORD": "redis_password/api"}},
    # lucidia.earth.
    "lucidia": {"service": "lucidia", "port": 8080, "health": "/health", "memory": "256m",
                "env": {"APP_NAME": "lucidia"}},
    # The agent pool (agents.blackroad.io), on every agents host.
    "agents": {"service": "agents", "port": 8080, "health": "/health", "memory": "512m",
               "env": {"APP_NAME": "agents"}},
}
# What each app runs: its image pinned by digest. Fill in each one after the app's build
# pushes it (`docker buildx imagetools inspect ghcr.io/<you>/<app>:<tag>` prints the
# digest); validation refuses an app without one. To load an image from an archive
# instead, add "archive_url" and "archive_sha256" (then the digest is the image ID).
apps_releases = {
    "web": {"image": ""},
    "api": {"image": ""},
    "lucidia": {"image": ""},
    "agents": {"image": ""},
}

# UDP ports allowed to listen on a wildcard address (0.0.0.0 / ::). Everything else must
# bind a specific address. Each entry says why it cannot.
net_udp_wildcard_allowlist = {
    # tailscaled's WireGuard port: peers reach it on whatever address NAT traversal finds,
    # so it must listen on every interface (tailscale_port below sets it).
    41641: "tailscaled WireGuard (tailscale_port)",
    # DHCP client on the Pis' LAN interface: leases arrive as broadcasts to 0.0.0.0:68.
    68: "DHCP client",
}

# --- edge: Cloudflare state, managed from the operator's machine (fleet/edge.py) ----------
# The Cloudflare account that owns the zones and tunnels (an ID, not a secret: dashboard,
# Account Home). Required by `make edge-plan` / `make edge-apply`, which refuse to run
# while it is empty.
edge_account_id = ""
# Zones (registered domains) the domain map's hostnames live in.
edge_zones = ["blackroad.io", "lucidia.earth"]
# The failover droplet's tunnel answers these while the home network is down.
edge_failover_domains = ["*.blackroad.io", "*.lucidia.earth"]
# The guide's phase-4 cleanup: Workers and KV namespaces to keep; the audit reports every
# other one and deletes it only with an explicit flag.
edge_workers_keep = [
    "blackroad-edge-gateway", "blackroad-api-gateway", "blackroad-auth", "blackroad-router",
    "lucidia-core", "cece",
]
edge_kv_keep = ["AUTH", "IDENTITY", "RATE_LIMIT", "CACHE", "BILLING", "STATE"]
# The namespace the guide's API keys live in (`python -m fleet apikey create NAME`: the key is
# printed once; only its SHA-256 is stored, as the KV key).
edge_api_keys_namespace = "AUTH"
# WAF custom rules and rate-limiting rules, per zone (Cloudflare's rulesets: each zone's
# http_request_firewall_custom and http_ratelimit entry points; `make edge-apply` writes them).
# A rule: ref (unique, starts with "fleet-": rules without it were made by hand and are kept),
# description, expression (Cloudflare's rules language), action; a rate limit also has
# ratelimit (characteristics, period, requests_per_period, mitigation_timeout; the Free plan
# allows period 10 and mitigation_timeout 10 with characteristics cf.colo.id and ip.src).
_probe_paths = ('(starts_with(http.request.uri.path, "/.env") or starts_with(http.request.uri.path, "/.git") '
                'or starts_with(http.request.uri.path, "/wp-") or http.request.uri.path contains "/phpmyadmin")')
_block_probes = {"ref": "fleet-block-probes", "description": "Block scanners' probes for files we never serve",
                 "expression": _probe_paths, "action": "block"}
edge_waf_rules = {"blackroad.io": [_block_probes], "lucidia.earth": [_block_probes]}
edge_rate_limits = {
    "blackroad.io": [{
        "ref": "fleet-api-rate", "description": "api and agents: 100 requests per 10 s per visitor",
        "expression": '(http.host in {"api.blackroad.io" "agents.blackroad.io"})', "action": "block",
        "ratelimit": {"characteristics": ["cf.colo.id", "ip.src"], "period": 10, "requests_per_period": 100,
                      "mitigation_timeout": 10},
    }],
}

# --- the setup checklist (fleet/checklist.py, `make phaseN`) -------------------------------
# "Verify blackroad.io loads something from Pi" also sends an HTTPS request to each app
# domain's public name from the operator's machine; off, the item says why (the reason).
checklist_public_https = True
checklist_public_https_reason = ""

# --- tailnet policy: generated from the service graph (docs/tailnet-policy.md) ---------------
# `make tailnet-plan` / `make tailnet-apply` write it through Tailscale's API; the API key comes
# from TAILSCALE_API_KEY or the vault's tailscale_api_key.
# The tailnet: its name (admin console, Settings, General), or "-" for the API key's own.
tailnet_policy_tailnet = "-"
# Tailscale logins of the fleet's admins: group:admins, the "admins" client of fleet_services.
tailnet_policy_admins = []
# Who may give devices the groups' tags (tagOwners).
tailnet_policy_tag_owners = ["autogroup:admin"]
# How admins reach sshd over the tailnet: "plain" (a grant to port 22; sshd checks their keys) or
# "tailscale" (Tailscale SSH rules; refused while hosts reach sshd, e.g. backups).
tailnet_policy_ssh = "plain"

# --- component versions (pinned; bump deliberately, one component at a time) -------------
tailscale_version = "1.102.4"
cloudflared_version = "2026.7.1"
docker_ce_version = "5:29.8.2-1~debian.12~bookworm"
nvidia_container_toolkit_version = "1.20.1-1"
ollama_version = "0.34.4"

# --- tailscale ---------------------------------------------------------------------------
# ACL tags each group's hosts advertise; a host advertises the union over its groups.
tailscale_tags_by_group = {
    "pis": ["tag:pi"],
    "gateway": ["tag:gateway"],
    "agents": ["tag:agents"],
    "database": ["tag:database"],
    "monitoring": ["tag:monitoring"],
    "healthcheck": ["tag:healthcheck"],
    "gpu": ["tag:gpu"],
    "llm": ["tag:llm"],
    "cloud": ["tag:cloud"],
    "failover": ["tag:failover"],
}

# --- base ----------------------------------------------------------------------------
# (every component's other settings and their defaults: docs/settings.md)
# Public SSH keys of the people who administer the fleet, installed for each host's
# ssh_user (the admin account). Required: sshd is hardened to keys only.
base_admin_ssh_keys = []

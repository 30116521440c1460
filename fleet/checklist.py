"""The guide's setup checklist as data: four phases, each item with what to converge for it
and how it is verified (`python -m fleet phase N`, `make phaseN`).

An item:
  id        p<phase>-<nn>
  text      the item as the guide words it (../shared/reference/infrastructure-bible.md,
            "Setup Checklist")
  safe      where the guide's wording is unsafe or vague, the form this project verifies
  converge  components to converge for it (FLEET_COMPONENTS), on `hosts`; "edge" as a
            component means the Cloudflare state (`python -m fleet edge apply`, which only
            adds and changes, never deletes)
  hosts     the groups (or host names) the item concerns; () means every host
  verify    one of
              ("specs", spec ids)   those specs (tests/specs, the id is the test name's
                                    prefix, e.g. ts01) on the item's hosts
              ("check", name)       fleet.commands.phase_checks.<name>
              ("manual", reason, steps)  a person does it; the phase run prints both
            an item may list several; it is done when every one passes.

A spec id, a check name or a component named here that does not exist fails a unit test
(tests/unit/test_checklist.py), so the checklist cannot drift from the code.
"""

from __future__ import annotations

PHASES = {
    1: "Foundation",
    2: "Services",
    3: "Hardening",
    4: "Cleanup",
}

ITEMS = [
    # --- Phase 1: Foundation -----------------------------------------------------------------
    {
        "id": "p1-01", "text": "Install Tailscale on all devices",
        "safe": "from Tailscale's signed apt repository (key pinned by SHA-256), joined with a "
                "pre-authorized key from the vault, never `curl | sh`",
        "converge": ["base", "tailscale"], "hosts": (),
        "verify": [("specs", ["ts01", "ts02", "ts03", "ts04"])],
    },
    {
        "id": "p1-02", "text": "Verify all devices can ping each other via Tailscale",
        "converge": ["tailscale"], "hosts": (),
        "verify": [("check", "tailnet_matrix")],
    },
    {
        "id": "p1-03", "text": "Install cloudflared on Pi 5 Alpha",
        "safe": "from Cloudflare's signed apt repository; a locally configured tunnel whose "
                "credentials come from the vault; metrics on loopback only",
        "converge": ["cloudflared"], "hosts": ("gateway",),
        "verify": [("specs", ["cf01", "cf03", "cf04"])],
    },
    {
        "id": "p1-04", "text": "Create first tunnel pointing to Pi 5 Alpha",
        "converge": ["edge", "cloudflared"], "hosts": ("gateway",),
        "verify": [("check", "edge_tunnels"), ("specs", ["cf02"])],
    },
    {
        "id": "p1-05", "text": "Point blackroad.io DNS to tunnel",
        "safe": "every domain of fleet_domains: a proxied CNAME to <tunnel id>.cfargotunnel.com",
        "converge": ["edge"], "hosts": (),
        "verify": [("check", "edge_dns")],
    },
    {
        "id": "p1-06", "text": "Verify blackroad.io loads something from Pi",
        "safe": "the origin check (each domain's app answers on its host, through the tunnel's "
                "own route), and from the operator's machine an HTTPS request to the public "
                "name whose answer carries the app's version",
        "converge": ["docker", "apps"], "hosts": ("gateway",),
        "verify": [("specs", ["app05", "app06"]), ("check", "public_https")],
    },
    # --- Phase 2: Services -------------------------------------------------------------------
    {
        "id": "p2-01", "text": "Set up Docker on all Pis",
        "safe": "Debian's docker.io or Docker's signed repository; published ports on loopback "
                "or the tailnet only, never 0.0.0.0",
        "converge": ["docker"], "hosts": ("pis",),
        "verify": [("specs", ["dk00", "dk01", "dk02", "dk03", "dk04", "dk05"])],
    },
    {
        "id": "p2-02", "text": "Create base Dockerfile for services",
        "converge": [], "hosts": (),
        "verify": [("manual",
                    "the apps' images are built in the apps' own repositories, not by this one; "
                    "this repository only runs them (pinned by digest)",
                    ["write a Dockerfile for each app from a small, multi-arch base (e.g. "
                     "python:3.12-slim), running as a non-root user, with a /health endpoint",
                     "build it for linux/arm64 (the Pis) and check `docker image inspect` "
                     "shows Architecture arm64",
                     "put the image's digest in the app's entry (group_data, apps): `make check` "
                     "refuses a tag without a digest"])],
    },
    {
        "id": "p2-03", "text": "Set up GitHub Actions for one repo",
        "converge": [], "hosts": (),
        "verify": [("manual",
                    "CI of the apps' repositories runs on GitHub, outside the fleet and this "
                    "repository",
                    ["in the app's repository, add a workflow that builds the image with "
                     "docker/build-push-action for linux/arm64 and pushes it to the registry",
                     "have it print the pushed digest; update the app's image@sha256 in "
                     "group_data and run `make converge` (the health gate rolls it out, "
                     "`make rollback APP=<name>` undoes it)"])],
    },
    {
        "id": "p2-04", "text": "Deploy first containerized service",
        "safe": "each app pinned by digest, health-gated rollout with rollback, secrets in a "
                "0600 env file, memory limited",
        "converge": ["docker", "apps"], "hosts": (),
        "verify": [("specs", ["app01", "app02", "app03", "app04", "app05", "app07"])],
    },
    {
        "id": "p2-05", "text": "Set up cloudflared on Jetson",
        "converge": ["cloudflared", "edge"], "hosts": ("llm",),
        "verify": [("specs", ["cf01", "cf02", "cf03", "cf04"])],
    },
    {
        "id": "p2-06", "text": "Verify LLM inference works via Tailscale",
        "safe": "the engine listens on the tailnet only; a chat completion sent from a Pi",
        "converge": ["nvidia", "ollama", "vllm"], "hosts": ("llm",),
        "verify": [("specs", ["llm01", "llm02"]), ("check", "llm_via_pi")],
    },
    # --- Phase 3: Hardening ------------------------------------------------------------------
    {
        "id": "p3-01", "text": "Set up Droplet failover tunnel",
        "converge": ["cloudflared", "edge"], "hosts": ("failover",),
        "verify": [("specs", ["cf01", "cf02", "cf03", "cf04"]), ("check", "edge_tunnels")],
    },
    {
        "id": "p3-02", "text": "Configure Cloudflare WAF rules",
        "safe": "custom rules from data (edge_waf_rules) in each zone's WAF entry point; rules made "
                "by hand in the dashboard are kept",
        "converge": ["edge"], "hosts": (),
        "verify": [("check", "edge_waf_rules")],
    },
    {
        "id": "p3-03", "text": "Set up API key management in KV",
        "safe": "the AUTH namespace holds only SHA-256 hashes of keys (`make apikey NAME=...` prints "
                "a key once)",
        "converge": [], "hosts": (),
        "verify": [("check", "edge_auth_namespace")],
    },
    {
        "id": "p3-04", "text": "Configure rate limiting",
        "safe": "rate-limiting rules from data (edge_rate_limits) in each zone's entry point",
        "converge": ["edge"], "hosts": (),
        "verify": [("check", "edge_rate_limits")],
    },
    {
        "id": "p3-05", "text": "Set up monitoring on Pi 400",
        "safe": "Prometheus, Alertmanager and Grafana on the tailnet only; every host's "
                "exporter scraped; health probes and a dead man's switch off-site",
        "converge": ["node_exporter", "prometheus", "grafana", "healthcheck", "deadman"],
        "hosts": (),
        "verify": [("specs", ["mon01", "mon02", "mon03", "mon04", "node01", "node02", "graf01", "graf02",
                              "hc01", "hc03", "dm01", "dm03"])],
    },
    # --- Phase 4: Cleanup --------------------------------------------------------------------
    {
        "id": "p4-01", "text": "Delete unused Cloudflare Workers (target: 5-10 workers max)",
        "converge": [], "hosts": (),
        "verify": [("check", "edge_worker_count")],
    },
    {
        "id": "p4-02", "text": "Consolidate KV namespaces (target: 6 max)",
        "converge": [], "hosts": (),
        "verify": [("check", "edge_kv_count")],
    },
    {
        "id": "p4-03", "text": "Document all running services",
        "safe": "docs/fleet.md, generated from the data (every host, groups, services, binds, "
                "domains, versions)",
        "converge": [], "hosts": (),
        "verify": [("check", "fleet_doc_current")],
    },
    {
        "id": "p4-04", "text": "Create runbook for common operations",
        "safe": "docs/runbook.md, generated: each operation with its exact command",
        "converge": [], "hosts": (),
        "verify": [("check", "runbook_current")],
    },
]

# The guide's targets for the Cloudflare account's clutter (phase 4).
WORKERS_MAX = 10
KV_MAX = 6


def phase_items(phase: int) -> list[dict]:
    return [item for item in ITEMS if item["id"].startswith(f"p{phase}-")]

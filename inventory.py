"""The fleet: every host, its groups and the facts about it. Data only.

pyinfra reads the group lists this file defines (pis, gateway, ...). Before it does, the
whole fleet (these hosts + group_data/) is validated; bad data stops the run here, before
any host is touched, with errors that name the host, the key and the fix.

Which fleet is targeted comes from FLEET_TARGET:
  fleet (default)  the real hosts below, reached over their tailnet address
                   (FLEET_CONNECT=lan reaches them on the LAN: a freshly flashed host that
                   is not on the tailnet yet)
  test             the Docker test fleet (make fleet-up): the same hosts, groups and data,
                   with the addresses and SSH connection of TEST_FLEET swapped in
"""

from fleet.preflight.inventory import pyinfra_groups

# Per-host facts. `lan_address` is address/prefix on the network the host is reached on
# outside the tailnet (the home LAN for the Pis and the Jetson, the VPC for the droplet).
# `tailnet_address` is the node's Tailscale IPv4 (pin it in the Tailscale admin console).
# `ram_mb` is its RAM in MB (the apps' memory limits must fit in it).
HOSTS = {
    "pi5-alpha": {
        "groups": ["pis", "gateway", "agents"],
        "lan_address": "192.168.1.11/24",
        "tailnet_address": "100.100.0.1",
        "tailnet_name": "pi5-alpha",
        "ssh_user": "pi",
        "arch": "arm64",
        "ram_mb": 8192,
    },
    "pi5-beta": {
        "groups": ["pis", "agents"],
        "lan_address": "192.168.1.12/24",
        "tailnet_address": "100.100.0.2",
        "tailnet_name": "pi5-beta",
        "ssh_user": "pi",
        "arch": "arm64",
        "ram_mb": 8192,
    },
    "pi5-gamma": {
        "groups": ["pis", "database"],
        "lan_address": "192.168.1.13/24",
        "tailnet_address": "100.100.0.3",
        "tailnet_name": "pi5-gamma",
        "ssh_user": "pi",
        "arch": "arm64",
        "ram_mb": 8192,
    },
    "pi400-delta": {
        "groups": ["pis", "monitoring"],
        "lan_address": "192.168.1.14/24",
        "tailnet_address": "100.100.0.4",
        "tailnet_name": "pi400-delta",
        "ssh_user": "pi",
        "arch": "arm64",
        "ram_mb": 4096,
    },
    "pi0-epsilon": {
        "groups": ["pis", "healthcheck"],
        "lan_address": "192.168.1.15/24",
        "tailnet_address": "100.100.0.5",
        "tailnet_name": "pi0-epsilon",
        "ssh_user": "pi",
        "arch": "arm64",
        "ram_mb": 512,
    },
    "jetson-prime": {
        "groups": ["gpu", "llm"],
        "lan_address": "192.168.1.20/24",
        "tailnet_address": "100.100.0.10",
        "tailnet_name": "jetson-prime",
        "ssh_user": "jetson",
        "arch": "arm64",
        "ram_mb": 8192,
        "llm_engine": "ollama",
    },
    "droplet-failover": {
        "groups": ["cloud", "failover"],
        "lan_address": "10.116.0.2/20",
        "tailnet_address": "100.100.0.100",
        "tailnet_name": "droplet-failover",
        "ssh_user": "fleet",
        "arch": "amd64",
        "ram_mb": 2048,
    },
}

# The Docker test fleet (tests, `make demo`): one systemd container per host. Its tailnet
# stands in for Tailscale's 100.64.0.0/10 and mirrors the guide's addresses; its LAN is a
# second test network, also inside 100.64.0.0/10 (never an RFC 1918 range in tests).
TEST_FLEET = {
    # The committed demo vault: test-only secrets, passphrase documented in README.md.
    "vault": "secrets/demo.vault",
    "vault_passphrase_file": "secrets/demo.passphrase",
    "tailnet_network": "100.100.0.0/16",
    "lan_network": "100.101.0.0/16",
    # The offline vendor mirror (tests/mirror): signed stand-in packages for Tailscale,
    # cloudflared and the NVIDIA toolkit, served from a container on the test tailnet. The deploys install
    # from it through the same code; only these repository URLs and keys differ. Docker
    # comes from Debian (docker.io): the real engine.
    "mirror_address": "100.100.0.250",
    "data": {
        "tailscale_apt": {
            "uris": "http://100.100.0.250/tailscale/stable/debian",
            "suites": "bookworm",
            "components": "main",
            "key_url": "http://100.100.0.250/tailscale/stable/debian/bookworm.noarmor.gpg",
            "key_sha256": "4eba5c8dcbb0054adfa8046298ed92c485697cfa63d349210da6a1f51a96b06e",
            "key_file": "tailscale-archive-keyring.gpg",
        },
        "nvidia_apt": {
            "uris": "http://100.100.0.250/nvidia/stable/deb/$(ARCH)",
            "suites": "/",
            "components": "",
            "key_url": "http://100.100.0.250/nvidia/gpgkey",
            "key_sha256": "0c4dab3b70e4856cf7161ade56aaf05aec97aee38c026b256ca2c46ae809988a",
            "key_file": "nvidia-container-toolkit-keyring.asc",
        },
        "cloudflared_apt": {
            "uris": "http://100.100.0.250/cloudflared",
            "suites": "any",
            "components": "main",
            "key_url": "http://100.100.0.250/cloudflare-main.gpg",
            "key_sha256": "4eba5c8dcbb0054adfa8046298ed92c485697cfa63d349210da6a1f51a96b06e",
            "key_file": "cloudflare-main.gpg",
        },
        # Grafana's repository (apt.grafana.com, suite stable): its key is served armored, like
        # Grafana's gpg.key, so the pin is the test key's armored file's SHA-256.
        "grafana_apt": {
            "uris": "http://100.100.0.250/grafana",
            "suites": "stable",
            "components": "main",
            "key_url": "http://100.100.0.250/grafana/gpg.key",
            "key_sha256": "0c4dab3b70e4856cf7161ade56aaf05aec97aee38c026b256ca2c46ae809988a",
            "key_file": "grafana.asc",
        },
        "docker_source": "distribution",
        # systemd skips timesyncd inside a container (ConditionVirtualization=!container):
        # its running state is left alone here; enablement is still managed and checked.
        "base_time_sync_running": None,
        # Docker test hosts cannot create user namespaces (Debian's redis unit asks for one).
        "redis_private_users": False,
        # Shorter monitoring intervals, so a stopped service is reported and alerted on
        # within a test's bounded wait (the product's defaults stay at 30 s / 2 min).
        "prometheus_scrape_interval": "10s",
        "prometheus_evaluation_interval": "10s",
        "prometheus_alert_thresholds": {"target_down_for": "2m", "disk_used_percent": 85,
                                        "memory_available_percent": 10, "probe_failing_for": "20s",
                                        "prober_stale_seconds": 120},
        "healthcheck_interval_seconds": 15,
        # The droplet's dead man's switch: checks every 15 s, stale after 3 prober rounds, and
        # posts to a loopback URL on the droplet where the integration test listens.
        "deadman_interval_seconds": 15,
        "deadman_stale_seconds": 45,
        "deadman_webhook_url_key": "deadman_webhook_url",
        # A new app version that never answers its health path is given up on sooner.
        "apps_health_timeout_seconds": 20,
        # The machine that runs the converge and the specs: the Docker host, on the test
        # tailnet's gateway address (the specs reach every service from it).
        "firewall_operator_sources": ["100.100.255.254"],
        # Ollama release files and the vLLM image archive, built by the test suite
        # (tests/mirror/llm_release.py) and served by the same mirror. Their checksums are in
        # built_data below: the vLLM stand-in image carries Debian's Python, so its hash
        # follows Debian's point releases and cannot be a literal here.
        # No internet here: the checklist's public HTTPS request is not applicable (the origin
        # check through each domain's tunnel route still runs).
        "checklist_public_https": False,
        "checklist_public_https_reason": "the test fleet has no internet or public DNS; the origin check "
                                         "(app05, app06) is what verifies the domains here",
        "ollama_release_url": "http://100.100.0.250/ollama/v{version}",
        "vllm_image": "fleet-test/vllm-standin:0.8.6",
        "vllm_image_archive_url": "http://100.100.0.250/vllm/vllm-standin.tar",
    },
    # `make test-arm64` runs one host as arm64 under qemu-user emulation (FLEET_TEST_ARM64).
    # qemu-user translates system calls, not netfilter's netlink protocol, so what programs
    # the kernel's packet filter cannot run there; that host gets this data over "data",
    # and the report prints each key with its reason (arm64_waivers).
    "arm64_data": {"docker_enabled": False, "firewall_enabled": False},
    "arm64_waivers": {
        "docker_enabled": "dockerd exits at start under qemu-user: `iptables -t nat -N DOCKER` fails with "
                          "'Failed to initialize nft: Protocol not supported' (nf_tables netlink is not "
                          "emulated). pi5-gamma runs no container; the engine is proven on the amd64 hosts.",
        "firewall_enabled": "`nft` cannot open its netlink socket under qemu-user ('Unable to initialize "
                            "Netlink socket: Protocol not supported'), so no ruleset can be loaded or checked; "
                            "the firewall is proven on the amd64 hosts (make test).",
    },
    # Fleet-wide data (group_data/all.py keys) the test fleet's operator commands use instead:
    # the Cloudflare account of the fake API the tests start (tests/fakes/cloudflare_api.py).
    "all_data": {"edge_account_id": "0123456789abcdef0123456789abcdef"},
    # Data the test suite computes when it builds the mirror (make fleet-up): the checksums
    # of the stand-in Ollama release and vLLM image archive, and the releases of the stand-in
    # app images (apps_releases: tests/mirror/app_release.py). Merged over "data".
    "built_data": ".state/testfleet/mirror/built-data.json",
    # What a JetPack image has in /etc/nv_tegra_release; the test fleet writes it at "flash"
    # time so the Ollama deploy takes the Jetson path (the JetPack add-on) as on the real host.
    "l4t_release_files": {
        "jetson-prime": "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, DATE: Wed Jan  8 01:49:37 UTC 2025",
    },
    "lan_addresses": {
        "pi5-alpha": "100.101.0.1/16",
        "pi5-beta": "100.101.0.2/16",
        "pi5-gamma": "100.101.0.3/16",
        "pi400-delta": "100.101.0.4/16",
        "pi0-epsilon": "100.101.0.5/16",
        "jetson-prime": "100.101.0.10/16",
        "droplet-failover": "100.101.0.100/16",
    },
}

# pyinfra takes every module-level list as a group of hosts.
globals().update(pyinfra_groups(HOSTS, TEST_FLEET, __file__))

"""Converge the whole fleet: every host gets what its groups need.

    pyinfra inventory.py deploys/site.py               # every host
    pyinfra inventory.py deploys/site.py --limit llm   # one group
"""

from pyinfra import host

from deploys.base import base
from deploys.cloudflared import cloudflared
from deploys.docker import docker
from deploys.llm import llm
from deploys.maintenance import maintenance
from deploys.nvidia import nvidia
from deploys.tailscale import tailscale
from fleet.secrets import CLOUDFLARED_GROUPS

base()
tailscale()
if "gpu" in host.groups:
    nvidia()  # before docker: daemon.json names its runtime
if host.data.get("docker_enabled"):
    docker()
if "llm" in host.groups:
    llm()  # after docker: vLLM runs as a container
if "failover" in host.groups:
    maintenance()  # before the tunnel that routes to it
if set(host.groups) & set(CLOUDFLARED_GROUPS):
    cloudflared()

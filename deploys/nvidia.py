"""NVIDIA container toolkit (gpu group): NVIDIA's repository, four packages pinned together.

The nvidia runtime is registered with Docker by the docker deploy's daemon.json model, not
by `nvidia-ctk runtime configure`: one owner for daemon.json.
"""

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import apt

from fleet.converge import aptsource
from fleet.converge.aptsource import vendor_apt_source
from fleet.converge.component import Component

DEFAULTS = {
    # NVIDIA's flat apt repository; apt substitutes $(ARCH) itself.
    "nvidia_apt": {
        "uris": "https://nvidia.github.io/libnvidia-container/stable/deb/$(ARCH)",
        "suites": "/",
        "components": "",
        "key_url": "https://nvidia.github.io/libnvidia-container/gpgkey",
        "key_sha256": "c880576d6cf75a48e5027a871bac70fd0421ab07d2b55f30877b21f1c87959c9",
        "key_file": "nvidia-container-toolkit-keyring.asc",
    },
}

# Installed at one version together, as NVIDIA's install guide pins them.
PACKAGES = [
    "nvidia-container-toolkit",
    "nvidia-container-toolkit-base",
    "libnvidia-container-tools",
    "libnvidia-container1",
]


@deploy("NVIDIA container toolkit", data_defaults=DEFAULTS)
def nvidia():
    vendor_apt_source("nvidia-container-toolkit", host.data.nvidia_apt, "nvidia", PACKAGES)
    version = host.data.nvidia_container_toolkit_version
    apt.packages(
        name="Install the NVIDIA container toolkit (pinned together)",
        packages=[f"{name}={version}" for name in PACKAGES],
    )


COMPONENT = Component(
    name="nvidia",
    deploy=nvidia,
    defaults=DEFAULTS,
    groups=("gpu",),
    rules=(aptsource.rule("nvidia_apt", version="nvidia_container_toolkit_version"),),
    after=("tailscale",),
    before=("docker",),  # docker's daemon.json names its runtime
)

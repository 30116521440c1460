"""NVIDIA container toolkit (hosts running the nvidia component: the gpu group)."""

import json


def docker_info(fh) -> dict:
    return json.loads(fh.host.check_output("docker info --format '{{json .}}'"))


def test_gpu01_nvidia_toolkit(fh):
    """gpu-01: on GPU hosts the toolkit is installed at one pinned version and docker knows
    the nvidia runtime (registered through daemon.json, not by nvidia-ctk)."""
    version = fh.data["nvidia_container_toolkit_version"]
    for pkg in ("nvidia-container-toolkit", "nvidia-container-toolkit-base",
                "libnvidia-container-tools", "libnvidia-container1"):
        assert fh.host.package(pkg).version == version, pkg
    assert version.split("-")[0] in fh.host.check_output("nvidia-ctk --version")
    runtime = docker_info(fh)["Runtimes"]["nvidia"]
    assert runtime["path"] == "nvidia-container-runtime"

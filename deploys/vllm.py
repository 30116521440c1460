"""vLLM (llm hosts whose `llm_engine` is "vllm"): one container with the nvidia runtime.

The image and tag, the model, its served name and maximum context come from data. The
default image is dustynv/vllm built for L4T R36.4 (JetPack 6.1/6.2) with CUDA 12.8: the
Jetson's integrated GPU needs an L4T build, and vllm/vllm-openai (the guide's image) is
built for discrete-GPU servers and does not run on Tegra. Like every Jetson container it
runs with `--runtime nvidia`.

The API key comes from the vault through an env file (0600, root): it is never on a
command line, and clients send it as a Bearer token. The model cache is a named volume, so
a recreated container does not download again. The port is published on the tailnet
address and the port map's `llm` port only. The container restarts unless stopped, and is
recreated only when its settings (image, arguments, published port, env file) change: a
label holds the hash of everything but the secret, and a changed env file forces it too.

Hosts that cannot reach a registry can load the image from an archive instead
(`vllm_image_archive_url` + `vllm_image_archive_sha256`, checked before `docker load`).
"""

from __future__ import annotations

import re

from pyinfra import host
from pyinfra.api import OperationError, deploy
from pyinfra.operations import files

from deploys.llm import engine_is
from fleet.converge import docker
from fleet.converge.component import Component, Problem, SecretFile
from fleet.converge.ops import secret_file, verified_download
from fleet.converge.services import ServiceMap

DEFAULTS = {
    # The image (see the module docstring for why this L4T build is the default).
    "vllm_image": "dustynv/vllm:0.8.6-r36.4-cu128-24.04",
    # Optional: load the image from this archive (a `docker save` tarball) instead of a
    # registry pull ...
    "vllm_image_archive_url": "",
    # ... checked against this SHA-256 first (required with the URL).
    "vllm_image_archive_sha256": "",
    # The command that starts vLLM's OpenAI-compatible server in the image.
    "vllm_command": ["vllm", "serve"],
    # The Hugging Face model: a 4-bit AWQ build of the guide's Qwen2.5-7B fits an 8 GB Orin.
    "vllm_model": "Qwen/Qwen2.5-7B-Instruct-AWQ",
    # The name clients ask for; the same as the Ollama model, so clients need not know the engine.
    "vllm_served_model_name": "qwen2.5:7b",
    # Maximum context (prompt + reply tokens), the guide's value.
    "vllm_max_model_len": 4096,
    # Further server arguments (never secrets: they are visible in `ps`); not the fleet's own
    # (--host, --port, --served-model-name, --max-model-len, --api-key): those are refused.
    "vllm_extra_args": ["--gpu-memory-utilization", "0.8"],
    # The container's name.
    "vllm_container": "vllm",
    # The named volume that caches the model, so a recreated container does not download again.
    "vllm_cache_volume": "vllm-cache",
}

CONTAINER_PORT = 8000
CACHE_DIR = "/root/.cache/huggingface"
# vLLM reads its API key from the environment; Docker passes it from this file (never argv).
API_KEY = "vllm_api_key"
ENV_FILE = "/etc/fleet/vllm.env"
ENV_FORMAT = "VLLM_API_KEY={value}\n"


def run_arguments(data, publish) -> list[str]:
    """`docker run` arguments, secrets excluded (the env file is named, not read).
    `publish`: the Endpoint of the port map's `llm` service on the host's tailnet address."""
    return [
        "--detach", "--name", data.vllm_container,
        "--restart", "unless-stopped",
        "--runtime", "nvidia", "--env", "NVIDIA_VISIBLE_DEVICES=all",
        "--ipc", "host",
        "--env-file", ENV_FILE,
        "--volume", f"{data.vllm_cache_volume}:{CACHE_DIR}",
        "--publish", f"{publish}:{CONTAINER_PORT}",
        "--entrypoint", "",
        data.vllm_image,
        *data.vllm_command, data.vllm_model,
        "--host", "0.0.0.0",  # inside the container's own network namespace
        "--port", str(CONTAINER_PORT),
        "--served-model-name", data.vllm_served_model_name,
        "--max-model-len", str(data.vllm_max_model_len),
        *[str(a) for a in data.vllm_extra_args],
    ]


def retire():
    """The host switched to another engine: remove the container (freeing the LLM port) and
    the API key file; the image and the model cache volume stay for a switch back."""
    docker.container_absent(name="Remove the vLLM container (another engine serves the LLM port)",
                     container=host.data.vllm_container)
    files.file(name="Remove the vLLM API key file", path=ENV_FILE, present=False)


@deploy("vLLM", data_defaults=DEFAULTS)
def vllm():
    data = host.data
    archive = ""
    if data.vllm_image_archive_url:
        if not data.vllm_image_archive_sha256:
            raise OperationError("vllm_image_archive_url is set without vllm_image_archive_sha256. "
                                 "Fix: add the archive's SHA-256 to the host's data.")
        archive = f"/var/cache/fleet/vllm/{data.vllm_image_archive_url.rsplit('/', 1)[-1]}"
        verified_download(name="Download the vLLM image archive (checksum verified)",
                          src=data.vllm_image_archive_url, dest=archive,
                          sha256=data.vllm_image_archive_sha256)
    docker.image(name=f"Provide the vLLM image {data.vllm_image}", ref=data.vllm_image, archive=archive)
    files.directory(name="Create /etc/fleet", path="/etc/fleet", user="root", group="root", mode="755")
    env_file = secret_file(name="Install the vLLM API key (env file)", key=API_KEY,
                           dest=ENV_FILE, user="root", group="root", fmt=ENV_FORMAT)
    publish = ServiceMap.of_pyinfra(host).bind("llm", host.name, "tailnet")
    docker.container(
        name="Run the vLLM container (recreated only when its settings change)",
        container=data.vllm_container,
        image=data.vllm_image,
        arguments=run_arguments(data, publish),
        inputs=(ENV_FILE,),
        changed=(env_file,),
    )


def api_key(name: str, data) -> list[SecretFile]:
    return [SecretFile(API_KEY, ENV_FILE, "root", "root", fmt=ENV_FORMAT)]


SHA256 = re.compile(r"[0-9a-f]{64}")
# Docker's rule for a container's or a named volume's name. A volume given as a path (`/`)
# would bind-mount that host directory into the container instead.
DOCKER_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]+")


# Server arguments the fleet passes itself (run_arguments): given again in vllm_extra_args, the
# last one wins, and the published port, the health probe or the clients' model name would no
# longer match; the API key is read from its env file, never a command line (`ps`, inspect).
FLEET_FLAGS = {
    "--host": "the server listens on every address of its own container; the host publishes it",
    "--port": "the published port and the health probe name the container's port",
    "--served-model-name": "set vllm_served_model_name",
    "--max-model-len": "set vllm_max_model_len",
    "--api-key": "the key comes from the vault (vllm_api_key), through a 0600 env file, never a command line",
}


def check_settings(fleet, hosts) -> list[Problem]:
    problems = []
    for h in hosts:
        data = h.data
        for key in ("vllm_image", "vllm_model", "vllm_served_model_name"):  # arguments of `docker run`
            value = data.get(key)
            if isinstance(value, str) and (not value or any(c.isspace() or ord(c) < 32 for c in value)):
                problems.append(Problem(h.name, key, f"{value!r} is empty or has a space.",
                                        f"write one word, e.g. {DEFAULTS[key]!r}."))
        for key, what in (("vllm_container", "container"), ("vllm_cache_volume", "named volume")):
            if not DOCKER_NAME.fullmatch(str(data.get(key))):
                problems.append(Problem(h.name, key, f"{data.get(key)!r} is not a Docker {what} name.",
                                        f"use letters, digits, '_', '.' and '-', starting with a letter or digit "
                                        f"(e.g. {DEFAULTS[key]!r})."))
        if data.get("vllm_image_archive_url") and not SHA256.fullmatch(str(data.get("vllm_image_archive_sha256", ""))):
            problems.append(Problem(h.name, "vllm_image_archive_sha256",
                                    "is missing or not a SHA-256, but vllm_image_archive_url is set.",
                                    "add the archive's sha256sum next to its URL."))
        for arg in data.get("vllm_extra_args") or []:
            flag = str(arg).split("=", 1)[0]
            if flag in FLEET_FLAGS:
                problems.append(Problem(h.name, "vllm_extra_args", f"{flag!r} is the fleet's own vLLM argument.",
                                        f"leave it out: {FLEET_FLAGS[flag]}."))
        max_len = data.get("vllm_max_model_len")
        if not isinstance(max_len, int) or isinstance(max_len, bool) or max_len <= 0:
            problems.append(Problem(h.name, "vllm_max_model_len", f"{max_len!r} is not a positive integer.",
                                    "write the model's maximum context in tokens, e.g. 4096."))
    return problems


COMPONENT = Component(
    name="vllm",
    deploy=vllm,
    defaults=DEFAULTS,
    groups=("llm",),
    when=engine_is("vllm"),
    secrets=api_key,
    rules=(check_settings,),
    after=("llm", "nvidia"),
    before=("cloudflared",),  # serve before the tunnel routes to it
)

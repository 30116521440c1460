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

import hashlib
import json
import shlex

from pyinfra import host
from pyinfra.api import FactBase, OperationError, StringCommand, deploy, operation
from pyinfra.operations import files

from fleet.ops import secret_file, verified_download
from fleet.secrets import VLLM_API_KEY, VLLM_ENV_FILE, VLLM_ENV_FORMAT

DEFAULTS = {
    # The image (see the module docstring for why this L4T build is the default).
    "vllm_image": "dustynv/vllm:0.8.6-r36.4-cu128-24.04",
    # Optional: load the image from this archive (a `docker save` tarball) instead of a
    # registry pull; its SHA-256 is required with it.
    "vllm_image_archive_url": "",
    "vllm_image_archive_sha256": "",
    # The command that starts vLLM's OpenAI-compatible server in the image.
    "vllm_command": ["vllm", "serve"],
    # The Hugging Face model: a 4-bit AWQ build of the guide's Qwen2.5-7B fits an 8 GB Orin.
    "vllm_model": "Qwen/Qwen2.5-7B-Instruct-AWQ",
    # The name clients ask for; the same as the Ollama model, so clients need not know the engine.
    "vllm_served_model_name": "qwen2.5:7b",
    # Maximum context (prompt + reply tokens), the guide's value.
    "vllm_max_model_len": 4096,
    # Further server arguments (never secrets: they are visible in `ps`).
    "vllm_extra_args": ["--gpu-memory-utilization", "0.8"],
    # Container and model-cache volume names.
    "vllm_container": "vllm",
    "vllm_cache_volume": "vllm-cache",
}

CONTAINER_PORT = 8000
CACHE_DIR = "/root/.cache/huggingface"
LABEL = "fleet.settings"


class DockerImageId(FactBase):
    """The local image ID of `ref`, or None when the engine does not have it."""

    def command(self, ref: str) -> str:
        return f"docker image inspect --format '{{{{.Id}}}}' {shlex.quote(ref)} 2>/dev/null || true"

    def process(self, output):
        return "\n".join(output).strip() or None


class DockerContainer(FactBase):
    """A container's state and fleet settings label, or None when there is no such container."""

    def command(self, container: str) -> str:
        fmt = "{{json .State.Running}} {{json .Config.Labels}}"
        return f"docker container inspect --format '{fmt}' {shlex.quote(container)} 2>/dev/null || true"

    def process(self, output):
        text = "\n".join(output).strip()
        if not text:
            return None
        running, _, labels = text.partition(" ")
        return {"running": running == "true", "settings": (json.loads(labels) or {}).get(LABEL)}


@operation()
def docker_image(ref: str, archive: str = ""):
    """Make the engine have image `ref`: `docker load` a verified archive, else pull it.

    + ref: image reference (name:tag)
    + archive: a local `docker save` archive holding `ref` (already checksum-verified)
    """
    if host.get_fact(DockerImageId, ref=ref):
        host.noop(f"image {ref} is present")
        return
    q = shlex.quote
    if archive:
        yield StringCommand(
            f"docker load --input {q(archive)} && docker image inspect {q(ref)} >/dev/null"
            f" || {{ echo '{archive} does not hold {ref}' >&2; exit 1; }}")
    else:
        yield StringCommand(f"docker pull {q(ref)}")


def run_arguments(data) -> list[str]:
    """`docker run` arguments, secrets excluded (the env file is named, not read)."""
    address, port = data.tailnet_address, data.fleet_services["llm"]["port"]
    return [
        "--detach", "--name", data.vllm_container,
        "--restart", "unless-stopped",
        "--runtime", "nvidia", "--env", "NVIDIA_VISIBLE_DEVICES=all",
        "--ipc", "host",
        "--env-file", VLLM_ENV_FILE,
        "--volume", f"{data.vllm_cache_volume}:{CACHE_DIR}",
        "--publish", f"{address}:{port}:{CONTAINER_PORT}",
        "--entrypoint", "",
        data.vllm_image,
        *data.vllm_command, data.vllm_model,
        "--host", "0.0.0.0",  # inside the container's own network namespace
        "--port", str(CONTAINER_PORT),
        "--served-model-name", data.vllm_served_model_name,
        "--max-model-len", str(data.vllm_max_model_len),
        *[str(a) for a in data.vllm_extra_args],
    ]


@operation()
def llm_container(container: str, image: str, arguments: list[str], recreate_if=None):
    """`container` runs with `arguments`; recreated only when they or the image changed.

    + container: its name
    + image: its image reference (its ID counts as a setting: a new image is a change)
    + arguments: the full `docker run` arguments (no secrets)
    + recreate_if: a callable (e.g. the env file operation's did_change) that forces a new container
    """
    image_id = host.get_fact(DockerImageId, ref=image)
    settings = hashlib.sha256(json.dumps([image_id, arguments]).encode()).hexdigest()[:32]
    current = host.get_fact(DockerContainer, container=container)
    forced = bool(recreate_if and recreate_if())
    q = shlex.quote
    if current and current["settings"] == settings and not forced:
        if current["running"]:
            host.noop(f"container {container} runs with its settings")
        else:
            yield StringCommand(f"docker start {q(container)}")
        return
    run = " ".join(q(a) for a in ["docker", "run", "--label", f"{LABEL}={settings}", *arguments])
    yield StringCommand(f"{{ docker rm --force {q(container)} >/dev/null 2>&1 || true; }} && {run}")


@operation()
def container_absent(container: str):
    """No container named `container` exists (stopped and removed).

    + container: its name
    """
    if host.get_fact(DockerContainer, container=container) is None:
        host.noop(f"there is no container {container}")
        return
    yield StringCommand(f"docker rm --force {shlex.quote(container)}")


def retire():
    """The host switched to another engine: remove the container (freeing the LLM port) and
    the API key file; the image and the model cache volume stay for a switch back."""
    container_absent(name="Remove the vLLM container (another engine serves the LLM port)",
                     container=host.data.vllm_container)
    files.file(name="Remove the vLLM API key file", path=VLLM_ENV_FILE, present=False)


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
    docker_image(name=f"Provide the vLLM image {data.vllm_image}", ref=data.vllm_image, archive=archive)
    files.directory(name="Create /etc/fleet", path="/etc/fleet", mode="755")
    env_file = secret_file(name="Install the vLLM API key (env file)", key=VLLM_API_KEY,
                           dest=VLLM_ENV_FILE, user="root", group="root", fmt=VLLM_ENV_FORMAT)
    llm_container(
        name="Run the vLLM container (recreated only when its settings change)",
        container=data.vllm_container,
        image=data.vllm_image,
        arguments=run_arguments(data),
        recreate_if=env_file.did_change,
    )

"""Docker facts and operations every component that runs containers shares (vLLM now; apps
and monitoring later). The engine itself is the docker component's (deploys/docker.py).

A container is recreated only when its settings change: a label holds the hash of the image
ID and the full `docker run` arguments (never secrets: those come from env files), and a
caller can force a recreation (e.g. when its env file changed).
"""

from __future__ import annotations

import hashlib
import json
import shlex

from pyinfra import host
from pyinfra.api import FactBase, StringCommand, operation

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
def image(ref: str, archive: str = ""):
    """Make the engine have image `ref`: `docker load` a verified archive, else pull it.

    + ref: image reference (name:tag)
    + archive: a local `docker save` archive holding `ref` (already checksum-verified)
    """
    if host.get_fact(DockerImageId, ref=ref):
        host.noop(f"image {ref} is present")
        return
    q = shlex.quote
    if archive:
        message = q(f"{archive} does not hold {ref}")
        yield StringCommand(
            f"docker load --input {q(archive)} && docker image inspect {q(ref)} >/dev/null"
            f" || {{ echo {message} >&2; exit 1; }}")
    else:
        yield StringCommand(f"docker pull {q(ref)}")


def settings_hash(image_id: str | None, arguments: list[str]) -> str:
    return hashlib.sha256(json.dumps([image_id, arguments]).encode()).hexdigest()[:32]


@operation()
def container(container: str, image: str, arguments: list[str], recreate_if=None):
    """`container` runs with `arguments`; recreated only when they or the image changed.

    + container: its name
    + image: its image reference (its ID counts as a setting: a new image is a change)
    + arguments: the full `docker run` arguments (no secrets)
    + recreate_if: a callable (e.g. the env file operation's did_change) that forces a new container
    """
    image_id = host.get_fact(DockerImageId, ref=image)
    settings = settings_hash(image_id, arguments)
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

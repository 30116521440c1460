"""Docker facts and operations every component that runs containers shares (vLLM now; apps
and monitoring later). The engine itself is the docker component's (deploys/docker.py).

A container is recreated only when its settings change: a label holds the hash of the image
ID and the full `docker run` arguments (never secrets: those come from env files), or when
one of its input files (an env file) changed after the container was created. Both are read
from the host, so a run killed between writing an env file and recreating the container is
finished by the next one (see fleet.converge.daemons).
"""

from __future__ import annotations

import hashlib
import json
import shlex
from datetime import datetime, timezone

from pyinfra import host
from pyinfra import state as pyinfra_state
from pyinfra.api import FactBase, StringCommand, operation

from fleet.converge.daemons import NewestChange

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
        fmt = "{{json .State.Running}} {{json .Created}} {{json .Config.Labels}}"
        return f"docker container inspect --format '{fmt}' {shlex.quote(container)} 2>/dev/null || true"

    def process(self, output):
        text = "\n".join(output).strip()
        if not text:
            return None
        running, created, labels = text.split(" ", 2)
        return {"running": running == "true", "created": created_at(json.loads(created)),
                "settings": (json.loads(labels) or {}).get(LABEL)}


def created_at(text: str) -> float | None:
    """Docker's RFC 3339 time with nanoseconds ("2026-12-02T13:05:01.730071234Z") as epoch seconds."""
    try:
        stamp, _, fraction = text.rstrip("Z").partition(".")
        whole = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc).timestamp()
        return whole + (float(f"0.{fraction}") if fraction else 0.0)
    except ValueError:
        return None


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
def container(container: str, image: str, arguments: list[str], inputs: tuple[str, ...] = (), changed=()):
    """`container` runs with `arguments`; recreated only when they, the image or an input
    file changed.

    + container: its name
    + image: its image reference (its ID counts as a setting: a new image is a change)
    + arguments: the full `docker run` arguments (no secrets)
    + inputs: files read when the container is created (its env file): newer than it, it is recreated
    + changed: the operations that write those inputs in this run (only so a dry run shows it)
    """
    image_id = host.get_fact(DockerImageId, ref=image)
    settings = settings_hash(image_id, arguments)
    current = host.get_fact(DockerContainer, container=container)
    newest = host.get_fact(NewestChange, paths=tuple(inputs)) if inputs and current else None
    forced = bool(current and newest is not None and current["created"] is not None
                  and newest > current["created"]) or (not pyinfra_state.is_executing
                                                        and any(op.changed for op in changed))
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

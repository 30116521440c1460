"""Build the STAND-IN LLM engine artifacts the test fleet serves next to the apt mirror.

    python tests/mirror/llm_release.py OUT --base-image IMAGE --data BUILT_DATA_JSON

- OUT/ollama/v<version>/: release assets laid out like Ollama's GitHub release, holding the
  stand-in `ollama` (tests/mirror/standins/ollama): `ollama-linux-{amd64,arm64}.tar.zst`
  (bin/ollama, lib/ollama/) and the JetPack add-ons `ollama-linux-{arch}-jetpack{5,6}.tar.zst`
  (lib/ollama/cuda_jetpack6/), plus `sha256sum.txt`.
- OUT/vllm/vllm-standin.tar: a `docker save` archive of the image `fleet-test/vllm-standin`
  whose only program is the stand-in `vllm` (tests/mirror/standins/vllm) with the Python
  runtime it needs, copied from the test-host base image IMAGE.
- BUILT_DATA_JSON: the checksums the deploys must be given (`ollama_sha256`,
  `vllm_image_archive_sha256`), merged into the test fleet's data by fleet.preflight.inventory.

Archives are deterministic for the same inputs: sorted members, fixed owner and mtime. The
zstd frames are written here with raw (stored) blocks, a valid encoding every zstd decoder
reads, so the bytes do not depend on the zstd version of the machine that builds them.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import runpy
import struct
import subprocess
import sys
import tarfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
STANDINS = HERE / "standins"
DATA_FILE = REPO / "group_data" / "all.py"

ARCHES = ("amd64", "arm64")
ADDONS = ("jetpack5", "jetpack6")
EPOCH = 1700000000  # fixed member mtime: the bytes depend on content only
VLLM_IMAGE = "fleet-test/vllm-standin"
VLLM_VERSION = "0.8.6"
VLLM_ARCHIVE = "vllm-standin.tar"
STANDIN_NOTE = ("STAND-IN for tests (tests/mirror): not {vendor} software. Built by "
                "tests/mirror/llm_release.py for the fleet's offline test mirror.\n")

ZSTD_MAGIC = 0xFD2FB528
ZSTD_MAX_BLOCK = 128 * 1024


def zstd_stored(data: bytes) -> bytes:
    """A zstd frame (RFC 8878) holding `data` in raw blocks, with its content size."""
    # Frame header descriptor: 8-byte content size (FCS flag 3), single segment, no checksum.
    out = bytearray(struct.pack("<IB", ZSTD_MAGIC, 0b11100000))
    out += struct.pack("<Q", len(data))
    chunks = [data[i:i + ZSTD_MAX_BLOCK] for i in range(0, len(data), ZSTD_MAX_BLOCK)] or [b""]
    for n, chunk in enumerate(chunks):
        last = n == len(chunks) - 1
        header = (len(chunk) << 3) | (0 << 1) | int(last)  # block type 0: raw
        out += header.to_bytes(3, "little") + chunk
    return bytes(out)


def tar_bytes(members: list[tuple[str, bytes | None, int]], symlinks: dict[str, str] | None = None) -> bytes:
    """A deterministic tar: (path, content or None for a directory, mode), plus symlinks."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        entries = [(p, c, m, None) for p, c, m in members] + [(p, None, 0o777, t) for p, t in (symlinks or {}).items()]
        for path, content, mode, target in sorted(entries, key=lambda e: e[0]):
            info = tarfile.TarInfo(path)
            info.mtime, info.uid, info.gid, info.uname, info.gname, info.mode = EPOCH, 0, 0, "root", "root", mode
            if target is not None:
                info.type, info.linkname = tarfile.SYMTYPE, target
                tar.addfile(info)
            elif content is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


def with_parents(members: list[tuple[str, bytes | None, int]]) -> list[tuple[str, bytes | None, int]]:
    """Add every missing parent directory (0755), as tar tools expect."""
    have = {p for p, _, _ in members}
    dirs = set()
    for path, _, _ in members:
        parts = path.strip("./").split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d not in have:
                dirs.add(d)
    return members + [(d, None, 0o755) for d in sorted(dirs)]


def substituted(path: Path, **subs: str) -> bytes:
    text = path.read_text()
    for key, value in subs.items():
        text = text.replace(f"@{key}@", value)
    return text.encode()


def ollama_assets(version: str) -> dict[str, bytes]:
    cli = substituted(STANDINS / "ollama" / "ollama", OLLAMA_VERSION=version)
    assets = {}
    for arch in ARCHES:
        # Named per architecture, so each asset (and checksum) is distinct, as upstream's are.
        note = (STANDIN_NOTE.format(vendor="Ollama") + f"Architecture: {arch}\n").encode()
        # Upstream's bundle: bin/ollama and lib/ollama/, unpacked into one prefix.
        assets[f"ollama-linux-{arch}.tar.zst"] = zstd_stored(tar_bytes(with_parents([
            ("bin/ollama", cli, 0o755),
            ("lib/ollama/README.stand-in", note, 0o644),
        ])))
        for addon in ADDONS:
            assets[f"ollama-linux-{arch}-{addon}.tar.zst"] = zstd_stored(tar_bytes(with_parents([
                (f"lib/ollama/cuda_{addon}/README.stand-in", note, 0o644),
            ])))
    return assets


def write_ollama(out: Path, version: str) -> dict[str, str]:
    root = out / "ollama" / f"v{version}"
    root.mkdir(parents=True, exist_ok=True)
    sums = {}
    for name, data in ollama_assets(version).items():
        (root / name).write_bytes(data)
        sums[name] = hashlib.sha256(data).hexdigest()
    (root / "sha256sum.txt").write_text("".join(f"{h}  ./{n}\n" for n, h in sorted(sums.items())))
    return sums


# What the stand-in vllm needs from the base image: Python, its stdlib and shared libraries.
COLLECT = r"""
set -e
libs=$(for f in /usr/bin/python3.11 /usr/lib/python3.11/lib-dynload/*.so; do ldd "$f"; done \
       | awk '/=>/ {print $3} /ld-linux/ {print $1}' | sort -u)
tar -c -h --exclude=__pycache__ /usr/bin/python3.11 /usr/lib/python3.11 $libs 2>/dev/null
"""
# Parts of the stdlib a server never imports (tests, GUI, build config): left out.
SKIP = tuple(f"usr/lib/python3.11/{d}" for d in (
    "test/", "idlelib/", "tkinter/", "turtledemo/", "ensurepip/", "lib2to3/", "pydoc_data/", "config-"))
MERGED_USR = {"bin": "usr/bin", "lib": "usr/lib", "lib64": "usr/lib64", "sbin": "usr/sbin"}


def base_runtime(base_image: str) -> list[tuple[str, bytes | None, int]]:
    """Python runtime files from the test-host base image, paths under merged /usr."""
    raw = subprocess.run(["docker", "run", "--rm", "--network", "none", "--entrypoint", "sh",
                          base_image, "-c", COLLECT], check=True, capture_output=True).stdout
    members = []
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        for info in tar.getmembers():
            path = info.name.lstrip("/")
            top, _, rest = path.partition("/")
            if top in MERGED_USR and rest:
                path = f"{MERGED_USR[top]}/{rest}"
            if path.startswith(SKIP):
                continue
            if info.isdir():
                members.append((path, None, 0o755))
            elif info.isfile():
                members.append((path, tar.extractfile(info).read(), info.mode & 0o755 | 0o644))
    return members


def image_archive(runtime: list[tuple[str, bytes | None, int]], arch: str) -> bytes:
    """A `docker save` archive (the format `docker load` reads) of a one-layer image."""
    vllm = substituted(STANDINS / "vllm" / "vllm", VLLM_VERSION=VLLM_VERSION)
    files = {p: (c, m) for p, c, m in runtime}
    files.update({
        "usr/local/bin/vllm": (vllm, 0o755),
        "etc/passwd": (b"root:x:0:0:root:/root:/usr/sbin/nologin\n", 0o644),
        "etc/group": (b"root:x:0:\n", 0o644),
        "usr/share/doc/vllm-standin/README.stand-in": (STANDIN_NOTE.format(vendor="vLLM").encode(), 0o644),
        "root/.cache/huggingface": (None, 0o755),
        "tmp": (None, 0o1777),
    })
    archive, _ = one_layer_image(files, arch, {
        "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
        "Cmd": ["vllm", "--version"],
        "WorkingDir": "/",
        "Labels": {"org.opencontainers.image.description":
                   "STAND-IN for tests: not vLLM; answers like its OpenAI-compatible server"},
    }, f"{VLLM_IMAGE}:{VLLM_VERSION}", "tests/mirror/llm_release.py")
    return archive


def one_layer_image(files: dict, arch: str, container_config: dict, tag: str, created_by: str) -> tuple[bytes, str]:
    """A `docker save` archive of a one-layer image holding `files` ({path: (content or None
    for a directory, mode)}, with the merged-/usr symlinks), and the image's ID (its config's
    SHA-256). Deterministic: fixed creation time, sorted members."""
    members = with_parents([(p, c, m) for p, (c, m) in files.items()])
    layer = tar_bytes(members, symlinks={**MERGED_USR, "usr/bin/python3": "python3.11"})
    layer_id = hashlib.sha256(layer).hexdigest()
    config = json.dumps({
        "architecture": arch,
        "os": "linux",
        "created": "2023-11-14T22:13:20Z",
        "config": container_config,
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{layer_id}"]},
        "history": [{"created": "2023-11-14T22:13:20Z", "created_by": created_by}],
    }, sort_keys=True).encode()
    config_id = hashlib.sha256(config).hexdigest()
    manifest = json.dumps([{"Config": f"{config_id}.json", "RepoTags": [tag],
                            "Layers": [f"{layer_id}/layer.tar"]}]).encode()
    return tar_bytes([
        (f"{layer_id}", None, 0o755),
        (f"{layer_id}/layer.tar", layer, 0o644),
        (f"{config_id}.json", config, 0o644),
        ("manifest.json", manifest, 0o644),
    ]), config_id


def write_vllm(out: Path, base_image: str) -> str:
    arch = subprocess.run(["docker", "run", "--rm", "--network", "none", "--entrypoint", "dpkg",
                           base_image, "--print-architecture"],
                          check=True, capture_output=True, text=True).stdout.strip()
    data = image_archive(base_runtime(base_image), arch)
    root = out / "vllm"
    root.mkdir(parents=True, exist_ok=True)
    (root / VLLM_ARCHIVE).write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--base-image", required=True, help="the test-host base image (Python source)")
    parser.add_argument("--data", type=Path, required=True, help="where to write the built data JSON")
    args = parser.parse_args(argv)
    version = runpy.run_path(str(DATA_FILE))["ollama_version"]
    built = {
        "ollama_sha256": write_ollama(args.out, version),
        "vllm_image_archive_sha256": write_vllm(args.out, args.base_image),
    }
    args.data.parent.mkdir(parents=True, exist_ok=True)
    args.data.write_text(json.dumps(built, indent=2, sort_keys=True) + "\n")
    print(json.dumps(built, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

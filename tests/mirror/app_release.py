"""Build the STAND-IN app images the test fleet runs as the guide's services (web, api,
lucidia, agents), as `docker save` archives served by the test mirror.

    python tests/mirror/app_release.py OUT --base-image IMAGE --data BUILT_DATA_JSON --mirror-url URL

Each image holds tests/mirror/standins/app/app (a few lines of Python: a page, /health and
the version baked in) with the Python runtime copied from the test-host base image IMAGE:

- app-1.0.0.tar, app-2.0.0.tar: two good versions (a rollout goes from one to the other);
- app-2.0.1-broken.tar: its /health answers 503 forever (the health gate must refuse it);
- app-1.0.0-arm64.tar: version 1.0.0 labelled for arm64 (refused on an amd64 host).

BUILT_DATA_JSON gets `apps_releases` (every app on 1.0.0: image pinned by its image ID,
archive URL and SHA-256), merged into the test fleet's data like the LLM stand-ins'
checksums; OUT/apps/releases.json lists every variant for the integration tests.
Archives are deterministic for the same inputs (see llm_release.py).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from llm_release import STANDINS, STANDIN_NOTE, base_runtime, one_layer_image  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
IMAGE = "fleet-test/app"
VARIANTS = {  # name -> (version, broken, architecture or None for the host's)
    "1.0.0": ("1.0.0", False, None),
    "2.0.0": ("2.0.0", False, None),
    "2.0.1-broken": ("2.0.1-broken", True, None),
    "1.0.0-arm64": ("1.0.0", False, "arm64"),
}
DEFAULT = "1.0.0"


def image_archive(runtime, version: str, broken: bool, arch: str) -> tuple[bytes, str]:
    """A one-layer `docker save` archive and the image's ID (the SHA-256 of its config)."""
    files = {p: (c, m) for p, c, m in runtime}
    files.update({
        "app/app": ((STANDINS / "app" / "app").read_bytes(), 0o755),
        "app/VERSION": (f"{version}\n".encode(), 0o644),
        "etc/passwd": (b"root:x:0:0:root:/root:/usr/sbin/nologin\n", 0o644),
        "etc/group": (b"root:x:0:\n", 0o644),
        "usr/share/doc/app-standin/README.stand-in": (STANDIN_NOTE.format(vendor="the team's apps").encode(), 0o644),
        "tmp": (None, 0o1777),
    })
    if broken:
        files["app/BROKEN"] = (b"this image's /health answers 503 (tests: the health gate refuses it)\n", 0o644)
    return one_layer_image(files, arch, {
        "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "PORT=8080"],
        "Cmd": ["/usr/bin/python3", "/app/app"],
        "WorkingDir": "/app",
        "ExposedPorts": {"8080/tcp": {}},
        "Labels": {"org.opencontainers.image.version": version,
                   "org.opencontainers.image.description": "STAND-IN for tests: not one of the team's apps"},
    }, f"{IMAGE}:{version}-{arch}", "tests/mirror/app_release.py")


def build(out: Path, base_image: str, mirror_url: str, host_arch: str) -> dict[str, dict]:
    runtime = base_runtime(base_image)
    root = out / "apps"
    root.mkdir(parents=True, exist_ok=True)
    releases = {}
    for name, (version, broken, arch) in VARIANTS.items():
        data, image_id = image_archive(runtime, version, broken, arch or host_arch)
        (root / f"app-{name}.tar").write_bytes(data)
        releases[name] = {"image": f"{IMAGE}@sha256:{image_id}",
                          "archive_url": f"{mirror_url}/apps/app-{name}.tar",
                          "archive_sha256": hashlib.sha256(data).hexdigest()}
    (root / "releases.json").write_text(json.dumps(releases, indent=2, sort_keys=True) + "\n")
    return releases


def main(argv: list[str]) -> int:
    import runpy
    import subprocess

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--base-image", required=True, help="the test-host base image (Python source)")
    parser.add_argument("--data", type=Path, required=True, help="the built data JSON to add apps_releases to")
    parser.add_argument("--mirror-url", required=True, help="where the test hosts reach OUT (http://address)")
    args = parser.parse_args(argv)
    arch = subprocess.run(["docker", "run", "--rm", "--network", "none", "--entrypoint", "dpkg", args.base_image,
                           "--print-architecture"], check=True, capture_output=True, text=True).stdout.strip()
    releases = build(args.out, args.base_image, args.mirror_url.rstrip("/"), arch)
    apps = runpy.run_path(str(REPO / "group_data" / "all.py"))["apps_definitions"]
    built = json.loads(args.data.read_text()) if args.data.exists() else {}
    built["apps_releases"] = {app: dict(releases[DEFAULT]) for app in sorted(apps)}
    args.data.parent.mkdir(parents=True, exist_ok=True)
    args.data.write_text(json.dumps(built, indent=2, sort_keys=True) + "\n")
    print(json.dumps(built["apps_releases"], indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

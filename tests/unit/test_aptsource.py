"""The vendor apt-source helper: deb822 with Signed-By, stale sources removed, no apt-key."""

import re
from pathlib import Path

import pytest

from deploys.docker import DEFAULTS as DOCKER
from deploys.nvidia import DEFAULTS as NVIDIA
from deploys.tailscale import DEFAULTS as TAILSCALE
from fleet.converge.aptsource import check_spec, render_source, source_path, stale_sources

REPO = Path(__file__).resolve().parents[2]


def test_stale_source_for_the_same_uri_is_removed():
    found = ["/etc/apt/sources.list.d/tailscale.list",  # the vendor's install script's file
             "/etc/apt/sources.list.d/tailscale.sources"]
    assert stale_sources(found, source_path("tailscale")) == ["/etc/apt/sources.list.d/tailscale.list"]


def test_our_own_source_is_kept():
    assert stale_sources([source_path("docker")], source_path("docker")) == []


def test_deb822_names_its_keyring():
    text = render_source("tailscale", TAILSCALE["tailscale_apt"], "tailscale")
    assert text.startswith("# Managed by the fleet's tailscale deploy")
    assert "Signed-By: /etc/apt/keyrings/tailscale-archive-keyring.gpg" in text.splitlines()
    assert "URIs: https://pkgs.tailscale.com/stable/debian" in text.splitlines()


def test_flat_repository_has_no_components():
    text = render_source("nvidia", NVIDIA["nvidia_apt"], "nvidia")
    assert "Suites: /" in text and "Components" not in text


@pytest.mark.parametrize("spec", [TAILSCALE["tailscale_apt"], DOCKER["docker_apt"], NVIDIA["nvidia_apt"]],
                         ids=["tailscale", "docker", "nvidia"])
def test_real_vendor_defaults_are_complete_and_pinned(spec):
    check_spec("vendor", spec)
    assert spec["uris"].startswith("https://") and spec["key_url"].startswith("https://")


def test_unpinned_key_is_refused():
    with pytest.raises(ValueError, match="SHA-256"):
        check_spec("x", dict(TAILSCALE["tailscale_apt"], key_sha256=""))


@pytest.mark.parametrize("change, message", [
    ({"uris": ""}, "uris '' is not an http(s) URL"),
    ({"key_url": "pkgs.tailscale.com/x.gpg"}, "key_url 'pkgs.tailscale.com/x.gpg' is not an http(s) URL"),
    ({"suites": ""}, "suites is empty"),
    ({"components": "main; $(id)"}, "is not a list of component names"),
    # written under /etc/apt/keyrings: a path would put the vendor's download elsewhere
    ({"key_file": "../../sudoers.d/x.gpg"}, "key_file must be a file name"),
])
def test_a_source_apt_could_not_use_is_refused(change, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        check_spec("x", dict(TAILSCALE["tailscale_apt"], **change))


def test_apt_variables_and_flat_repositories_pass():
    check_spec("x", dict(NVIDIA["nvidia_apt"]))  # $(ARCH) in its URIs
    check_spec("x", dict(TAILSCALE["tailscale_apt"], suites="/", components=""))


def test_no_apt_key_anywhere_in_deploys_or_package():
    offenders = []
    for path in [*REPO.joinpath("deploys").rglob("*.py"), *REPO.joinpath("fleet").rglob("*.py"),
                 *REPO.joinpath("templates").rglob("*")]:
        if path.is_file():
            for n, line in enumerate(path.read_text().splitlines(), 1):
                code = line.split("#")[0]
                if re.search(r"\bapt-key\b", code) and "never apt-key" not in line:
                    offenders.append(f"{path.relative_to(REPO)}:{n}")
    assert offenders == []

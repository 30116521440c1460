"""Templates render from data, under the managed-by header."""

from deploys.base import DEFAULTS
from fleet.converge.render import render


def sshd(**over):
    ctx = dict(listen_addresses=["192.168.1.11", "100.100.0.1"], port=22,
               settings=DEFAULTS["base_sshd_settings"])
    ctx.update(over)
    return render("etc/ssh/sshd_config.j2", "base", **ctx)


def test_sshd_config_listens_only_where_told():
    text = sshd()
    assert text.startswith("# Managed by the fleet's base deploy (deploys/base.py)")
    listen = [line for line in text.splitlines() if line.startswith("ListenAddress")]
    assert listen == ["ListenAddress 192.168.1.11:22", "ListenAddress 100.100.0.1:22"]
    assert "PasswordAuthentication no" in text.splitlines()
    assert "PermitRootLogin no" in text.splitlines()


def test_sshd_config_has_no_include():
    assert not any(l.lower().startswith("include") for l in sshd().splitlines())


def test_sshd_port_comes_from_the_port_map():
    assert "ListenAddress 100.100.0.1:2222" in sshd(port=2222)


def test_auto_upgrades_uses_apt_comment_syntax():
    text = render("etc/apt/apt.conf.d/20auto-upgrades.j2", "base", comment="//", enabled="1")
    assert text.startswith("// Managed by the fleet's base deploy")
    assert 'APT::Periodic::Unattended-Upgrade "1";' in text


def test_missing_template_variable_is_an_error():
    import jinja2
    import pytest

    with pytest.raises(jinja2.UndefinedError):
        render("etc/sudoers.d/fleet-admin.j2", "base")

"""Templates render from data, under the managed-by header."""

from deploys.base import DEFAULTS, SSHD_HARDENED, sshd_settings
from fleet.converge.render import render


def sshd(**over):
    ctx = dict(listen_addresses=["192.168.1.11", "100.100.0.1"], port=22,
               settings=sshd_settings(DEFAULTS["base_sshd_settings"]))
    ctx.update(over)
    return render("etc/ssh/sshd_config.j2", "base", **ctx)


def test_sshd_config_listens_only_where_told():
    text = sshd()
    assert text.startswith("# Managed by the fleet's base deploy (deploys/base.py)")
    listen = [line for line in text.splitlines() if line.startswith("ListenAddress")]
    assert listen == ["ListenAddress 192.168.1.11:22", "ListenAddress 100.100.0.1:22"]
    assert "PasswordAuthentication no" in text.splitlines()
    assert "PermitRootLogin no" in text.splitlines()


def test_the_hardening_is_written_whatever_the_data_gives():
    # data that replaces the default dict (to tune one setting) keeps key-only logins, once each
    lines = sshd(settings=sshd_settings({"ClientAliveInterval": "600", "passwordauthentication": "no"})).splitlines()
    for key, value in SSHD_HARDENED.items():
        assert [line for line in lines if line.lower().startswith(key.lower() + " ")] == [f"{key} {value}"]
    assert "ClientAliveInterval 600" in lines


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


def _env_with_cache(tmp_path, directory):
    import jinja2

    from fleet.converge import render as module

    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(tmp_path / "t")),
                              bytecode_cache=module._BytecodeCache(directory))


def test_compiled_templates_are_kept_and_a_changed_source_is_compiled_again(tmp_path):
    (tmp_path / "t").mkdir()
    page = tmp_path / "t" / "page.j2"
    page.write_text("one {{ x }}\n")
    cache = tmp_path / "cache"
    assert _env_with_cache(tmp_path, cache).get_template("page.j2").render(x=1) == "one 1"
    kept = list(cache.iterdir())
    assert len(kept) == 1 and oct(cache.stat().st_mode & 0o777) == "0o700"
    assert b"{{" not in kept[0].read_bytes()  # compiled code, not the source or a rendering
    assert _env_with_cache(tmp_path, cache).get_template("page.j2").render(x=2) == "one 2"
    page.write_text("two {{ x }}\n")  # a new process, a changed template: not the kept code
    assert _env_with_cache(tmp_path, cache).get_template("page.j2").render(x=3) == "two 3"
    for entry in cache.iterdir():  # damaged by hand: compiled again
        entry.write_bytes(entry.read_bytes()[:12])
    assert _env_with_cache(tmp_path, cache).get_template("page.j2").render(x=4) == "two 4"


def test_a_cache_that_cannot_be_written_is_not_kept(tmp_path):
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "page.j2").write_text("{{ x }}\n")
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    env = _env_with_cache(tmp_path, blocked / "cache")
    assert env.get_template("page.j2").render(x="ok") == "ok"
    assert env.bytecode_cache.writable is False


def test_a_script_gets_its_interpreter_before_the_header():
    from deploys.redis import DATA, UNIT

    text = render("etc/fleet/backup.d/redis.j2", "redis", interpreter="/bin/bash", data_dir=DATA, unit=UNIT)
    first, second = text.splitlines()[:2]
    assert first == "#!/bin/bash"
    assert second.startswith("# Managed by the fleet's redis deploy (deploys/redis.py)")
    assert render("etc/fleet/backup.d/redis.j2", "redis", data_dir=DATA, unit=UNIT).startswith("# Managed")

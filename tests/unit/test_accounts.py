"""fleet.converge.accounts: the same commands as pyinfra's server.user, from a cheaper fact."""

from __future__ import annotations

import subprocess

import pytest
from pyinfra.context import ctx_host
from pyinfra.facts.files import Directory
from pyinfra.facts.server import Groups, Os, Users, Which
from pyinfra.operations import server

from fleet.converge.accounts import Account, account

ALICE = {"home": "/home/alice", "shell": "/bin/bash", "comment": "", "uid": 1000, "gid": 1000,
         "group": "alice", "groups": ["sudo", "docker"]}
PROBE = {"home": "/var/lib/fleet-probe", "shell": "/usr/sbin/nologin", "comment": "", "uid": 998,
         "gid": 998, "group": "fleet-probe", "groups": []}


class FakeHost:
    """Answers the facts both operations ask, from one account table."""

    def __init__(self, accounts: dict, groups: list[str], home_dirs: dict):
        self.accounts, self.groups, self.home_dirs = accounts, groups, home_dirs

    def get_fact(self, fact, **kwargs):
        if fact is Users:
            return {name: dict(info, lastlog=None, password="!") for name, info in self.accounts.items()}
        if fact is Account:
            return self.accounts.get(kwargs["user"])
        if fact is Groups:
            return self.groups
        if fact is Os:
            return "Linux"
        if fact is Which:
            return f"/usr/sbin/{kwargs['command']}"
        if fact is Directory:
            return self.home_dirs.get(kwargs["path"])
        raise AssertionError(f"unexpected fact {fact.__name__}")

    def noop(self, _text):
        pass


def commands(inner, fake: FakeHost, **kwargs) -> list[str]:
    with ctx_host.use(fake):
        return [str(getattr(cmd, "get_raw_value", lambda: cmd)()) for cmd in inner(**kwargs)]


OWNED = {"mode": 755, "user": "alice", "group": "alice"}
CALLS = [  # the deploys' call sites' arguments
    dict(user="alice", shell="/bin/bash", create_home=True, groups=["sudo"], append=True),
    dict(user="alice", groups=["docker"], append=True),
    dict(user="alice", groups=["sudo", "docker"]),
    dict(user="alice", groups=["sudo"]),
    dict(user="alice", shell="/bin/sh", home="/srv/alice"),
    dict(user="fleet-probe", system=True, shell="/usr/sbin/nologin", home="/var/lib/fleet-probe",
         create_home=False),
    dict(user="fleet-probe", system=True, shell="/usr/sbin/nologin", home="/var/lib/fleet-probe",
         create_home=False, groups=["render", "video"]),
    dict(user="restic", home="/srv/restic", shell="/bin/sh", system=True, ensure_home=True),
    dict(user="restic", home="/srv/restic", ensure_home=False),
]
STATES = [
    ("no accounts", {}, [], {}),
    ("user groups exist, homes missing", {}, ["alice", "fleet-probe", "restic"], {}),
    ("accounts as wanted", {"alice": ALICE, "fleet-probe": PROBE}, ["alice", "fleet-probe", "docker", "sudo"],
     {"/home/alice": OWNED, "/var/lib/fleet-probe": dict(OWNED, user="fleet-probe", group="fleet-probe")}),
    ("accounts drifted", {"alice": dict(ALICE, shell="/bin/sh", groups=["docker"]),
                          "fleet-probe": dict(PROBE, home="/tmp", groups=["video"])},
     ["alice", "fleet-probe"], {"/home/alice": dict(OWNED, user="root")}),
]


@pytest.mark.parametrize("call", CALLS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
@pytest.mark.parametrize("label,accounts,groups,homes", STATES, ids=[s[0] for s in STATES])
def test_account_sends_what_server_user_sends(call, label, accounts, groups, homes):
    fake = FakeHost(accounts, groups, homes)
    assert commands(account._inner, fake, **call) == commands(server.user._inner, fake, **call)


def run_fact(user: str):
    out = subprocess.run(["sh", "-c", Account().command(user)], capture_output=True, text=True, check=True)
    return Account().process(out.stdout.splitlines())


def test_the_fact_reads_an_account_from_this_machine():
    root = run_fact("root")
    assert root["uid"] == 0 and root["gid"] == 0 and root["group"] == "root"
    assert root["home"] == "/root" and root["shell"]
    assert "root" not in root["groups"]


def test_a_missing_account_is_none_and_a_hostile_name_stays_one_argument():
    assert run_fact("fleet-no-such-account") is None
    assert run_fact("x; echo root:x:0:0::/:/bin/sh|root|root") is None


def test_a_comment_with_separators_is_kept_whole():
    line = "svc:x:999:998:a|b c:/var/lib/svc:/usr/sbin/nologin|svc|svc adm video"
    assert Account().process([line]) == {
        "home": "/var/lib/svc", "shell": "/usr/sbin/nologin", "comment": "a|b c", "uid": 999, "gid": 998,
        "group": "svc", "groups": ["adm", "video"]}

"""Local accounts: `account`, pyinfra's `server.user` for the arguments the deploys use.

Why our own: `server.user` decides from pyinfra's `Users` fact, which walks every entry of
/etc/passwd and starts ~10 processes for each (grep, lastlog, id twice, the shadow file for
the password hash): ~300 processes, 0.2-0.3 s of CPU on a Pi-class host, in every converge,
to answer for the handful of accounts the deploys manage. The `Account` fact asks for one
account (`getent` and `id`, a few processes) and never reads /etc/shadow, so no password hash
passes through the converge either.

The commands are the ones `server.user` (pyinfra 3.10) sends for the same arguments on Linux:
`useradd` for a missing account, `usermod` for what differs, then the home directory owned by
the account (`ensure_home`). tests/unit/test_accounts.py compares the two over the call
sites' arguments and account states.
"""

from __future__ import annotations

import re
import shlex

from pyinfra import host
from pyinfra.api import FactBase, QuoteString, StringCommand, operation
from pyinfra.facts.server import Groups
from pyinfra.operations import files

from fleet.converge.component import ACCOUNT_NAME, matches

# A directory a component creates and hands to a service's account (chown, chmod): an
# absolute path of plain names, two or more deep, so `/`, `/etc`, `/srv` or a `..` is never
# given away by a typo in the data.
OWN_DIRECTORY = re.compile(r"(/[A-Za-z0-9_][A-Za-z0-9._-]*){2,}")


def account_name(key: str):
    """A validation rule: the setting `key` names a system account."""
    return matches(key, ACCOUNT_NAME, "a system account name", "use lower-case letters, digits, '_' and '-' (32 at "
                   "most), starting with a letter or '_' (e.g. 'backup').")


def own_directory(key: str):
    """A validation rule: the setting `key` is a directory a component may create and own."""
    return matches(key, OWN_DIRECTORY, "a directory a service may own", "use an absolute path two or more levels "
                   "deep, of letters, digits, '.', '_' and '-' (e.g. /var/lib/<service>).")


class Account(FactBase):
    """One local account as `server.user` sees it, or None when there is no such account:
    {"home", "shell", "comment", "uid", "gid", "group" (primary), "groups" (the others)}."""

    def command(self, user: str) -> str:
        q = shlex.quote(user)
        return (f"if entry=$(getent passwd {q}); then "
                f"printf '%s|%s|%s\\n' \"$entry\" \"$(id -gn {q})\" \"$(id -Gn {q})\"; fi")

    def process(self, output):
        line = next((line for line in output if line.strip()), None)
        if line is None:
            return None
        entry, group, groups = line.rsplit("|", 2)
        _name, _password, uid, gid, comment, home, shell = entry.split(":", 6)
        return {
            "home": home,
            "shell": shell,
            "comment": comment,
            "uid": int(uid),
            "gid": int(gid),
            "group": group,
            "groups": [name for name in groups.split() if name != group],
        }


def _names(groups: list[str]) -> StringCommand:
    parts: list = []
    for name in groups:
        if parts:
            parts.append(",")
        parts.append(QuoteString(name))
    return StringCommand(*parts, _separator="")


@operation()
def account(
    user: str,
    home: str | None = None,
    shell: str | None = None,
    groups: list[str] | None = None,
    append: bool = False,
    system: bool = False,
    create_home: bool = False,
    ensure_home: bool = True,
):
    """Add or change the local account `user` (arguments as `server.user`'s).

    + user: the account's name
    + home: its home directory (default: the current one, else /home/<user>)
    + shell: its login shell (left as it is when not given)
    + groups: its supplementary groups; with `append`, these are added to the ones it has
    + system: a system account (`useradd -r`) when it is created
    + create_home: create the home directory with useradd's skeleton when the account is created
    + ensure_home: the home directory exists, owned by the account
    """
    groups = list(groups or [])
    current = host.get_fact(Account, user=user)
    if home is None:
        home = current["home"] if current else f"/home/{user}"

    if current is None:
        args: list = ["-d", QuoteString(home)]
        if shell:
            args += ["-s", QuoteString(shell)]
        if user in host.get_fact(Groups):
            # Without -g, useradd refuses a name whose group already exists.
            args += ["-g", QuoteString(user)]
        if groups:
            args += ["-G", _names(groups)]
        if system:
            args.append("-r")
        args.append("-m" if create_home else "-M")
        yield StringCommand("useradd", *args, QuoteString(user))
    else:
        changes: list = []
        if current["home"] != home:
            changes += ["-d", QuoteString(home)]
        if shell and current["shell"] != shell:
            changes += ["-s", QuoteString(shell)]
        if groups:
            if append:
                if not set(groups) <= set(current["groups"]):
                    changes += ["-a", "-G", _names(groups)]
            elif set(current["groups"]) != set(groups):
                changes += ["-G", _names(groups)]
        if changes:
            yield StringCommand("usermod", *changes, QuoteString(user))

    if ensure_home and home:
        yield from files.directory._inner(path=home, user=user, group=user, _no_fail_on_link=True)

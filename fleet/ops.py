"""Operations pyinfra does not ship: a config file that is validated before it goes live."""

from __future__ import annotations

import hashlib
import shlex
from io import BytesIO

from pyinfra import host
from pyinfra.api import FileUploadCommand, StringCommand, operation
from pyinfra.facts.files import File, Sha256File


@operation()
def validated_file(
    content: str,
    dest: str,
    validate: str,
    user: str = "root",
    group: str = "root",
    mode: str = "644",
):
    """Install `content` at `dest` only if `validate` accepts it; else fail, live file intact.

    + content: the file's full text (rendered on the operator's machine)
    + dest: the live file
    + validate: a command with `{path}` where the candidate's path goes (`sshd -t -f {path}`)
    + user, group, mode: ownership and octal mode of the installed file

    The candidate is uploaded next to `dest` (same filesystem, so the final `mv` is atomic),
    checked, and either moved into place or removed. An unchanged file is a no-op.
    """
    data = content.encode()
    wanted_sum = hashlib.sha256(data).hexdigest()
    current = host.get_fact(File, path=dest)
    if current and host.get_fact(Sha256File, path=dest) == wanted_sum:
        same_owner = current.get("user") == user and current.get("group") == group
        same_mode = current.get("mode") == int(mode)
        if same_owner and same_mode:
            host.noop(f"{dest} is up to date")
            return

    candidate = f"{dest}.fleet-candidate"
    q_candidate, q_dest = shlex.quote(candidate), shlex.quote(dest)
    yield FileUploadCommand(BytesIO(data), candidate,
                            remote_temp_filename=host.get_temp_filename(candidate))
    yield StringCommand(f"chown {shlex.quote(user)}:{shlex.quote(group)} {q_candidate}")
    yield StringCommand(f"chmod {shlex.quote(mode)} {q_candidate}")
    check = validate.format(path=q_candidate)
    yield StringCommand(
        f"if {check}; then mv -f {q_candidate} {q_dest}; "
        f"else rm -f {q_candidate}; echo 'validation failed: {dest} left unchanged' >&2; exit 1; fi"
    )

"""Operations pyinfra does not ship: a config file that is validated before it goes live."""

from __future__ import annotations

import hashlib
import shlex
from io import BytesIO

from pyinfra import host
from pyinfra.api import FactBase, FileUploadCommand, StringCommand, operation
from pyinfra.facts.files import File, Sha256File
from pyinfra.facts.server import Home


# What a file being installed is called beside its path until it is renamed over it (one
# filesystem, so the rename is atomic); the base deploy removes any a killed run left.
CANDIDATE = ".fleet-candidate"
# The SSH user's 0700 directory, under its home, where uploads wait before root copies them
# into place: secret files, the database's SQL, and every upload under sudo (the connector).
STAGE = ".cache/fleet-upload"


def stage_dir() -> str:
    """STAGE under the SSH user's home, asked by name: facts run under sudo, where ~ is /root."""
    return f"{host.get_fact(Home, user=host.data.ssh_user)}/{STAGE}"


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

    candidate = f"{dest}{CANDIDATE}"
    q_candidate, q_dest = shlex.quote(candidate), shlex.quote(dest)
    yield FileUploadCommand(BytesIO(data), candidate,
                            remote_temp_filename=host.get_temp_filename(candidate))
    yield StringCommand(f"chown {shlex.quote(user)}:{shlex.quote(group)} {q_candidate}")
    yield StringCommand(f"chmod {shlex.quote(mode)} {q_candidate}")
    check = validate.format(path=q_candidate)
    yield StringCommand(
        f"if {check}; then mv -fT {q_candidate} {q_dest}; "
        f"else rm -f {q_candidate}; echo {shlex.quote(f'validation failed: {dest} left unchanged')} >&2; exit 1; fi"
    )


@operation()
def secret_file(key: str, dest: str, user: str, group: str, mode: str = "600", fmt: str = "{value}"):
    """Install the vault secret `key` as the file `dest` (owner user:group, mode 0600).

    + key: the vault key (its name, never its value, is this operation's argument)
    + dest: the file on the host; its directory must exist
    + fmt: the file's content around the value ("VLLM_API_KEY={value}\n" for an env file)

    The value goes over SFTP, without sudo, into a 0700 directory in the admin user's home
    (pyinfra's own sudo upload would stage it world-readable in /tmp), then root copies it
    under umask 077 to a candidate beside `dest`, sets owner and mode, and renames it into
    place. No diff is shown, nothing is echoed, and the staged copy is removed even when a
    step fails. Unchanged content, owner and mode is a no-op (compared by SHA-256).
    """
    from fleet.converge.keys import secret

    data = fmt.format(value=secret(key)).encode()
    current = host.get_fact(File, path=dest)
    if current and host.get_fact(Sha256File, path=dest) == hashlib.sha256(data).hexdigest():
        if (current.get("user"), current.get("group"), current.get("mode")) == (user, group, int(mode)):
            host.noop(f"{dest} is up to date")
            return

    stage = stage_dir()
    staged = f"{stage}/{hashlib.sha256(dest.encode()).hexdigest()[:16]}"
    candidate = f"{dest}{CANDIDATE}"
    q = shlex.quote
    yield StringCommand(f"install -d -m 700 {q(stage)}", _sudo=False)
    yield FileUploadCommand(BytesIO(data), staged, _sudo=False)
    yield StringCommand(
        f"(umask 077 && cp {q(staged)} {q(candidate)} && chown {q(user)}:{q(group)} {q(candidate)}"
        f" && chmod {q(mode)} {q(candidate)} && mv -fT {q(candidate)} {q(dest)}); rc=$?;"
        f" rm -f {q(staged)} {q(candidate)}; exit $rc"
    )


@operation()
def verified_download(src: str, dest: str, sha256: str, mode: str = "644"):
    """Download `src` to `dest` only if its SHA-256 is `sha256`; otherwise fail, `dest` untouched.

    + src: URL (fetched on the host with curl)
    + dest: where the verified file goes
    + sha256: the pinned checksum (from data)

    pyinfra's files.download moves the file into place before checking the sum, so a bad
    key or binary would already be where apt or systemd trusts it. Here the download lands
    in a candidate beside `dest`, is checked, and only then renamed. A file that already
    has the checksum is a no-op.

    Hashing a large archive on every run (an image archive is hundreds of MB on a Pi) is
    the slowest check of a no-op converge, so a verified file gets a stamp (`stamp_of`, under
    /var/lib/fleet/verified): the checksum with the file's inode, size and change time (ctime, to
    the nanosecond; nothing but a change moves it, and it cannot be set back). While the
    stamp matches the file, the file is what was verified; any change to it (a rewrite, a
    truncation, an edit in place) changes its ctime, and the file is hashed again.
    """
    if host.get_fact(VerifiedSha256, path=dest, sha256=sha256) == "stamped":
        host.noop(f"{dest} has the pinned checksum")
        return
    q = shlex.quote
    stamp = q(stamp_of(dest))
    record = stamp_command(dest, sha256)
    # File first, as pyinfra's own file operations do: Sha256File's sha256sum would wait
    # forever on a FIFO left at `dest`. Anything else there (a FIFO, a link) is replaced by the
    # download; a directory fails the rename (mv -T), so no stamp is ever recorded for one
    if host.get_fact(File, path=dest) and host.get_fact(Sha256File, path=dest) == sha256:
        yield StringCommand(record)  # verified now: only the stamp was missing or stale
        return
    candidate = f"{dest}{CANDIDATE}"
    yield StringCommand(f"install -d -m 755 {q(dest.rsplit('/', 1)[0] or '/')}")
    yield StringCommand(
        f"rm -f {stamp} && curl -fsSL --retry 3 --max-time 300 -o {q(candidate)} {q(src)}"
        f" && echo {q(sha256 + '  ' + candidate)} | sha256sum --check --quiet --strict"
        f" && chmod {q(mode)} {q(candidate)} && mv -fT {q(candidate)} {q(dest)} && {record}"
        f" || {{ rm -f {q(candidate)}; echo {q(f'checksum or download failed for {src}: {dest} left unchanged')} >&2; exit 1; }}"
    )


VERIFIED_DIR = "/var/lib/fleet/verified"


def stamp_of(path: str) -> str:
    """Where verified_download records that `path` was verified (one file per path)."""
    return f"{VERIFIED_DIR}/{path.strip('/').replace('/', '%')}"


def stamp_command(path: str, sha256: str) -> str:
    """Record that `path`, as it is now, was verified to have `sha256`."""
    q, stamp = shlex.quote, shlex.quote(stamp_of(path))
    return (f"{{ install -d -m 755 {q(VERIFIED_DIR)} && echo {q(sha256)} $(stat -c '%i %s %.9Z' {q(path)})"
            f" > {stamp}.tmp && mv -f {stamp}.tmp {stamp}; }}")


class VerifiedSha256(FactBase):
    """"stamped" when the stamp of `path` records `sha256` with the file's current inode,
    size and ctime (see verified_download), else nothing."""

    def command(self, path: str, sha256: str) -> str:
        q = shlex.quote
        return (f"s=$(stat -c '%i %s %.9Z' {q(path)} 2>/dev/null) && "
                f"[ \"$(cat {q(stamp_of(path))} 2>/dev/null)\" = {q(sha256)}\" $s\" ] && echo stamped || true")

    def process(self, output):
        return "".join(output).strip() or None

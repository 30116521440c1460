"""The secrets vault: one encrypted file per environment, on `cryptography`.

File format (text, so git can store it; version 1):

    line 1   {"format": "fleet-vault", "version": 1, "kdf": {...}, "cipher": "AES-256-GCM",
              "nonce": ..., "check": ...}                      (JSON, one line)
    line 2+  base64 of the AES-256-GCM ciphertext + tag, 64 characters a line

- Key: scrypt(passphrase, salt; n, r, p) -> 64 bytes. The first 32 are the AES-256 key;
  a SHA-256 of the other 32 is the `check`, which tells a wrong passphrase apart from a
  damaged file. scrypt's default cost (n=2^17, r=8: 128 MiB per guess) makes offline
  guessing far costlier than ansible-vault's PBKDF2 with 10,000 iterations.
- The whole header line is the AEAD's associated data: changing a parameter, the salt or
  the version fails authentication.
- The plaintext is a JSON object of string keys to string values.
- Every save takes a new salt and nonce and replaces the file atomically (temp file in the
  same directory, fsync, rename): a crash mid-write leaves the old vault intact.
- Key cache (KeyCache): where the passphrase is read from a file, the derived key is kept
  beside that file, so each run does not spend scrypt's ~0.35 s again.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets as pysecrets
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

FORMAT = "fleet-vault"
VERSION = 1
CIPHER = "AES-256-GCM"


@dataclass(frozen=True)
class KdfParams:
    n: int = 2**17
    r: int = 8
    p: int = 1

    def check(self) -> None:
        """Refuse parameters a tampered header could use to exhaust memory or time."""
        if not (2**14 <= self.n <= 2**20 and self.n & (self.n - 1) == 0):
            raise VaultFormatError(f"unsupported scrypt n={self.n} (a power of two, 2^14..2^20)")
        if not (1 <= self.r <= 16 and 1 <= self.p <= 4):
            raise VaultFormatError(f"unsupported scrypt r={self.r}, p={self.p}")


class VaultError(Exception):
    """Any problem opening or writing a vault; the message says what and how to fix it."""


class VaultFormatError(VaultError):
    pass


class WrongPassphrase(VaultError):
    pass


class VaultTampered(VaultError):
    pass


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (ValueError, TypeError):
        raise VaultFormatError(f"the vault's {what} is not valid base64: the file is damaged or truncated")


def _derive(passphrase: str, salt: bytes, params: KdfParams) -> tuple[bytes, bytes]:
    raw = Scrypt(salt=salt, length=64, n=params.n, r=params.r, p=params.p).derive(passphrase.encode())
    return raw[:32], hashlib.sha256(raw[32:]).digest()[:16]


def encrypt(data: dict[str, str], passphrase: str, params: KdfParams = KdfParams()) -> bytes:
    if not passphrase:
        raise VaultError("an empty passphrase is not allowed")
    params.check()
    salt, nonce = pysecrets.token_bytes(16), pysecrets.token_bytes(12)
    key, check = _derive(passphrase, salt, params)
    header = json.dumps({
        "format": FORMAT, "version": VERSION,
        "kdf": {"name": "scrypt", "n": params.n, "r": params.r, "p": params.p, "salt": _b64(salt)},
        "cipher": CIPHER, "nonce": _b64(nonce), "check": _b64(check),
    }, sort_keys=True, separators=(",", ":")).encode()
    plaintext = json.dumps(data, sort_keys=True).encode()
    body = _b64(AESGCM(key).encrypt(nonce, plaintext, header))
    lines = [body[i:i + 64] for i in range(0, len(body), 64)]
    return header + b"\n" + "\n".join(lines).encode() + b"\n"


def parse_header(blob: bytes) -> tuple[bytes, dict, bytes]:
    """(header line, header fields, ciphertext); raises VaultFormatError on anything odd."""
    first, sep, rest = blob.partition(b"\n")
    try:
        header = json.loads(first)
    except (ValueError, UnicodeDecodeError):
        raise VaultFormatError("the file does not start with a fleet vault header (damaged, or not a vault)")
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise VaultFormatError("the file is not a fleet vault")
    if header.get("version") != VERSION:
        raise VaultFormatError(
            f"vault format version {header.get('version')!r} is not supported (this code reads "
            f"version {VERSION}); update this repository, or re-create the vault"
        )
    if header.get("cipher") != CIPHER or header.get("kdf", {}).get("name") != "scrypt":
        raise VaultFormatError(f"unsupported cipher or KDF in the vault header: {header.get('cipher')!r}")
    if not sep or not rest.strip():
        raise VaultFormatError("the vault has no ciphertext: the file is truncated")
    # Strict: 64-character lines, one trailing newline, canonical base64. Anything else
    # (a stray byte, a changed line break, non-zero padding bits) is a damaged file.
    lines = rest.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    if any(len(line) != 64 for line in lines[:-1]) or not 0 < len(lines[-1]) <= 64:
        raise VaultFormatError("the vault's ciphertext lines are malformed: the file is damaged or truncated")
    text = b"".join(lines).decode("ascii", "replace")
    ciphertext = _unb64(text, "ciphertext")
    if _b64(ciphertext) != text:
        raise VaultFormatError("the vault's ciphertext is not canonical base64: the file is damaged")
    return first, header, ciphertext


class KeyCache:
    """The key scrypt derived for a vault, kept beside the passphrase *file* it came from, as
    `.<file name>.fleet-key` (0600): a run reads it instead of spending scrypt's ~0.35 s of CPU
    again (about an eighth of a no-op converge of the test fleet). It holds nothing the file
    beside it does not give (whoever reads the passphrase file derives the same key), and less:
    not the passphrase itself, which a person may use elsewhere. Kept beside the file, it lives
    where the file lives (an encrypted or removable disk goes with it) and is not written where
    the directory is read-only. It is used only while the passphrase file is the same file,
    unchanged since (device, inode, size, modification time), and only for the vault header it
    was derived for (salt, parameters and passphrase check); saving the vault removes it. Our
    own code: no library keeps a derived key for a passphrase file. A prompt or an environment
    variable passphrase is never cached."""

    def __init__(self, passphrase_file: Path):
        self.source = Path(passphrase_file)
        self.path = self.source.with_name(f".{self.source.name}.fleet-key")

    def _identity(self) -> list[int]:
        st = os.stat(self.source)
        return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns]

    @staticmethod
    def _for(salt: bytes, params: KdfParams, check: bytes) -> list:
        return [params.n, params.r, params.p, _b64(salt), _b64(check)]

    def get(self, salt: bytes, params: KdfParams, check: bytes) -> bytes | None:
        try:
            st = os.lstat(self.path)
            if not (stat.S_ISREG(st.st_mode) and st.st_uid == os.getuid() and st.st_mode & 0o077 == 0):
                return None  # not a file this user alone wrote: derive the key instead
            entry = json.loads(self.path.read_text())
            if entry.get("source") != self._identity() or entry.get("vault") != self._for(salt, params, check):
                return None
            key = base64.b64decode(entry["key"], validate=True)
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None
        return key if len(key) == 32 else None

    def put(self, salt: bytes, params: KdfParams, check: bytes, key: bytes) -> None:
        text = json.dumps({"source": self._identity(), "vault": self._for(salt, params, check), "key": _b64(key)})
        try:
            fd, tmp = tempfile.mkstemp(prefix=f"{self.path.name}.", suffix=".tmp", dir=self.path.parent)  # 0600
            try:
                with os.fdopen(fd, "w") as out:
                    out.write(text)
                os.replace(tmp, self.path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError:
            pass  # a read-only directory: no cache, each run derives the key

    def forget(self) -> None:
        try:
            self.path.unlink()
        except OSError:
            pass  # none there, or a directory that became read-only: its salt no longer matches


def decrypt(blob: bytes, passphrase: str, cache: KeyCache | None = None) -> dict[str, str]:
    first, header, ciphertext = parse_header(blob)
    kdf = header["kdf"]
    try:
        params = KdfParams(n=int(kdf["n"]), r=int(kdf["r"]), p=int(kdf["p"]))
        salt = _unb64(kdf["salt"], "salt")
        nonce = _unb64(header["nonce"], "nonce")
        check = _unb64(header["check"], "passphrase check")
    except (KeyError, TypeError, ValueError) as exc:
        raise VaultFormatError(f"the vault header is incomplete ({exc}): the file is damaged")
    params.check()
    key = cache.get(salt, params, check) if cache else None
    if key is not None:
        try:
            plaintext = AESGCM(key).decrypt(nonce, ciphertext, first)
        except InvalidTag:
            cache.forget()  # not this vault's key after all: derive it
            return decrypt(blob, passphrase)
    else:
        key, expected = _derive(passphrase, salt, params)
        if not pysecrets.compare_digest(check, expected):
            raise WrongPassphrase("wrong passphrase (or the vault header was modified)")
        try:
            plaintext = AESGCM(key).decrypt(nonce, ciphertext, first)
        except InvalidTag:
            raise VaultTampered("the vault failed authentication: it was modified, damaged or truncated")
        if cache:
            cache.put(salt, params, check, key)
    data = json.loads(plaintext)
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise VaultFormatError("the vault's content is not a mapping of names to text values")
    return data


def params_of(path: Path) -> KdfParams:
    kdf = parse_header(Path(path).read_bytes())[1]["kdf"]
    return KdfParams(n=int(kdf["n"]), r=int(kdf["r"]), p=int(kdf["p"]))


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that a reader sees the old file or the new one, never half."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dirfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dirfd)
    finally:
        os.close(dirfd)


class Vault:
    """An encrypted file on disk. `load()` decrypts; `save()` re-encrypts atomically."""

    def __init__(self, path: str | Path, passphrase: str, cache: KeyCache | None = None):
        self.path = Path(path)
        self.passphrase = passphrase
        self.cache = cache

    def exists(self) -> bool:
        return self.path.exists()

    def load(self) -> dict[str, str]:
        if not self.path.exists():
            raise VaultError(f"{self.path} does not exist; create it with `make vault-init`")
        try:
            return decrypt(self.path.read_bytes(), self.passphrase, self.cache)
        except VaultError as exc:
            raise type(exc)(f"{self.path}: {exc}") from None
        except OSError as exc:  # a directory, or unreadable: one line, no traceback
            raise VaultError(f"{self.path}: cannot be read ({exc.strerror or exc}); point FLEET_VAULT at "
                             "the vault file") from None

    def save(self, data: dict[str, str], params: KdfParams | None = None) -> None:
        if params is None:
            params = params_of(self.path) if self.path.exists() else KdfParams()
        if self.cache:
            self.cache.forget()
        atomic_write(self.path, encrypt(data, self.passphrase, params))

    def rekey(self, new_passphrase: str) -> None:
        data = self.load()
        params = params_of(self.path)
        if self.cache:
            self.cache.forget()
        atomic_write(self.path, encrypt(data, new_passphrase, params))
        self.passphrase = new_passphrase


"""Broker credentials: Mosquitto password and ACL files rendered from the device registry.

The fleet server is the source of truth for who may talk to the broker. It renders
Mosquitto 2's password file (``user:$7$...``, PBKDF2-SHA512 as ``mosquitto_passwd`` writes
it) and ACL file from the enrolled, non-revoked devices plus the server's own users, writes
both atomically and sends Mosquitto SIGHUP to re-read them. Revoking a device is rendering
the files without it: it is then absent from both and can neither connect nor keep a topic.

The ACL rule (shared/design.md): a device may read only its own ``desired`` and ``commands``
and write only its own ``reported``, ``events`` and ``telemetry`` (``edgefleet.topics.acl_lines``);
a server user may read and write everything under ``edgefleet/v1/``.

Rendering is pure (strings in, strings out); only ``write_broker_files`` and
``reload_mosquitto`` touch the disk or processes. This module does not store plaintext
passwords, manage a broker cluster's own auth plugin (EMQX/HiveMQ read the same facts
through their HTTP or database auth; render from the same registry), or start Mosquitto.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import signal
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from edgefleet.atomic import atomic_write_bytes
from edgefleet.topics import PREFIX, acl_lines, check_device_id
from fleet_server.trust.errors import BrokerAuthError

PASSWORD_FILE = "passwd"
ACL_FILE = "acl"
SALT_BYTES = 12  # what mosquitto_passwd 2.x uses
# Owner read/write, group read: Mosquitto runs as its own user in the group that owns the
# directory (docs/deployment.md: `install -d -g mosquitto -m 2750`, setgid so new files take
# that group); 0600 left Mosquitto unable to read what the server wrote (issue 17).
FILE_MODE = 0o640
DEFAULT_ITERATIONS = 101  # mosquitto_passwd 2.x's default for sha512-pbkdf2

_USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,127}\Z")
_HASH = re.compile(r"^\$7\$([1-9][0-9]*)\$([A-Za-z0-9+/]+=*)\$([A-Za-z0-9+/]+=*)\Z")


def check_username(username: str) -> str:
    # ':' ends the name in the password file and whitespace splits an ACL line.
    if not isinstance(username, str) or not _USERNAME.match(username):
        raise BrokerAuthError(f"broker username {username!r} is not valid",
                              fix="use letters, digits, '_', '.', '@' or '-' (at most 128 characters)")
    return username


def mosquitto_password_hash(password: str, *, salt: bytes | None = None, iterations: int = DEFAULT_ITERATIONS) -> str:
    """Hash ``password`` the way ``mosquitto_passwd`` does: ``$7$ITER$b64(salt)$b64(pbkdf2_sha512)``."""
    if not password:
        raise BrokerAuthError("a broker password must not be empty", fix="generate one with secrets.token_urlsafe()")
    if iterations < 1:
        raise BrokerAuthError("PBKDF2 iterations must be at least 1")
    salt = os.urandom(SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def verify_mosquitto_password(password: str, hashed: str) -> bool:
    """True if ``password`` matches a ``$7$`` hash (constant-time comparison)."""
    match = _HASH.match(hashed)
    if match is None:
        return False
    iterations, salt, expected = int(match.group(1)), base64.b64decode(match.group(2)), base64.b64decode(match.group(3))
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return hmac.compare_digest(digest, expected)


def render_password_file(users: Mapping[str, str]) -> str:
    """A Mosquitto password file from ``{username: $7$ hash}``, sorted by user."""
    lines = []
    for username, hashed in sorted(users.items()):
        check_username(username)
        if not _HASH.match(hashed):
            raise BrokerAuthError(f"password of broker user {username!r} is not a Mosquitto $7$ hash",
                                  fix="store mosquitto_password_hash(password), never the password itself")
        lines.append(f"{username}:{hashed}")
    return "".join(f"{line}\n" for line in lines)


def server_acl_lines(username: str) -> list[str]:
    """ACL lines for a fleet-server user: everything under the edgefleet prefix."""
    return [f"user {check_username(username)}", f"topic readwrite {PREFIX}/#"]


def render_acl(devices: Iterable[tuple[str, str]], server_users: Iterable[str]) -> str:
    """A Mosquitto ACL file: server users get ``edgefleet/v1/#``, each device only its own topics.

    ``devices`` is ``(username, device_id)`` pairs. A username may appear once; anything not
    listed is denied everything (Mosquitto denies by default once an ACL file is set).
    """
    blocks: list[list[str]] = []
    seen: dict[str, str] = {}
    for username in sorted(set(server_users)):
        blocks.append(server_acl_lines(username))
        seen[username] = "the server"
    for username, device_id in sorted(set(devices)):
        check_username(username)
        try:
            check_device_id(device_id)
            if not device_id.isprintable():
                # edgefleet.topics' pattern ends in '$', which lets one trailing newline through;
                # in an ACL file that newline would start a line of the device's choosing.
                raise ValueError(f"device id {device_id!r} is not valid: it holds a control character")
        except ValueError as exc:
            raise BrokerAuthError(str(exc), fix="device ids are letters, digits, '-' and '_'") from exc
        if username in seen:
            raise BrokerAuthError(f"broker user {username!r} is listed for both {seen[username]} and device {device_id!r}",
                                  fix="give every device and server replica its own broker username")
        seen[username] = f"device {device_id!r}"
        blocks.append(acl_lines(username, device_id))
    return "".join("\n".join(block) + "\n\n" for block in blocks)


@dataclass(frozen=True)
class BrokerFiles:
    """The two files ``write_broker_files`` wrote."""

    password_file: Path
    acl_file: Path


def write_broker_files(
    directory: Path,
    *,
    passwords: Mapping[str, str],
    devices: Iterable[tuple[str, str]],
    server_users: Iterable[str],
    mode: int = FILE_MODE,
    password_file: str = PASSWORD_FILE,
    acl_file: str = ACL_FILE,
) -> BrokerFiles:
    """Render and atomically write ``directory/passwd`` and ``directory/acl``.

    ``passwords`` maps every username (devices and server users) to its ``$7$`` hash; a user
    with a password but no ACL entry, or the reverse, is refused so that a revoked device
    cannot linger in one file. ``mode`` must let the broker's user read the files: 0640 (the
    default) with a shared group, 0600 when it runs as the same user.
    """
    devices = list(devices)
    server_users = list(server_users)
    acl_text = render_acl(devices, server_users)
    password_text = render_password_file(passwords)
    acl_users = {u for u, _ in devices} | set(server_users)
    if acl_users != set(passwords):
        odd = sorted(acl_users ^ set(passwords))
        raise BrokerAuthError(f"broker users without both a password and an ACL entry: {', '.join(odd)}",
                              fix="pass the same users in passwords as in devices + server_users")
    directory = Path(directory)
    files = BrokerFiles(directory / password_file, directory / acl_file)
    try:
        atomic_write_bytes(files.acl_file, acl_text.encode(), mode=mode)
        atomic_write_bytes(files.password_file, password_text.encode(), mode=mode)
    except OSError as exc:
        raise BrokerAuthError(f"cannot write broker files in {directory}: {exc.strerror}",
                              fix="check that the directory exists and is writable") from exc
    return files


class MosquittoNotRunning(BrokerAuthError):
    """Nothing to reload: no pid file, or no process with its pid. Mosquitto reads the files when it starts."""


def _read_pid(pid_file: Path) -> int:
    try:
        return int(Path(pid_file).read_text().strip())
    except FileNotFoundError as exc:
        raise MosquittoNotRunning(f"Mosquitto pid file {pid_file} does not exist (Mosquitto not started yet?)",
                                  fix="start Mosquitto (it reads the files when it starts); check pid_file in "
                                      "mosquitto.conf names the same path") from exc
    except ValueError as exc:
        raise BrokerAuthError(f"Mosquitto pid file {pid_file} does not hold a pid", fix="restart Mosquitto") from exc


def reload_mosquitto(target: Path | int) -> int:
    """Send SIGHUP to Mosquitto (a pid, or the path of its pid file) and return the pid.

    ``MosquittoNotRunning`` (a ``BrokerAuthError``) when there is no pid file or no such
    process: the caller may go on, since Mosquitto reads the files when it starts. Refuses a
    pid whose process is not Mosquitto: a stale pid file must not make us hang up
    an unrelated process (SIGHUP ends most programs).
    """
    pid = target if isinstance(target, int) else _read_pid(target)
    comm = Path(f"/proc/{pid}/comm")
    name: str | None
    try:
        name = comm.read_text().strip()
    except FileNotFoundError:
        name = None if Path("/proc/self").exists() else "mosquitto"  # no procfs (macOS): cannot check
    if name is None:
        raise MosquittoNotRunning(f"no process {pid} is running", fix="start Mosquitto, or fix the pid file")
    if "mosquitto" not in name:
        raise BrokerAuthError(f"process {pid} is {name!r}, not Mosquitto; refusing to send it SIGHUP",
                              fix="fix the pid file (stale?)")
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError as exc:
        raise MosquittoNotRunning(f"no process {pid} is running", fix="start Mosquitto, or fix the pid file") from exc
    except PermissionError as exc:
        raise BrokerAuthError(f"not allowed to signal Mosquitto (pid {pid})",
                              fix="run the server as the broker's user, or reload it with systemctl reload mosquitto") from exc
    return pid

"""systemd's notify protocol (sd_notify) without libsystemd: READY, WATCHDOG, STOPPING, STATUS.

With ``Type=notify`` systemd passes ``$NOTIFY_SOCKET`` (a datagram socket, ``@`` for the
abstract namespace); with ``WatchdogSec=`` it passes ``$WATCHDOG_USEC`` and restarts the
service when pings stop. Outside systemd both are unset and every call is a cheap no-op.
"""

from __future__ import annotations

import contextlib
import os
import socket


def notify(message: str, environ: dict[str, str] | None = None) -> bool:
    """Send ``message`` (e.g. ``"READY=1"``) to systemd; False when not run by systemd."""
    env = os.environ if environ is None else environ
    address = env.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.connect(address)
        sock.sendall(message.encode())
        return True
    return False


def watchdog_interval(environ: dict[str, str] | None = None) -> float | None:
    """Seconds between watchdog pings (half of systemd's timeout), or None without a watchdog."""
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC")
    pid = env.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return max(0.05, int(usec) / 2_000_000)
    except ValueError:
        return None

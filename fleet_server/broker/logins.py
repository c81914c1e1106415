"""Checking a broker login against the registry quickly, without making passwords cheap to guess.

A broker asks at every CONNECT (``fleet_server.broker.auth_api``), so a reconnect storm of the
whole fleet is a burst of password checks. ``LoginChecker`` keeps that cheap and safe:

- **One row per login.** ``lookup(username)`` returns the enrolled device's id and stored
  ``$7$`` hash, or None: one indexed row, whatever the fleet size. Revoked devices have no row
  there, so no cache can let one in.
- **A short cache of successes.** A login verified within ``ttl_s`` is accepted again after a
  SHA-256 compare instead of PBKDF2. The cache holds SHA-256(process-random key + password),
  never the password, and is keyed by the stored hash too: a new password (re-enrollment)
  misses it. Bounded (``max_entries``, oldest dropped first).
- **Failures throttled per username.** After ``max_failures`` wrong passwords for one username
  within ``window_s`` its logins are refused without a PBKDF2 until the window passes (a
  login the cache knows still gets in, so a guesser cannot lock a connected device out of its
  reconnect). Device passwords are 32 random bytes, far beyond guessing; this bounds the CPU a
  flood of wrong guesses can cost. The endpoint itself takes only callers with the broker token.

Pure apart from ``lookup`` and ``verify`` (injected): the clock is a parameter.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

DEFAULT_TTL_S = 300.0
DEFAULT_MAX_ENTRIES = 100_000
DEFAULT_MAX_FAILURES = 10
DEFAULT_WINDOW_S = 60.0


@dataclass(frozen=True)
class Account:
    """What the registry holds for one enrolled device's broker login."""

    device_id: str
    password_hash: str


Lookup = Callable[[str], Account | None]
Verify = Callable[[str, str], bool]  # (password, $7$ hash) -> matches


@dataclass(frozen=True)
class Checked:
    device_id: str | None  # None: refused
    why: str = ""
    cached: bool = False


class LoginChecker:
    """``check(username, password)`` -> the device it is, or why not. Thread-safe."""

    def __init__(self, lookup: Lookup, verify: Verify, *, ttl_s: float = DEFAULT_TTL_S,
                 max_entries: int = DEFAULT_MAX_ENTRIES, max_failures: int = DEFAULT_MAX_FAILURES,
                 window_s: float = DEFAULT_WINDOW_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.lookup, self.verify, self.clock = lookup, verify, clock
        self.ttl_s, self.max_entries = ttl_s, max_entries
        self.max_failures, self.window_s = max_failures, window_s
        self._key = secrets.token_bytes(32)
        self._lock = threading.Lock()
        # (username, stored hash) -> (digest of the password, verified at)
        self._verified: OrderedDict[tuple[str, str], tuple[bytes, float]] = OrderedDict()
        self._failures: dict[str, tuple[int, float]] = {}  # username -> (count, window start)

    def _digest(self, password: str) -> bytes:
        return hmac.new(self._key, password.encode(), hashlib.sha256).digest()

    def check(self, username: str, password: str) -> Checked:
        account = self.lookup(username)
        if account is None:
            return Checked(None, "unknown or revoked user")
        now, digest, key = self.clock(), self._digest(password), (username, account.password_hash)
        with self._lock:
            hit = self._verified.get(key)
            if hit is not None and now - hit[1] < self.ttl_s and hmac.compare_digest(hit[0], digest):
                return Checked(account.device_id, cached=True)
            count, start = self._failures.get(username, (0, now))
            if now - start >= self.window_s:
                count, start = 0, now
            if count >= self.max_failures:
                return Checked(None, f"too many wrong passwords for {username}; retry in {self.window_s:g} s")
        ok = self.verify(password, account.password_hash)  # PBKDF2, outside the lock
        with self._lock:
            if not ok:
                self._failures[username] = (count + 1, start)
                self._prune_failures(now)
                return Checked(None, "wrong password")
            self._failures.pop(username, None)
            self._verified[key] = (digest, now)
            self._verified.move_to_end(key)
            while len(self._verified) > self.max_entries:
                self._verified.popitem(last=False)
        return Checked(account.device_id)

    def forget(self, username: str) -> None:
        """Drop what is cached for ``username`` (its revocation; the lookup refuses it anyway)."""
        with self._lock:
            for key in [k for k in self._verified if k[0] == username]:
                del self._verified[key]

    def _prune_failures(self, now: float) -> None:
        if len(self._failures) > self.max_entries:
            for name in [n for n, (_, start) in self._failures.items() if now - start >= self.window_s]:
                del self._failures[name]

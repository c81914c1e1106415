"""Console sessions: who logged in (admin or viewer), their CSRF token, and when the session ends.

A session is a random id that lives in a cookie (HttpOnly, SameSite=Strict, set by
``fleet_server.console.routes``) and in this in-memory store; its CSRF token is a second random
value the page carries and every state-changing request must send back. Pure: time is an
argument, nothing here touches HTTP.

It does not persist sessions: a server restart logs everyone out, and each replica behind a
load balancer has its own store (pin the console to one replica, or log in again).
"""

from __future__ import annotations

import secrets
import threading
from dataclasses import dataclass

ADMIN = "admin"
VIEWER = "viewer"
DEFAULT_TTL_S = 8 * 3600.0
MAX_SESSIONS = 10_000  # a flood of logins cannot grow the store without bound


@dataclass(frozen=True)
class Session:
    id: str
    role: str  # ADMIN or VIEWER
    csrf: str
    expires_at: float

    @property
    def can_act(self) -> bool:
        return self.role == ADMIN


class SessionStore:
    """Thread-safe: FastAPI runs sync routes in a thread pool."""

    def __init__(self, ttl_s: float = DEFAULT_TTL_S) -> None:
        if ttl_s <= 0:
            raise ValueError("ttl_s must be positive")
        self.ttl_s = ttl_s
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    def create(self, role: str, now: float) -> Session:
        if role not in (ADMIN, VIEWER):
            raise ValueError(f"unknown role {role!r}")
        session = Session(secrets.token_urlsafe(32), role, secrets.token_urlsafe(32), now + self.ttl_s)
        with self._lock:
            self._expire(now)
            if len(self._sessions) >= MAX_SESSIONS:
                oldest = min(self._sessions.values(), key=lambda s: s.expires_at)
                del self._sessions[oldest.id]
            self._sessions[session.id] = session
        return session

    def get(self, session_id: str | None, now: float) -> Session | None:
        if not session_id:
            return None
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None:
                return None
            if session.expires_at <= now:
                del self._sessions[session_id]
                return None
            return session

    def end(self, session_id: str | None) -> None:
        with self._lock:
            self._sessions.pop(session_id or "", None)

    def _expire(self, now: float) -> None:
        for sid in [sid for sid, s in self._sessions.items() if s.expires_at <= now]:
            del self._sessions[sid]

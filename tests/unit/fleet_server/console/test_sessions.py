"""Console sessions (fleet_server.console.sessions): roles, expiry, the bound on their number."""

from __future__ import annotations

import pytest

from fleet_server.console import sessions as module
from fleet_server.console.sessions import ADMIN, VIEWER, SessionStore


def test_a_session_has_random_ids_and_only_the_admin_can_act() -> None:
    store = SessionStore(ttl_s=60)
    admin, viewer = store.create(ADMIN, 0.0), store.create(VIEWER, 0.0)
    assert admin.can_act and not viewer.can_act
    assert len({admin.id, admin.csrf, viewer.id, viewer.csrf}) == 4 and len(admin.id) >= 40
    assert store.get(admin.id, 59.0) == admin
    assert store.get(None, 0.0) is None and store.get("forged", 0.0) is None


def test_sessions_expire_and_end() -> None:
    store = SessionStore(ttl_s=60)
    session = store.create(ADMIN, 0.0)
    assert store.get(session.id, 60.0) is None  # expired at ttl
    again = store.create(VIEWER, 100.0)
    store.end(again.id)
    assert store.get(again.id, 100.0) is None


def test_unknown_role_is_refused() -> None:
    with pytest.raises(ValueError):
        SessionStore().create("root", 0.0)


def test_a_login_flood_cannot_grow_the_store_without_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(module, "MAX_SESSIONS", 5)
    store = SessionStore(ttl_s=1000)
    made = [store.create(VIEWER, float(i)) for i in range(8)]
    assert sum(store.get(s.id, 10.0) is not None for s in made) == 5
    assert store.get(made[0].id, 10.0) is None and store.get(made[-1].id, 10.0) is not None

"""LoginChecker: one row per login, a short cache of successes, failures throttled per username."""

from __future__ import annotations

from fleet_server.broker.auth import mosquitto_password_hash, verify_mosquitto_password
from fleet_server.broker.logins import Account, LoginChecker

HASH = mosquitto_password_hash("right")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Registry:
    def __init__(self) -> None:
        self.accounts = {"dev-1": Account("dev-1", HASH)}
        self.lookups = 0

    def __call__(self, username: str) -> Account | None:
        self.lookups += 1
        return self.accounts.get(username)


class CountingVerify:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, password: str, hashed: str) -> bool:
        self.calls += 1
        return verify_mosquitto_password(password, hashed)


def checker(**kwargs: float) -> tuple[LoginChecker, Registry, CountingVerify, Clock]:
    registry, verify, clock = Registry(), CountingVerify(), Clock()
    return LoginChecker(registry, verify, clock=clock, **kwargs), registry, verify, clock  # type: ignore[arg-type]


def test_a_repeated_login_skips_pbkdf2_but_still_reads_the_row() -> None:
    logins, registry, verify, _ = checker()
    assert logins.check("dev-1", "right").device_id == "dev-1"
    again = logins.check("dev-1", "right")
    assert again.device_id == "dev-1" and again.cached
    assert verify.calls == 1 and registry.lookups == 2


def test_a_revoked_device_is_refused_even_with_a_cached_login() -> None:
    logins, registry, _, _ = checker()
    logins.check("dev-1", "right")
    del registry.accounts["dev-1"]  # revoked: the lookup returns only enrolled devices
    assert logins.check("dev-1", "right").device_id is None


def test_a_new_password_misses_the_cache_and_the_old_one_is_refused() -> None:
    logins, registry, _, _ = checker()
    logins.check("dev-1", "right")
    registry.accounts["dev-1"] = Account("dev-1", mosquitto_password_hash("new"))
    assert logins.check("dev-1", "right").device_id is None
    assert logins.check("dev-1", "new").device_id == "dev-1"


def test_the_cache_expires_and_a_wrong_password_never_hits_it() -> None:
    logins, _, verify, clock = checker(ttl_s=10)
    logins.check("dev-1", "right")
    assert logins.check("dev-1", "wrong").device_id is None
    clock.now += 11
    assert not logins.check("dev-1", "right").cached
    assert verify.calls == 3


def test_guessing_is_throttled_per_username_without_locking_out_a_known_login() -> None:
    logins, _, verify, clock = checker(max_failures=3, window_s=60)
    logins.check("dev-1", "right")
    for _ in range(3):
        assert logins.check("dev-1", "guess").why == "wrong password"
    calls = verify.calls
    throttled = logins.check("dev-1", "guess")
    assert throttled.device_id is None and "too many" in throttled.why
    assert verify.calls == calls  # no PBKDF2 spent on it
    assert logins.check("dev-1", "right").device_id == "dev-1"  # cached: the device still gets in
    clock.now += 61
    assert logins.check("dev-1", "guess").why == "wrong password"  # a new window


def test_forget_drops_the_cached_login() -> None:
    logins, _, verify, _ = checker()
    logins.check("dev-1", "right")
    logins.forget("dev-1")
    assert not logins.check("dev-1", "right").cached and verify.calls == 2


def test_the_cache_is_bounded() -> None:
    logins, registry, _, _ = checker(max_entries=2)
    for name in ("a", "b", "c"):
        registry.accounts[name] = Account(name, HASH)
        logins.check(name, "right")
    assert not logins.check("a", "right").cached
    assert logins.check("c", "right").cached

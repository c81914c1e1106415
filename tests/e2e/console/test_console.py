"""The web console in a real browser against a real fleet: Mosquitto, `edgefleet server`, three agents.

A person's path, in order (one stack for the module; each test leaves the fleet as the next
expects): log in and see the fleet; create a rollout from the form and watch it advance with
no reload; a broken version halts with its reason shown and is rolled back from the page; a
drift chart moves after the inputs of the devices shift; a device is revoked. Every test
asserts on what the page shows. Then the security properties over plain HTTP: every page
redirects to the login without a session, a state change without its CSRF token is refused,
and the viewer token cannot act. Each page is photographed (docs/console/ when
EDGEFLEET_CONSOLE_SCREENSHOTS=docs/console, tests/e2e/console/browser.py).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from selenium.webdriver.support.ui import Select

from simulation.fleet import wait_until
from simulation.load import PredictionLoad
from tests.e2e.console.browser import SHOTS_ENV, Page, chromium
from tests.e2e.stack import PROFILE, Stack
from tests.support.bundles import make_broken_bundle

pytestmark = [pytest.mark.mosquitto, pytest.mark.timeout(900)]

VIEWER_TOKEN = "viewer-" + "v" * 24
PAGES = ("/console/", "/console/devices", "/console/devices/dev-anything", "/console/models", "/console/rollouts",
         "/console/rollouts/ro-0123abcd", "/console/drift")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("console")
    stack = Stack(root, server_env={"EDGEFLEET_VIEWER_TOKEN": VIEWER_TOKEN})
    try:
        # Telemetry every second with drift counts in each batch, so the drift chart moves in seconds.
        stack.add_agents(3, settings={"telemetry_interval_s": 1, "telemetry_drift_every": 1})
        for agent in stack.agents:
            agent.wait_ready()
        stack.push("1.0.0")
        stack.push("1.1.0")
        stack.admin.push_model(make_broken_bundle(root / "bundles", name="digits", version="2.0.0", profile=PROFILE))
        stack.wait_state(stack.rollout("1.0.0")["id"], "completed")
        yield stack
    finally:
        stack.close()


@pytest.fixture(scope="module")
def page(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Page]:
    shots = Path(os.environ[SHOTS_ENV]).resolve() if os.environ.get(SHOTS_ENV) else tmp_path_factory.mktemp("shots")
    driver = chromium(tmp_path_factory.mktemp("chromium-profile"))
    try:
        yield Page(driver, stack.server.url, shots)
    finally:
        driver.quit()


def _as_admin(stack: Stack, page: Page) -> None:
    """Log in unless the previous test left an admin session (so each test also runs alone, with -k)."""
    page.open("/console/")
    page.wait(lambda: page.path.startswith(("/console/login", "/console/")), "a console page")
    if page.path.startswith("/console/login"):
        page.login(stack.server.admin_token)


def _on(stack: Stack, version: str) -> int:
    return sum(1 for v in stack.versions().values() if v == version)


def test_login_page_refuses_a_wrong_token_then_shows_the_fleet(stack: Stack, page: Page) -> None:
    page.open("/console/")
    page.wait(lambda: page.path.startswith("/console/login"), "the redirect to the login page")
    page.screenshot("login")
    page.find("#token").send_keys("not-the-token")
    page.find("#login").click()
    page.wait_text("#login-error", "not the admin or the viewer token")

    page.login(stack.server.admin_token)
    assert page.path == "/console/"
    page.wait_text("#card-online", "3 online")
    page.wait_text("#by-profile", f"{PROFILE} 3 0")
    page.wait_text("#by-label", "site=e2e 3 0")
    page.wait_text("#versions", "digits@1.0.0 3")
    assert "0 alerts firing" in page.text("#card-alerts")
    assert page.text("#role") == "admin"
    page.screenshot("fleet")


def test_create_a_rollout_from_the_form_and_watch_it_advance_without_reloading(stack: Stack, page: Page) -> None:
    _as_admin(stack, page)
    page.open("/console/rollouts")
    page.wait_text("#rollouts-table", "completed")
    page.wait(lambda: page.find("#r-model").get_attribute("value") == "digits", "the model list")
    selector = page.find("#r-selector")
    selector.send_keys("site=nowhere")
    page.wait_text("#r-preview", "matches 0 devices")
    selector.clear()
    selector.send_keys("site=e2e")
    page.wait_text("#r-preview", "matches 3 devices")
    versions = [o.text for o in page.all("#r-version option")]
    assert "1.1.0" in versions and "1.0.0" in versions
    Select(page.find("#r-version")).select_by_visible_text("1.1.0")
    waves = page.find("#r-waves")
    waves.clear()
    waves.send_keys("34,100")
    bake = page.find("#r-bake")
    bake.clear()
    bake.send_keys("2")
    page.screenshot("rollout-new")
    page.find("#r-create").click()
    page.confirm()
    page.wait(lambda: re.fullmatch(r"/console/rollouts/ro-[0-9a-f]+", page.path), "the rollout's page")
    # A mark on the window: a reload would lose it, so finding it at the end proves there was none.
    page.driver.execute_script("window.__noReload = 'still here';")
    seen_states: set[str] = set()

    def progress() -> bool:
        seen_states.add(page.find("#rollout-state").get_attribute("data-state") or "")
        return "completed" in seen_states

    page.wait(progress, "the rollout to complete on the page", timeout=120)
    assert "running" in seen_states, f"the page never showed the rollout running: {seen_states}"
    page.wait_text("#rollout-counts", "committed 3")
    waves_text = page.text("#rollout-waves")
    # Each wave shows its size, nothing pending or in flight, all of it committed, none failed.
    first = re.search(r"^1 34(?:\.0)? (\d) 0 0 \1 0 0 0\.0%$", waves_text, re.M)
    second = re.search(r"^2 100(?:\.0)? (\d) 0 0 \1 0 0 0\.0%$", waves_text, re.M)
    assert first and second and int(first.group(1)) + int(second.group(1)) == 3, waves_text
    assert page.driver.execute_script("return window.__noReload;") == "still here"
    assert page.text("#halt-reason") == ""
    page.screenshot("rollout")
    wait_until(lambda: _on(stack, "1.1.0") == 3, 60, "every device to report 1.1.0")


def test_broken_version_halts_with_its_reason_and_is_rolled_back_from_the_page(stack: Stack, page: Page) -> None:
    _as_admin(stack, page)
    page.open("/console/rollouts")
    page.wait(lambda: page.find("#r-model").get_attribute("value") == "digits", "the model list")
    Select(page.find("#r-version")).select_by_visible_text("2.0.0")
    page.find("#r-selector").send_keys("site=e2e")
    page.wait_text("#r-preview", "matches 3 devices")
    waves = page.find("#r-waves")
    waves.clear()
    waves.send_keys("100")
    failures = page.find("#r-maxfail")
    failures.clear()
    failures.send_keys("0")
    page.find("#r-create").click()
    page.confirm()
    page.wait(lambda: re.fullmatch(r"/console/rollouts/ro-[0-9a-f]+", page.path), "the rollout's page")
    page.wait_text("#rollout-state", "halted", timeout=120)
    reason = page.wait_text("#halt-reason", "Halted:")
    assert "fail" in reason.lower(), reason
    failures_shown = page.wait_text("#rollout-failures", "health_failed")
    assert "dev-" in failures_shown
    assert page.find("#rollout-actions [data-command='resume']").get_attribute("disabled") is not None
    page.screenshot("rollout-halted")

    page.find("#rollout-actions [data-command='rollback']").click()
    page.confirm()
    page.wait_text("#rollout-state", "rolled_back", timeout=120)
    page.wait_text("#rollout-log", "rolled back by an operator")
    wait_until(lambda: _on(stack, "1.1.0") == 3, 90, "every device back on 1.1.0")
    page.open("/console/")
    page.wait_text("#versions", "digits@1.1.0 3")
    assert "digits@2.0.0" not in page.text("#versions")


def test_models_page_shows_sizes_and_the_conversion_proof(stack: Stack, page: Page) -> None:
    _as_admin(stack, page)
    page.open("/console/models")
    table = page.wait_text("#models-table", "2.0.0")
    assert "1.0.0" in table and "1.1.0" in table and "KiB" in table
    page.find("tr[data-model='digits@1.1.0'] a").click()
    proof = page.wait_text("#model-detail", "Conversion proof of digits@1.1.0")
    assert "agreement" in proof, proof
    page.screenshot("models")


def test_drift_chart_moves_after_the_inputs_shift(stack: Stack, page: Page) -> None:
    _as_admin(stack, page)
    from sklearn.datasets import load_digits

    rows = load_digits().data[:300].tolist()
    load = PredictionLoad(lambda: [a.url for a in stack.agents], rows, rate_per_s=60.0).start()
    try:
        page.open("/console/drift")
        serving = max(set(stack.versions().values()) - {None}, key=lambda v: _on(stack, str(v)))
        page.wait(lambda: str(serving) in page.text("#d-version"), "the version list")
        Select(page.find("#d-version")).select_by_visible_text(str(serving))  # what the devices serve now
        window = page.find("#d-window")
        window.clear()
        window.send_keys("20")
        window.send_keys("\t")  # the change event resets the series: the chart starts from this window
        page.wait_text("#drift-status", "group fleet", timeout=90)

        def psi() -> float:
            shown = page.find("body").get_attribute("data-max-psi") or ""
            return float(shown) if shown else -1.0

        # A few hundred rows of unshifted inputs score a max PSI (over 64 pixels) of 0.1-0.45 by chance.
        page.wait(lambda: 0 <= psi() < 0.5, "an unshifted PSI before the shift", timeout=90)
        before = psi()
        points_before = page.driver.execute_script(
            "return Chart.getChart('chart-psi').data.labels.length")
        load.shift([a.url for a in stack.agents])
        page.wait(lambda: psi() > 1.0, "the PSI to rise far into the drift band after the shift", timeout=120)
        page.wait_text("#drift-table", "drift")
        series = page.driver.execute_script(
            "const c = Chart.getChart('chart-psi');"
            "return c.data.datasets.map(d => Math.max(...d.data.filter(v => v !== null)));")
        assert max(series) > 1.0 > 0.5 > before, (before, series)
        assert page.driver.execute_script("return Chart.getChart('chart-psi').data.labels.length") > points_before
        page.screenshot("drift")
    finally:
        load.stop()


def test_devices_page_filters_and_a_device_is_revoked_behind_a_confirmation(stack: Stack, page: Page) -> None:
    _as_admin(stack, page)
    page.open("/console/devices")
    page.wait_text("#device-count", "3 of 3 devices")
    page.find("#f-text").send_keys(stack.agents[1].device_id)
    page.wait_text("#device-count", "1 of 3 devices")
    assert stack.agents[1].device_id in page.text("#devices-table")
    assert stack.agents[0].device_id not in page.text("#devices-table")
    page.find("#f-text").send_keys("-nothing-matches")
    page.wait_text("#device-count", "0 of 3 devices")
    page.find("#f-text").clear()
    page.find("#f-label").send_keys("site=e2e")  # an input event: every filter is read again
    page.wait_text("#device-count", "3 of 3 devices")
    page.screenshot("devices")

    victim = stack.agents[2].device_id
    page.open(f"/console/devices/{victim}")
    page.wait_text("#device-facts", "digits@1.1.0")
    events = page.wait_text("#device-events", "committed")
    assert "health_failed" in events, events  # the broken 2.0.0 of the previous test
    page.wait_text("#device-labels", "site e2e")
    page.screenshot("device")

    # Cancel first: nothing happens.
    page.find("#revoke").click()
    page.wait(lambda: page.find("#confirm").get_attribute("open") is not None, "the confirmation dialog")
    page.find("#confirm-cancel").click()
    page.wait(lambda: page.find("#confirm").get_attribute("open") is None, "the dialog to close")
    assert stack.admin.request("GET", f"/api/v1/devices/{victim}")["status"] == "enrolled"

    page.find("#revoke").click()
    page.confirm()
    page.wait_text("#device-state", "revoked")
    page.wait(lambda: not page.find("#revoke").is_displayed(), "the revoke button to go away")
    assert stack.admin.request("GET", f"/api/v1/devices/{victim}")["status"] == "revoked"
    page.open("/console/")
    page.wait_text("#card-revoked", "1 revoked")


# ------------------------------------------------------------------ security, over plain HTTP


def _login(base: str, token: str) -> tuple[httpx.Client, str]:
    client = httpx.Client(base_url=base, timeout=30)
    answer = client.post("/console/login", data={"token": token, "next": "/console/devices"})
    assert answer.status_code == 303 and answer.headers["location"] == "/console/devices"
    cookie = answer.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie, cookie
    csrf = re.search(r'name="csrf-token" content="([^"]+)"', client.get("/console/devices").text)
    assert csrf is not None
    return client, csrf.group(1)


def test_every_page_redirects_to_the_login_without_a_session(stack: Stack) -> None:
    with httpx.Client(base_url=stack.server.url, timeout=30) as anonymous:
        for path in PAGES:
            answer = anonymous.get(path)
            assert answer.status_code == 303, (path, answer.status_code)
            assert answer.headers["location"].startswith("/console/login?next="), path
        assert anonymous.get("/").headers["location"] == "/console/"
        assert anonymous.get("/console/api/v1/devices").status_code == 401
        # A forged or expired cookie is no session either.
        assert anonymous.get("/console/", cookies={"edgefleet_console": "forged"}).status_code == 303
        assert anonymous.post("/console/api/v1/devices/x/revoke").status_code == 401


def test_state_change_without_the_csrf_token_is_refused(stack: Stack) -> None:
    client, csrf = _login(stack.server.url, stack.server.admin_token)
    try:
        target = stack.agents[0].device_id
        for headers in ({}, {"X-CSRF-Token": "wrong"}):
            answer = client.post(f"/console/api/v1/devices/{target}/revoke", headers=headers)
            assert answer.status_code == 403 and "CSRF" in answer.json()["detail"]
            answer = client.patch(f"/console/api/v1/devices/{target}/labels", json={"labels": {"x": "y"}},
                                  headers=headers)
            assert answer.status_code == 403
        device = stack.admin.request("GET", f"/api/v1/devices/{target}")
        assert device["status"] == "enrolled" and "x" not in device["labels"]
        # With the token, the same relay acts: the refusal above was the CSRF check, nothing else.
        answer = client.patch(f"/console/api/v1/devices/{target}/labels", json={"labels": {"x": "y"}},
                              headers={"X-CSRF-Token": csrf})
        assert answer.status_code == 200 and answer.json()["labels"]["x"] == "y"
        client.patch(f"/console/api/v1/devices/{target}/labels", json={"labels": {"x": None}},
                     headers={"X-CSRF-Token": csrf})
        # Logging out needs the token too.
        assert client.post("/console/logout", data={"csrf": "wrong"}).status_code == 403
        assert client.post("/console/logout", data={"csrf": csrf}).status_code == 303
        assert client.get("/console/").status_code == 303
    finally:
        client.close()


def test_the_viewer_token_sees_but_cannot_act(stack: Stack, page: Page) -> None:
    client, csrf = _login(stack.server.url, VIEWER_TOKEN)
    try:
        assert client.get("/console/api/v1/devices").status_code == 200
        target = stack.agents[0].device_id
        answer = client.post(f"/console/api/v1/devices/{target}/revoke", headers={"X-CSRF-Token": csrf})
        assert answer.status_code == 403 and "read-only" in answer.json()["detail"]
        answer = client.post("/console/api/v1/rollouts", headers={"X-CSRF-Token": csrf},
                             json={"model": "digits", "version": "1.0.0"})
        assert answer.status_code == 403
        assert stack.admin.request("GET", f"/api/v1/devices/{target}")["status"] == "enrolled"
        # The viewer token is no API token either.
        assert httpx.get(f"{stack.server.url}/api/v1/devices", headers={"Authorization": f"Bearer {VIEWER_TOKEN}"},
                         timeout=30).status_code == 401
    finally:
        client.close()

    page.logout()
    page.login(VIEWER_TOKEN, f"/console/devices/{target}")
    page.wait_text("#device-facts", "enrolled")
    assert page.text("#role") == "viewer"
    assert not page.find("#revoke").is_displayed()
    assert not page.find("#labels-form").is_displayed()
    page.open("/console/rollouts")
    page.wait_text("#rollouts-table", "rolled_back")
    assert not page.find("#rollout-form").is_displayed()

"""The console's HTML: one layout, a shell per page, and the login form (plain strings, no template engine).

The shells hold the page's structure and nothing from the database: ``static/console.js``
fills them from ``/console/api/v1`` (the relay) and keeps them current by polling. Whatever
comes from a request (a device id in the path, the ``next`` target) is escaped here; the
script writes API data with ``textContent``, never as HTML.
"""

from __future__ import annotations

from collections.abc import Mapping
from html import escape

from fleet_server.console.sessions import Session

# path -> page name; the routes module registers one GET per entry.
PAGES: Mapping[str, str] = {
    "/console/": "fleet",
    "/console/devices": "devices",
    "/console/devices/{device_id}": "device",
    "/console/models": "models",
    "/console/rollouts": "rollouts",
    "/console/rollouts/{rollout_id}": "rollout",
    "/console/drift": "drift",
}
_NAV = (("fleet", "/console/", "Fleet"), ("devices", "/console/devices", "Devices"),
        ("models", "/console/models", "Models"), ("rollouts", "/console/rollouts", "Rollouts"),
        ("drift", "/console/drift", "Drift"))
_SECTION = {"device": "devices", "rollout": "rollouts"}

_CONFIRM = """
<dialog id="confirm"><form method="dialog">
  <p id="confirm-text"></p>
  <menu><button value="cancel" id="confirm-cancel">Cancel</button>
  <button value="ok" id="confirm-ok" class="danger">Confirm</button></menu>
</form></dialog>"""

_BODIES: Mapping[str, str] = {
    "fleet": """
<h1>Fleet</h1>
<section class="cards" id="fleet-cards"></section>
<div class="grid2">
  <section><h2>Online and offline per profile</h2><canvas id="chart-profiles" height="180"></canvas>
    <table id="by-profile"></table></section>
  <section><h2>Per label</h2><table id="by-label"></table></section>
</div>
<div class="grid2">
  <section><h2>Versions in service</h2><table id="versions"></table></section>
  <section><h2>Alerts firing</h2><table id="alerts"></table></section>
</div>
<section><h2>Live rollouts</h2><table id="live-rollouts"></table></section>""",
    "devices": """
<h1>Devices</h1>
<form id="filters" class="filters">
  <input id="f-text" placeholder="id, label or version contains">
  <select id="f-state"><option value="">any state</option><option>online</option><option>offline</option>
    <option>revoked</option></select>
  <select id="f-profile"><option value="">any profile</option></select>
  <input id="f-label" placeholder="label key=value">
</form>
<p id="device-count" class="muted"></p>
<table id="devices-table"></table>
<p class="pager"><button id="page-prev" type="button">Previous</button>
  <button id="page-next" type="button">Next</button></p>""",
    "device": """
<h1>Device <span id="device-id"></span> <span id="device-state" class="badge"></span></h1>
<div class="grid2">
  <section><h2>State</h2><table id="device-facts"></table></section>
  <section><h2>Labels</h2><table id="device-labels"></table>
    <form id="labels-form" class="act"><input id="labels-input" size="40" placeholder="key=value, key=value">
      <button id="labels-save">Save labels</button></form>
    <h2>Revoke</h2><p class="muted">The device's token stops working and the broker drops it.</p>
    <button id="revoke" class="danger act">Revoke device</button></section>
</div>
<section><h2>Health, latency and drift</h2><table id="device-health"></table></section>
<section><h2>Update events</h2><table id="device-events"></table></section>""",
    "models": """
<h1>Models</h1>
<table id="models-table"></table>
<section id="model-detail"></section>""",
    "rollouts": """
<h1>Rollouts</h1>
<section class="act"><h2>New rollout</h2>
<form id="rollout-form" class="grid-form">
  <label>Model <select id="r-model" required></select></label>
  <label>Version <select id="r-version" required></select></label>
  <label>Selector <input id="r-selector" placeholder="e.g. site=a,profile=rpi4-64 (empty: every device)"></label>
  <span id="r-preview" class="preview"></span>
  <label>Waves (%) <input id="r-waves" value="10,50,100"></label>
  <label>Bake time (s) <input id="r-bake" type="number" min="0" value="60"></label>
  <label>Max failure rate <input id="r-maxfail" type="number" step="0.01" min="0" max="0.99" value="0.05"></label>
  <label>Device timeout (s) <input id="r-timeout" type="number" min="1" value="600"></label>
  <label class="check"><input id="r-autorollback" type="checkbox"> roll back automatically on halt</label>
  <button id="r-create">Create rollout</button>
  <p id="r-error" class="error"></p>
</form></section>
<section><h2>All rollouts</h2><table id="rollouts-table"></table></section>""",
    "rollout": """
<h1>Rollout <span id="rollout-id"></span> <span id="rollout-state" class="badge"></span></h1>
<p id="rollout-summary"></p>
<p id="halt-reason" class="error"></p>
<p class="act" id="rollout-actions">
  <button data-command="pause">Pause</button> <button data-command="resume">Resume</button>
  <button data-command="abort" class="danger">Abort</button>
  <button data-command="rollback" class="danger">Roll back</button></p>
<p id="action-error" class="error"></p>
<div class="grid2">
  <section><h2>Devices per state</h2><canvas id="chart-states" height="180"></canvas>
    <table id="rollout-counts"></table></section>
  <section><h2>Waves</h2><table id="rollout-waves"></table></section>
</div>
<section><h2>Failures</h2><table id="rollout-failures"></table></section>
<section><h2>Log</h2><table id="rollout-log"></table></section>""",
    "drift": """
<h1>Drift and quality</h1>
<form id="drift-form" class="filters">
  <select id="d-model"></select> <select id="d-version"></select>
  <select id="d-by"><option value="">whole fleet</option><option value="profile">per profile</option></select>
  <input id="d-label" placeholder="or per label: key">
  <label>window (s) <input id="d-window" type="number" min="10" value="300"></label>
</form>
<p id="drift-status" class="muted"></p>
<div class="grid2">
  <section><h2>PSI per feature over time</h2><canvas id="chart-psi" height="220"></canvas></section>
  <section><h2>Prediction distribution drift (output PSI) and feedback accuracy</h2>
    <canvas id="chart-quality" height="220"></canvas></section>
</div>
<section><h2>PSI per feature now</h2><table id="drift-table"></table></section>
<section><h2>Alert history</h2><canvas id="chart-alerts" height="120"></canvas><table id="alert-table"></table></section>""",
}


def _layout(title: str, body: str, *, page_name: str, session: Session | None, arg: str = "") -> str:
    nav = ""
    meta = ""
    if session is not None:
        current = _SECTION.get(page_name, page_name)
        links = "".join(f'<a href="{href}"{" class=current" if key == current else ""}>{label}</a>'
                        for key, href, label in _NAV)
        nav = (f'<nav><span class="brand">edgefleet</span>{links}<span class="spacer"></span>'
               f'<span class="role" id="role">{escape(session.role)}</span>'
               f'<form method="post" action="/console/logout"><input type="hidden" name="csrf" '
               f'value="{escape(session.csrf)}"><button id="logout">Log out</button></form></nav>')
        meta = f'<meta name="csrf-token" content="{escape(session.csrf)}">'
    role = session.role if session else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{escape(title)} · edgefleet</title>
<meta name="viewport" content="width=device-width, initial-scale=1">{meta}
<link rel="stylesheet" href="/console/static/console.css"></head>
<body data-page="{escape(page_name)}" data-role="{escape(role)}" data-arg="{escape(arg)}">
{nav}<main>{body}</main>{_CONFIRM if session else ""}
<script src="/console/static/chart.umd.min.js"></script>
<script src="/console/static/console.js"></script>
</body></html>"""


def page(name: str, session: Session, params: Mapping[str, str]) -> str:
    arg = next(iter(params.values()), "")
    title = dict((k, label) for k, _, label in _NAV).get(_SECTION.get(name, name), name)
    return _layout(title, _BODIES[name], page_name=name, session=session, arg=arg)


def login_page(next_path: str, *, error: str | None = None, viewer: bool = True) -> str:
    who = "the admin token or the read-only viewer token" if viewer else "the admin token"
    body = f"""
<section class="login"><h1>edgefleet console</h1>
<form method="post" action="/console/login" id="login-form">
<p>Log in with {who}.</p>
<input type="hidden" name="next" value="{escape(next_path)}">
<input type="password" name="token" id="token" autocomplete="current-password" size="48" autofocus>
<button id="login">Log in</button>
{f'<p class="error" id="login-error">{escape(error)}</p>' if error else ""}
<p class="muted">The admin token is in DATA_DIR/admin-token; the viewer token is the server's
<code>viewer_token</code> setting.</p>
</form></section>"""
    return _layout("Log in", body, page_name="login", session=None)

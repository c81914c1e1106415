"""The console's HTTP routes: login and logout, the pages, the static files, and the API relay.

    GET  /                          -> /console/
    GET  /console/login             the login form;  POST /console/login  token -> session cookie
    POST /console/logout            (CSRF field)
    GET  /console/...               the pages (fleet, devices, a device, models, rollouts, a rollout, drift)
    *    /console/api/v1/{path}     the relay: the browser's only way to the API

Every page without a session redirects (303) to the login page. The pages are HTML shells;
``static/console.js`` fills them from the relay and polls it for live updates. The relay
forwards to ``/api/v1`` inside this process (an ASGI call through the app, its middleware
included) with the admin token, so the console is a client of ``/api/v1`` and of nothing
else: no database access here. What the relay lets through:

- GET for any session (viewer or admin);
- POST and PATCH only for an admin session whose request carries the session's CSRF token in
  ``X-CSRF-Token``; anything else is 403 (the viewer cannot act) or 401 (no session).

The token never reaches the browser: the cookie holds a random session id (HttpOnly, so
scripts cannot read it; SameSite=Strict, so no other site's page can send it).
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qs, quote

import httpx
from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse

from edgefleet.problems import MEDIA_TYPE, Problem
from fleet_server.console.pages import PAGES, login_page, page
from fleet_server.console.sessions import ADMIN, VIEWER, Session, SessionStore
from fleet_server.credentials import same_secret

COOKIE = "edgefleet_console"
CSRF_HEADER = "X-CSRF-Token"
STATIC_DIR = Path(__file__).with_name("static")
RELAY_METHODS = ("GET", "POST", "PATCH")
# Pages are not framed (clickjacking a confirmation) and run only our own scripts.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


class Console:
    """The console's state: the session store, the tokens it accepts, and its client of the app."""

    def __init__(self, admin_token: Callable[[], str], viewer_token: str | None,
                 clock: Callable[[], float] = time.time, sessions: SessionStore | None = None) -> None:
        self.admin_token = admin_token
        self.viewer_token = viewer_token
        self.clock = clock
        self.sessions = sessions or SessionStore()

    def role_for(self, token: str) -> str | None:
        if token and same_secret(token, self.admin_token()):
            return ADMIN
        if token and self.viewer_token and same_secret(token, self.viewer_token):
            return VIEWER
        return None

    def session(self, request: Request) -> Session | None:
        return self.sessions.get(request.cookies.get(COOKIE), self.clock())


def _console(request: Request) -> Console:
    console: Console = request.app.state.console
    return console


def _problem(detail: str, status: int, fix: str | None = None) -> Response:
    return Response(json.dumps(Problem(detail, status=status, fix=fix).to_dict()), status_code=status,
                    media_type=MEDIA_TYPE, headers={"Cache-Control": "no-store"})


def _safe_next(target: str | None) -> str:
    # Only our own pages: an open redirect after login would hand a phisher our origin.
    if target and target.startswith("/console/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/console/"


def _to_login(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/console/login?next={quote(target, safe='')}", status_code=303,
                            headers={"Cache-Control": "no-store"})


router = APIRouter(include_in_schema=False)


@router.get("/")
def root() -> RedirectResponse:
    return RedirectResponse("/console/", status_code=307)


@router.get("/console")
def console_root() -> RedirectResponse:
    return RedirectResponse("/console/", status_code=307)


@router.get("/console/login")
def login_form(request: Request, next: str | None = None) -> Response:
    console = _console(request)
    if console.session(request) is not None:
        return RedirectResponse(_safe_next(next), status_code=303)
    return HTMLResponse(login_page(_safe_next(next), viewer=console.viewer_token is not None),
                        headers=SECURITY_HEADERS)


@router.post("/console/login")
async def login(request: Request) -> Response:
    console = _console(request)
    form = parse_qs((await request.body()).decode("utf-8", "replace"))
    token = (form.get("token") or [""])[0].strip()
    target = _safe_next((form.get("next") or [""])[0])
    role = console.role_for(token)
    if role is None:
        return HTMLResponse(login_page(target, error="That token is not the admin or the viewer token.",
                                       viewer=console.viewer_token is not None),
                            status_code=401, headers=SECURITY_HEADERS)
    session = console.sessions.create(role, console.clock())
    response = RedirectResponse(target, status_code=303, headers={"Cache-Control": "no-store"})
    response.set_cookie(COOKIE, session.id, max_age=int(console.sessions.ttl_s), path="/", httponly=True,
                        samesite="strict", secure=request.url.scheme == "https")
    return response


@router.post("/console/logout")
async def logout(request: Request) -> Response:
    console = _console(request)
    session = console.session(request)
    form = parse_qs((await request.body()).decode("utf-8", "replace"))
    if session is not None:
        if not secrets.compare_digest((form.get("csrf") or [""])[0], session.csrf):
            return _problem("the logout form's CSRF token is missing or wrong", 403, fix="reload the page")
        console.sessions.end(session.id)
    response = RedirectResponse("/console/login", status_code=303)
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
    return response


def _page_route(name: str) -> Callable[..., Response]:
    def show(request: Request) -> Response:
        session = _console(request).session(request)
        if session is None:
            return _to_login(request)
        return HTMLResponse(page(name, session, request.path_params), headers=SECURITY_HEADERS)

    show.__name__ = f"page_{name}"
    return show


for _path, _name in PAGES.items():
    router.add_api_route(_path, _page_route(_name), methods=["GET"], response_class=HTMLResponse)


@router.api_route("/console/api/v1/{path:path}", methods=list(RELAY_METHODS))
async def relay(request: Request, path: str) -> Response:
    console = _console(request)
    session = console.session(request)
    if session is None:
        return _problem("no console session", 401, fix="log in at /console/login")
    if request.method != "GET":
        if not session.can_act:
            return _problem("the viewer token is read-only", 403, fix="log in with the admin token to act")
        sent = request.headers.get(CSRF_HEADER, "")
        if not sent or not secrets.compare_digest(sent, session.csrf):
            return _problem(f"the {CSRF_HEADER} header is missing or wrong", 403, fix="reload the page and retry")
    body = await request.body()
    headers = {"Authorization": f"Bearer {console.admin_token()}", "Accept": "application/json"}
    if request.headers.get("content-type"):
        headers["Content-Type"] = request.headers["content-type"]
    transport = httpx.ASGITransport(app=request.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://console.local") as client:
        answer = await client.request(request.method, "/api/v1/" + path, params=request.url.query or None,
                                      content=body or None, headers=headers)
    return Response(answer.content, status_code=answer.status_code,
                    media_type=answer.headers.get("content-type", "application/json"),
                    headers={"Cache-Control": "no-store"})

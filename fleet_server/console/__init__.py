"""The web console: pages for the fleet, devices, models, rollouts and drift, served by the fleet server.

``install_console(app, ctx, config)`` mounts it (``fleet_server.app`` does). The console is a
client of ``/api/v1`` only: ``routes`` relays the browser's calls into the same app with the
admin token, after checking the session, its role and its CSRF token (``sessions``). The
pages (``pages``) are HTML shells that ``static/console.js`` fills and keeps live by polling;
the static files (the script, the stylesheet, Chart.js with its licence) ship in the package,
so there is no build step and no CDN. docs/console.md says why it is built this way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from fleet_server.console.routes import STATIC_DIR, Console, router
from fleet_server.console.sessions import ADMIN, VIEWER, SessionStore

if TYPE_CHECKING:
    from fleet_server.config import ServerConfig
    from fleet_server.context import ServerContext

__all__ = ["ADMIN", "VIEWER", "Console", "SessionStore", "install_console"]


def install_console(app: FastAPI, ctx: ServerContext, config: ServerConfig) -> Console:
    console = Console(lambda: ctx.admin_token.value, config.viewer_token)
    app.state.console = console
    app.include_router(router)
    app.mount("/console/static", StaticFiles(directory=STATIC_DIR), name="console-static")
    return console

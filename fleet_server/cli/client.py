"""The admin client: the CLI's only way to the server, over the REST API with httpx.

``AdminClient`` turns every failure into one ``ClientError`` that names the problem and the
fix: server unreachable, token missing or wrong, or the server's own problem document
(``RefusedError``, which keeps it whole: ``edgefleet ... --json`` prints it as the server sent it).
``resolve_client_settings`` finds the server URL and token: flags, then ``EDGEFLEET_SERVER`` /
``EDGEFLEET_TOKEN``, then ``~/.config/edgefleet/cli.toml`` (``server = "..."``, ``token = "..."``).

No server code is imported here, so the CLI on an operator's laptop needs only httpx.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from edgefleet.problems import Problem
from fleet_server.errors import ClientError

DEFAULT_SERVER = "http://127.0.0.1:8080"
CONFIG_FILE = Path("~/.config/edgefleet/cli.toml")


class RefusedError(ClientError):
    """The server answered with an error; ``problem`` is its answer (docs/api.md, "Errors")."""

    def __init__(self, message: str, *, problem: Problem, fix: str | None = None) -> None:
        self.problem = problem
        super().__init__(message, fix=fix)


@dataclass(frozen=True)
class ClientSettings:
    server: str
    token: str | None

    def __post_init__(self) -> None:
        if not self.server.startswith(("http://", "https://")):
            raise ClientError(f"server URL {self.server!r} is not http(s)", fix="e.g. --server http://127.0.0.1:8080")


def resolve_client_settings(server: str | None = None, token: str | None = None,
                            env: Mapping[str, str] | None = None, config_file: Path | None = None) -> ClientSettings:
    env = os.environ if env is None else env
    path = (config_file or Path(env.get("EDGEFLEET_CLI_CONFIG", str(CONFIG_FILE)))).expanduser()
    file_values: dict[str, Any] = {}
    if path.is_file():
        try:
            file_values = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ClientError(f"{path} is not valid TOML: {exc}") from exc
    chosen_server = server or env.get("EDGEFLEET_SERVER") or file_values.get("server") or DEFAULT_SERVER
    chosen_token = token or env.get("EDGEFLEET_TOKEN") or file_values.get("token")
    return ClientSettings(str(chosen_server).rstrip("/"), str(chosen_token) if chosen_token else None)


class ProgressReader:
    """A file opened for upload that reports how many bytes have been read from it.

    httpx streams a multipart file in 64 KiB reads (after a ``seek(0)``) and sizes it with
    ``fileno()``/``fstat``, so those are passed through; the count follows the position.
    """

    def __init__(self, handle: BinaryIO, report: Callable[[int, int], None]) -> None:
        self._handle = handle
        self._report = report
        self.total = os.fstat(handle.fileno()).st_size

    def fileno(self) -> int:
        return self._handle.fileno()

    def tell(self) -> int:
        return self._handle.tell()

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._handle.seek(offset, whence)

    def read(self, size: int = -1) -> bytes:
        chunk = self._handle.read(size)
        self._report(self._handle.tell(), self.total)
        return chunk


class AdminClient:
    def __init__(self, settings: ClientSettings, *, timeout: float = 60.0, transport: Any = None) -> None:
        import httpx

        self.settings = settings
        headers = {"Authorization": f"Bearer {settings.token}"} if settings.token else {}
        self._http = httpx.Client(base_url=settings.server, headers=headers, timeout=timeout, transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """Call the API and return the decoded JSON, or raise ClientError with the server's reason."""
        import httpx

        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ClientError(f"cannot reach the edgefleet server at {self.settings.server} ({type(exc).__name__})",
                              fix="start it with `edgefleet server`, or pass --server URL / set EDGEFLEET_SERVER") from exc
        if response.status_code >= 400:
            problem = _problem(response)
            fix: str | None
            if response.status_code == 401 and not self.settings.token:
                message, fix = "no admin token given", \
                    "pass --token, set EDGEFLEET_TOKEN, or put token = \"...\" in ~/.config/edgefleet/cli.toml"
            elif response.status_code == 401:
                message, fix = "the server refused the admin token", "use the token from the server's DATA_DIR/admin-token"
            else:
                message, fix = f"{problem.detail} ({response.status_code})", problem.fix
            if response.status_code == 401:  # the CLI knows better than the server where its token came from
                problem = dataclasses.replace(problem, detail=message, fix=fix)
            raise RefusedError(message, fix=fix, problem=problem)
        try:
            return response.json()
        except ValueError as exc:
            raise ClientError(f"the server at {self.settings.server} answered with non-JSON (is it an edgefleet server?)",
                              fix="check --server") from exc

    # The endpoints, one method each.
    def push_model(self, bundle: Path, progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
        """Upload a bundle; ``progress(sent, total)`` is called as httpx reads each chunk of it."""
        try:
            with open(bundle, "rb") as handle:
                body: Any = handle if progress is None else ProgressReader(handle, progress)
                result: dict[str, Any] = self.request(
                    "POST", "/api/v1/models", files={"bundle": (bundle.name, body, "application/gzip")})
        except FileNotFoundError as exc:
            raise ClientError(f"bundle {bundle} does not exist", fix="check the path") from exc
        return result

    def list_models(self, name: str | None = None) -> list[dict[str, Any]]:
        return list(self.request("GET", "/api/v1/models", params={"name": name} if name else None))

    def show_model(self, name: str, version: str) -> dict[str, Any]:
        return dict(self.request("GET", f"/api/v1/models/{name}/{version}"))

    def yank_model(self, name: str, version: str) -> dict[str, Any]:
        return dict(self.request("POST", f"/api/v1/models/{name}/{version}/yank"))

    def create_enrollment_token(self, profile: str, labels: Mapping[str, str], ttl_seconds: int | None) -> dict[str, Any]:
        body: dict[str, Any] = {"profile": profile, "labels": dict(labels)}
        if ttl_seconds is not None:
            body["ttl_seconds"] = ttl_seconds
        return dict(self.request("POST", "/api/v1/devices/enrollment-tokens", json=body))

    def list_devices(self, status: str | None = None) -> list[dict[str, Any]]:
        return list(self.request("GET", "/api/v1/devices", params={"status": status} if status else None))

    def show_device(self, device_id: str) -> dict[str, Any]:
        return dict(self.request("GET", f"/api/v1/devices/{device_id}"))

    def label_device(self, device_id: str, changes: Mapping[str, str | None]) -> dict[str, Any]:
        return dict(self.request("PATCH", f"/api/v1/devices/{device_id}/labels", json={"labels": dict(changes)}))

    def revoke_device(self, device_id: str) -> dict[str, Any]:
        return dict(self.request("POST", f"/api/v1/devices/{device_id}/revoke"))

    def model_drift(self, name: str, version: str, *, by: str | None = None,
                    window_s: float | None = None) -> dict[str, Any]:
        params: dict[str, Any] = {}
        if by:
            params["by"] = by
        if window_s is not None:
            params["window"] = window_s
        return dict(self.request("GET", f"/api/v1/models/{name}/{version}/drift", params=params or None))


def _problem(response: Any) -> Problem:
    """The server's error answer as a problem; a body that is not one is described, not trusted."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        return Problem(f"the server answered {response.status_code}: {response.text[:200]}",
                       status=response.status_code if 100 <= response.status_code <= 599 else None)
    return Problem.from_dict(body, status=response.status_code)

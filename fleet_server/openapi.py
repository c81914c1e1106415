"""The server's OpenAPI document, made to say what the API really answers.

FastAPI documents a 422 body of its own (``HTTPValidationError``) that this server never sends,
and no other error. ``install_openapi`` post-processes the generated document once:

* every operation documents its error answers as problem details (``edgefleet.problems``,
  ``application/problem+json``, schema ``Problem``): 422 where it takes parameters or a body,
  401 where it needs a bearer token, 404 where it has path parameters, 413 where it takes a
  body, any status a route declares itself, and ``4XX``/``5XX`` for the rest;
* FastAPI's ``HTTPValidationError`` and ``ValidationError`` schemas are removed.

It changes documentation only, never what a route does: ``fleet_server.app`` renders the
problems. Routes keep declaring their own special statuses (``409``, ``410``) with ``responses=``.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, Field

from edgefleet.problems import MEDIA_TYPE

__all__ = ["ProblemOut", "install_openapi"]

_REF = "#/components/schemas/Problem"


class FieldErrorOut(BaseModel):
    field: str = Field(description="where: a body member path such as labels.site, or a parameter name")
    detail: str


class ProblemOut(BaseModel):
    """RFC 9457 problem details with edgefleet's ``fix`` (docs/api.md, "Errors")."""

    type: str = Field(description="urn:edgefleet:problem:KIND, or about:blank")
    title: str = Field(description="the HTTP reason phrase")
    status: int = Field(ge=100, le=599)
    detail: str = Field(description="what is wrong, for a person")
    fix: str | None = Field(description="what to do about it; null when no fix is known")
    field: str | None = Field(default=None, description="the input or column at fault, where there is one")
    errors: list[FieldErrorOut] | None = Field(default=None, description="schema violations, one per field (422)")


_DESCRIPTIONS = {
    "401": "missing or wrong bearer token",
    "404": "no such resource",
    "413": "request body over the limit",
    "422": "invalid input: the problem names the field",
    "4XX": "refused: the problem says why and how to fix it",
    "5XX": "the server failed: the problem says what to retry",
}


def _problem_response(description: str) -> dict[str, Any]:
    return {"description": description, "content": {MEDIA_TYPE: {"schema": {"$ref": _REF}}}}


def _error_statuses(operation: dict[str, Any]) -> list[str]:
    statuses = ["4XX", "5XX"]
    parameters = operation.get("parameters") or []
    if parameters or "requestBody" in operation:
        statuses.append("422")
    if operation.get("security"):
        statuses.append("401")
    if any(p.get("in") == "path" for p in parameters):
        statuses.append("404")
    if "requestBody" in operation:
        statuses.append("413")
    return statuses


def document_problems(schema: dict[str, Any]) -> dict[str, Any]:
    """Rewrite a generated OpenAPI document in place (see the module docstring); returns it."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    problem = ProblemOut.model_json_schema(ref_template="#/components/schemas/{model}")
    components.update(problem.pop("$defs", {}))
    components["Problem"] = problem
    for path_item in schema.get("paths", {}).values():
        for operation in path_item.values():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            responses = operation["responses"]
            for status in _error_statuses(operation):
                responses.setdefault(status, {"description": _DESCRIPTIONS[status]})
            for status, response in responses.items():
                if status[0] in "45":
                    description = response.get("description") or _DESCRIPTIONS.get(status, "refused")
                    if description == "Validation Error":  # FastAPI's, for a body we do not send
                        description = _DESCRIPTIONS["422"]
                    responses[status] = _problem_response(description)
    return schema


def install_openapi(app: FastAPI) -> None:
    """Make ``app.openapi()`` (and so ``/openapi.json``) return the rewritten document, built once."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document_problems(get_openapi(
                title=app.title, version=app.version, openapi_version=app.openapi_version,
                description=app.description, routes=app.routes))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

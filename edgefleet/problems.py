"""The one error shape: RFC 9457 problem details, with edgefleet's ``fix``.

Every refusal that leaves an edgefleet process as data takes this shape: the fleet server's
REST answers, the agent's local API, and the CLI's ``--json`` output.

    {"type": "urn:edgefleet:problem:invalid-input", "title": "Unprocessable Content",
     "status": 422, "detail": "profile: no firmware profile named 'x'",
     "fix": "use one of: rpi4-64, jetson-orin"}

- ``type``: a URI naming the kind of problem. ``urn:edgefleet:problem:<kind>`` where ``kind`` is
  the error class without its ``Error`` suffix, in kebab case (``InputError`` → ``input``,
  ``NotFoundError`` → ``not-found``); ``about:blank`` where nothing more than the status is known.
- ``title``: a short summary; the HTTP reason phrase of ``status`` unless given.
- ``status``: the HTTP status. Present on every HTTP answer; in CLI ``--json`` output only when the
  error came from an HTTP answer (omitted otherwise).
- ``detail``: the message for a person, the error's ``message``.
- ``fix``: what to do about it, or ``null`` when no fix is known (always present).
- extension members, e.g. ``field`` (the input at fault), ``errors`` (a list of
  ``{"field", "detail"}`` for schema violations), ``reason`` (an assignment refusal code).

The media type is ``application/problem+json``. This module is pure and uses only the standard
library, so the agent imports it; it does no HTTP itself and knows no framework. The server's
exception handlers, the agent's API and the CLI render with it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from edgefleet.errors import AssignmentError, EdgefleetError, InputError

__all__ = ["MEDIA_TYPE", "Problem", "from_error", "problem_type", "title_for"]

MEDIA_TYPE = "application/problem+json"
BLANK = "about:blank"
TYPE_PREFIX = "urn:edgefleet:problem:"

# The members RFC 9457 defines plus ours; an extension member may not take one of these names.
STANDARD_MEMBERS = frozenset({"type", "title", "status", "detail", "instance", "fix"})


def title_for(status: int | None) -> str:
    """The HTTP reason phrase of ``status`` ("Error" for an unknown status or none)."""
    if status is None:
        return "Error"
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def problem_type(error_class: type[BaseException]) -> str:
    """``urn:edgefleet:problem:<kind>`` for an error class (``NotFoundError`` → ``not-found``)."""
    name = error_class.__name__
    if name.endswith("Error") and len(name) > len("Error"):
        name = name[: -len("Error")]
    kind = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "-", name).lower()
    return TYPE_PREFIX + kind


@dataclass(frozen=True)
class Problem:
    """One problem details document. ``extra`` holds extension members (``field``, ``errors``)."""

    detail: str
    status: int | None = None
    fix: str | None = None
    type: str = BLANK
    title: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status is not None and not (isinstance(self.status, int) and 100 <= self.status <= 599):
            raise ValueError(f"problem status must be an HTTP status (100-599), got {self.status!r}")
        clash = STANDARD_MEMBERS & set(self.extra)
        if clash:
            raise ValueError(f"problem extension members may not be named {sorted(clash)}")
        if not self.title:
            object.__setattr__(self, "title", title_for(self.status))

    def to_dict(self) -> dict[str, Any]:
        """The JSON object, members in RFC order; ``status`` left out when there is none."""
        document: dict[str, Any] = {"type": self.type, "title": self.title}
        if self.status is not None:
            document["status"] = self.status
        document["detail"] = self.detail
        document["fix"] = self.fix
        document.update(self.extra)
        return document

    def render(self) -> bytes:
        """UTF-8 JSON for a response body or a CLI line (one line, no trailing newline)."""
        return json.dumps(self.to_dict(), ensure_ascii=False, separators=(",", ":"), default=str).encode()

    @classmethod
    def from_dict(cls, document: Mapping[str, Any], *, status: int | None = None) -> Problem:
        """Read a problem document leniently (a client reading an answer it did not write).

        Missing or ill-typed members fall back: ``detail`` to ``title`` or the whole document,
        ``status`` to the given HTTP status. Older ``{"detail", "fix"}`` and the agent's former
        ``{"error", "fix"}`` answers read too.
        """
        detail = document.get("detail")
        if not isinstance(detail, str):
            detail = document.get("error") if isinstance(document.get("error"), str) else None
        if not isinstance(detail, str):
            title = document.get("title")
            detail = title if isinstance(title, str) and title else json.dumps(dict(document), default=str)
        raw_status = document.get("status")
        if isinstance(raw_status, int) and not isinstance(raw_status, bool) and 100 <= raw_status <= 599:
            status = raw_status
        fix = document.get("fix")
        kind = document.get("type")
        title = document.get("title")
        extra = {key: value for key, value in document.items()
                 if key not in STANDARD_MEMBERS and key != "error"}
        return cls(detail=detail, status=status, fix=fix if isinstance(fix, str) else None,
                   type=kind if isinstance(kind, str) and kind else BLANK,
                   title=title if isinstance(title, str) else "", extra=extra)


def from_error(error: EdgefleetError, *, status: int | None = None, title: str = "",
               **extra: Any) -> Problem:
    """The problem for an edgefleet error: its message, its fix, a type named after its class.

    ``InputError.field`` and ``AssignmentError.reason`` become the ``field`` and ``reason``
    members; ``extra`` adds more (``None`` values are left out).
    """
    members: dict[str, Any] = {}
    if isinstance(error, InputError) and error.field is not None:
        members["field"] = error.field
    if isinstance(error, AssignmentError):
        members["reason"] = error.reason
    members.update({key: value for key, value in extra.items() if value is not None})
    return Problem(detail=error.message, status=status, fix=error.fix, type=problem_type(type(error)),
                   title=title, extra=members)

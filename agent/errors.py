"""The agent's exception hierarchy.

    EdgefleetError (edgefleet.errors)
    └── AgentError              base of everything the agent raises on purpose
        ├── StateError          the state directory is missing, unreadable or not enrolled
        ├── SlotError           a model slot is missing, partial or altered on disk
        ├── InferenceError      a runtime could not load or run a model
        ├── InputError          a request's input does not fit the model (the API answers 4xx)
        ├── ModelNotFoundError  no model of that name is being served (the API answers 404)
        ├── LinkError           the MQTT link was misconfigured
        └── EnrollmentError     the server refused or could not be reached for enrollment

Foreign exceptions (onnxruntime, paho, urllib, OS errors) are wrapped where they enter the
agent with ``raise ... from e`` so the CLI can print one line naming the problem and the fix.
"""

from __future__ import annotations

from edgefleet.errors import EdgefleetError


class AgentError(EdgefleetError):
    """Base of every error the agent raises on purpose."""


class StateError(AgentError):
    """The state directory is missing, unreadable or not enrolled."""


class SlotError(AgentError):
    """A model slot is missing, partial or altered; it must never serve."""


class InferenceError(AgentError):
    """A runtime could not load or run a model."""


class InputError(AgentError):
    """A request's input does not fit the model. ``status`` is the HTTP status to answer."""

    def __init__(self, message: str, *, fix: str | None = None, status: int = 400) -> None:
        self.status = status
        super().__init__(message, fix=fix)


class ModelNotFoundError(AgentError):
    """No model of that name is being served."""


class LinkError(AgentError):
    """The MQTT link is misconfigured (bad URL, missing credentials)."""


class EnrollmentError(AgentError):
    """Enrollment was refused by the server or the server could not be reached."""

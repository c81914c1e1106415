"""The agent's exception hierarchy.

    EdgefleetError (edgefleet.errors)
    └── AgentError              base of everything the agent raises on purpose
        ├── StateError          the state directory is missing, unreadable or not enrolled
        ├── SlotError           a model slot is missing, partial or altered on disk
        ├── InferenceError      a runtime could not load or run a model
        ├── BatchInputError     a batch file's input does not fit the model (also an
        │                       edgefleet.errors.InputError, the class the request parser raises)
        ├── ModelNotFoundError  no model of that name is being served (the API answers 404)
        ├── LinkError           the MQTT link was misconfigured
        └── EnrollmentError     the server refused or could not be reached for enrollment

The request parser (``edgefleet.inputs``) is shared with the server and raises the core
``edgefleet.errors.InputError``: code that catches its refusals catches the core class, which
``BatchInputError`` derives from too. The names differ on purpose: the core class is a refused
request, this one a refused batch file.

Foreign exceptions (onnxruntime, paho, urllib, OS errors) are wrapped where they enter the
agent with ``raise ... from e`` so the CLI can print one line naming the problem and the fix.
"""

from __future__ import annotations

from edgefleet.errors import EdgefleetError
from edgefleet.errors import InputError as CoreInputError


class AgentError(EdgefleetError):
    """Base of every error the agent raises on purpose."""


class StateError(AgentError):
    """The state directory is missing, unreadable or not enrolled."""


class SlotError(AgentError):
    """A model slot is missing, partial or altered; it must never serve."""


class InferenceError(AgentError):
    """A runtime could not load or run a model."""


class BatchInputError(AgentError, CoreInputError):
    """Input the agent itself refuses (batch files); ``status`` as in the core class."""


class ModelNotFoundError(AgentError):
    """No model of that name is being served."""


class LinkError(AgentError):
    """The MQTT link is misconfigured (bad URL, missing credentials)."""


class EnrollmentError(AgentError):
    """Enrollment was refused by the server or the server could not be reached."""

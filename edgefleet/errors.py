"""The exception hierarchy of the contracts package.

    EdgefleetError
    ├── ProfileError        a firmware profile is missing or malformed
    ├── ManifestError       a bundle manifest breaks the schema
    ├── BundleError         a bundle archive is malformed, truncated or tampered with
    ├── AssignmentError     a signed assignment is refused (signature, device, counter, expiry)
    ├── VersionError        a version string is not semantic
    ├── BrokerUrlError      a broker URL (or a list of them) cannot be parsed
    └── InputError          a predict request's input does not fit the model (``status``: 400, 413)

Every error carries a message meant for a person: what is wrong and, where one is known,
the fix. The CLI prints ``str(error)`` as one line and exits non-zero.
Other packages (agent, converter, fleet_server) derive their own bases from EdgefleetError
so that one ``except EdgefleetError`` in the CLI catches them all.
"""

from __future__ import annotations


class EdgefleetError(Exception):
    """Base of every error edgefleet raises on purpose."""

    def __init__(self, message: str, *, fix: str | None = None) -> None:
        self.message = message
        self.fix = fix
        super().__init__(f"{message} (fix: {fix})" if fix else message)


class ProfileError(EdgefleetError):
    """A firmware profile is missing or malformed."""


class ManifestError(EdgefleetError):
    """A bundle manifest does not follow the schema."""


class BundleError(EdgefleetError):
    """A bundle archive is malformed, truncated or tampered with."""


class AssignmentError(EdgefleetError):
    """A signed assignment was refused."""

    def __init__(self, message: str, *, reason: str, fix: str | None = None) -> None:
        # ``reason`` is a stable machine-readable code reported in agent events.
        self.reason = reason
        super().__init__(message, fix=fix)


class VersionError(EdgefleetError):
    """A version string is not a semantic version."""


class BrokerUrlError(EdgefleetError):
    """A broker URL, or one item of a list of them, is not ``mqtt[s]://HOST[:PORT]`` (``edgefleet.brokers``)."""


class InputError(EdgefleetError):
    """A predict request's input does not fit the model's input spec (``edgefleet.inputs``).

    ``status`` is the HTTP status the request deserves: 400 for a malformed input, 413 for more
    rows than the limit. The agent's API answers it as is; the server maps it to its own classes.
    ``field`` names the model input or column at fault where there is one (None when the body
    as a whole is wrong), so an answer can point at it without parsing the message.
    """

    def __init__(self, message: str, *, fix: str | None = None, status: int = 400, field: str | None = None) -> None:
        self.status = status
        self.field = field
        super().__init__(message, fix=fix)

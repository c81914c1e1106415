"""The fleet server's exception hierarchy.

    EdgefleetError                      (edgefleet.errors)
    └── ServerError                     anything the fleet server refuses or fails at
        ├── ConfigError                 a flag, variable or config file value is wrong
        ├── NotFoundError               a model, device or token does not exist (HTTP 404)
        ├── ConflictError               the request contradicts stored state (HTTP 409)
        ├── GoneError                   an enrollment token is used or expired (HTTP 410)
        ├── InvalidInputError           a request is well-formed but not acceptable (HTTP 422)
        ├── AuthError                   missing or wrong credentials (HTTP 401)
        ├── BrokerError                 the MQTT broker cannot be reached or configured
        └── ClientError                 the admin CLI could not get an answer from the server

The API layer maps each class to one HTTP status, so services raise these and never know
about HTTP. Foreign exceptions (SQLAlchemy, paho, httpx) are wrapped where they enter.
"""

from __future__ import annotations

from edgefleet.errors import EdgefleetError


class ServerError(EdgefleetError):
    """Base of every error the fleet server raises on purpose."""

    status_code = 500


class ConfigError(ServerError):
    """A configuration value is missing or malformed."""


class NotFoundError(ServerError):
    status_code = 404


class ConflictError(ServerError):
    status_code = 409


class GoneError(ServerError):
    status_code = 410


class InvalidInputError(ServerError):
    status_code = 422


class AuthError(ServerError):
    status_code = 401


class BrokerError(ServerError):
    """The MQTT broker is unreachable, refused us, or its files could not be written."""


class ClientError(ServerError):
    """The admin CLI got no usable answer from the server."""

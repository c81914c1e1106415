"""Secrets the server hands out (enrollment tokens, API tokens, MQTT passwords) and how they are stored.

Every secret is 32 random bytes (URL-safe base64), so a plain SHA-256 is enough to store it:
there is nothing to brute-force, unlike a human password. Only hashes reach the database; a
token is compared by looking up its hash. MQTT passwords are the exception: Mosquitto needs its
own PBKDF2 form, which ``fleet_server.trust`` (broker_auth) renders.

Pure functions, no I/O.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Mapping

_LABEL_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}$")
_LABEL_VALUE = re.compile(r"^[A-Za-z0-9._:/@+-]{0,128}$")
MAX_LABELS = 32


def new_secret() -> str:
    # A leading '-' would make `--token T` parse as an option when an operator copies the
    # printed agent command; url-safe base64 may start with one, so draw again.
    while True:
        secret = secrets.token_urlsafe(32)
        if not secret.startswith("-"):
            return secret


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def same_secret(given: str, expected: str) -> bool:
    """Constant-time comparison, so response timing does not leak the admin token."""
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def new_device_id() -> str:
    # 12 hex digits: short enough to type, 2^48 ids so collisions need ~16M devices to matter,
    # and valid as an MQTT topic level and username (edgefleet.topics.check_device_id).
    return "dev-" + secrets.token_hex(6)


def check_labels(labels: Mapping[str, str]) -> dict[str, str]:
    """Return ``labels`` as a plain dict if every key and value is acceptable, else raise ValueError."""
    if len(labels) > MAX_LABELS:
        raise ValueError(f"at most {MAX_LABELS} labels per device")
    for key, value in labels.items():
        if not isinstance(key, str) or not _LABEL_KEY.match(key):
            raise ValueError(f"label key {key!r} is not valid: use 1-63 letters, digits, '.', '_', '/' or '-'")
        if not isinstance(value, str) or not _LABEL_VALUE.match(value):
            raise ValueError(f"label value {value!r} for {key!r} is not valid: up to 128 letters, digits or ._:/@+-")
    return dict(labels)


def parse_label_args(items: list[str]) -> dict[str, str]:
    """``["site=a", "ring=canary"]`` -> ``{"site": "a", "ring": "canary"}`` (for the CLI)."""
    labels: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"label {item!r} is not KEY=VALUE")
        labels[key] = value
    return check_labels(labels)


def safe_url(url: str) -> str:
    """The URL with any password masked, for logs and errors."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    creds, _, host = rest.rpartition("@")
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in creds else url


def strip_userinfo(url: str) -> str:
    """The URL without ``user:password@`` (what devices may be told about a broker)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    authority, slash, path = rest.partition("/")
    return f"{scheme}://{authority.rpartition('@')[2]}{slash}{path}"

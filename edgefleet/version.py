"""Semantic versions of models, and their ordering.

Model versions follow semver 2.0 (``MAJOR.MINOR.PATCH[-PRERELEASE][+BUILD]``). Ordering
follows the spec's precedence rules; build metadata is ignored for ordering but kept.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import total_ordering

from edgefleet.errors import VersionError

# [0-9], not \d: \d also matches other scripts' digits, which int() would read but str() not write back.
SEMVER_PATTERN = (
    r"^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)"
    r"(?:-((?:0|[1-9][0-9]*|[0-9]*[A-Za-z-][0-9A-Za-z-]*)(?:\.(?:0|[1-9][0-9]*|[0-9]*[A-Za-z-][0-9A-Za-z-]*))*))?"
    r"(?:\+([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?$"
)
"""Semver 2.0, ASCII digits only; also the ``pattern`` of versions in the server's OpenAPI document."""
_SEMVER = re.compile(SEMVER_PATTERN)
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


def check_model_name(name: str) -> str:
    """Return ``name`` if it is a valid model name, else raise VersionError."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise VersionError(
            f"model name {name!r} is not valid",
            fix="use 1-64 lowercase letters, digits, '.', '_' or '-', starting with a letter or digit",
        )
    return name


@total_ordering
@dataclass(frozen=True)
class ModelVersion:
    """A parsed semantic version. ``ModelVersion.parse("1.2.0") < ModelVersion.parse("1.10.0")``."""

    major: int
    minor: int
    patch: int
    prerelease: tuple[str, ...] = ()
    build: str = field(default="", compare=False)

    @classmethod
    def parse(cls, text: str) -> ModelVersion:
        match = _SEMVER.fullmatch(text) if isinstance(text, str) else None
        if match is None:
            raise VersionError(
                f"version {text!r} is not a semantic version",
                fix="write it as MAJOR.MINOR.PATCH, e.g. 1.0.0 or 2.1.0-rc.1",
            )
        major, minor, patch, pre, build = match.groups()
        return cls(int(major), int(minor), int(patch), tuple(pre.split(".")) if pre else (), build or "")

    def __str__(self) -> str:
        text = f"{self.major}.{self.minor}.{self.patch}"
        if self.prerelease:
            text += "-" + ".".join(self.prerelease)
        if self.build:
            text += "+" + self.build
        return text

    def _key(self) -> tuple:
        # A release sorts after all of its prereleases (semver 11.3); numeric identifiers
        # sort below alphanumeric ones and compare as numbers (semver 11.4).
        pre = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in self.prerelease)
        return (self.major, self.minor, self.patch, 0 if self.prerelease else 1, pre)

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, ModelVersion):
            return NotImplemented
        return self._key() < other._key()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ModelVersion):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())


def parse_model_ref(ref: str) -> tuple[str, str]:
    """Split ``NAME@VERSION`` into its checked parts."""
    name, sep, version = ref.partition("@")
    if not sep:
        raise VersionError(f"{ref!r} names no version", fix="write it as NAME@VERSION, e.g. digits@1.0.0")
    check_model_name(name)
    ModelVersion.parse(version)
    return name, version

"""Who is in a rollout and in which wave: selectors and seeded, stratified wave plans.

A rollout targets the devices a :class:`Selector` matches (``site=a,profile=rpi4-64``) and
moves through waves given as cumulative shares of that fleet (``1,10,50,100``). This module
decides wave membership:

* Members are drawn at random from a recorded seed, so a plan can be reproduced and audited,
  and the order devices enrolled in never decides who goes first.
* The draw is stratified: first by profile, then by label set, so every prefix of the draw
  (and so every wave) holds each profile in close to its share of the fleet. A 10% wave of a
  fleet that is half Raspberry Pi and half Jetson is about half and half, not ten Pis that
  happened to enroll first.
* Every wave has at least one device, and holds at least its share of the fleet unless that
  would leave a later wave empty. With fewer devices than waves, the surplus waves are merged
  into the last one.
* A device that joins later (enrolls, or starts matching, while the rollout runs) lands in a
  wave picked from a hash of the seed and its id: the wave its share band falls in, or the
  current wave if that band has already gone by (:meth:`WavePlan.place`).

It deliberately does no I/O and knows nothing of rollout state: :mod:`fleet_server.rollouts.machine`
keeps that. Errors are :class:`SelectorError` and :class:`WavePlanError`, both
``InvalidInputError`` (HTTP 422) of the fleet server's hierarchy.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import random
import re
import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fleet_server.errors import InvalidInputError

__all__ = [
    "DEFAULT_WAVES",
    "RolloutDevice",
    "Selector",
    "SelectorError",
    "SelectorTerm",
    "WavePlan",
    "WavePlanError",
    "new_seed",
    "parse_waves",
    "plan_waves",
]

DEFAULT_WAVES: tuple[float, ...] = (1.0, 10.0, 50.0, 100.0)
PROFILE_KEY = "profile"
# An explicit prefix for a label whose key collides with a reserved word ("label.profile=x").
LABEL_PREFIX = "label."
MATCH_ALL = "*"

_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}$")
# Values may hold most printable characters; only the selector's own separators are out.
_VALUE = re.compile(r"^[^\s,=|*]{1,128}$")


class SelectorError(InvalidInputError):
    """A selector string does not parse."""


class WavePlanError(InvalidInputError):
    """Wave percentages are malformed, or there is nothing to plan."""


def new_seed() -> int:
    """A fresh random seed for a plan; record it (the plan does) to reproduce the draw."""
    return secrets.randbits(63)


# --------------------------------------------------------------------------- devices


@dataclass(frozen=True)
class RolloutDevice:
    """What wave planning and the rollout need to know about one device (the registry's full
    record of a device is ``fleet_server.registry.devices.DeviceRecord``).

    ``version`` is the version of the rollout's model the device runs now (None if it runs
    none): it becomes the device's rollback target.
    """

    device_id: str
    profile: str
    labels: Mapping[str, str] = field(default_factory=dict)
    version: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.device_id, str) or not self.device_id:
            raise InvalidInputError("a device has an empty id")
        if not isinstance(self.profile, str) or not self.profile:
            raise InvalidInputError(f"device {self.device_id!r} has no profile",
                                    fix="enroll it with --profile")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in self.labels.items()):
            raise InvalidInputError(f"device {self.device_id!r} has a label that is not a string")
        # A private copy: a caller mutating its dict afterwards must not change the plan.
        object.__setattr__(self, "labels", dict(self.labels))

    def to_dict(self) -> dict[str, Any]:
        return {"device_id": self.device_id, "profile": self.profile,
                "labels": dict(sorted(self.labels.items())), "version": self.version}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RolloutDevice:
        return cls(str(data["device_id"]), str(data["profile"]), dict(data.get("labels") or {}),
                   None if data.get("version") is None else str(data["version"]))


# --------------------------------------------------------------------------- selectors


@dataclass(frozen=True)
class SelectorTerm:
    """One ``key=value[|value...]`` term: the device's profile or one label is any of values."""

    key: str
    values: frozenset[str]
    is_profile: bool = False

    def matches(self, device: RolloutDevice) -> bool:
        if self.is_profile:
            return device.profile in self.values
        return device.labels.get(self.key) in self.values

    def __str__(self) -> str:
        if self.is_profile:
            key = PROFILE_KEY
        elif self.key == PROFILE_KEY or self.key.startswith(LABEL_PREFIX):
            key = LABEL_PREFIX + self.key
        else:
            key = self.key
        return f"{key}={'|'.join(sorted(self.values))}"


@dataclass(frozen=True)
class Selector:
    """Which devices a rollout targets: all terms must match (AND); ``a|b`` is any-of (OR).

    Grammar (whitespace around terms is ignored)::

        selector  := "*" | term ("," term)*
        term      := key "=" value ("|" value)*
        key       := "profile" | "label." LABEL | LABEL      (a bare key is a label key)

    ``group=canary`` is the label ``group``: device groups are labels by convention.
    ``str(selector)`` is a canonical form that parses back to an equal selector.
    """

    terms: frozenset[SelectorTerm]

    @classmethod
    def parse(cls, text: str) -> Selector:
        if not isinstance(text, str):
            raise SelectorError("a selector must be a string")
        stripped = text.strip()
        if not stripped:
            raise SelectorError("the selector is empty",
                                fix="write '*' for every device, or e.g. 'site=a,profile=rpi4-64'")
        if stripped == MATCH_ALL:
            return cls(frozenset())
        terms: dict[tuple[bool, str], SelectorTerm] = {}
        for position, raw in enumerate(stripped.split(","), start=1):
            term = _parse_term(raw.strip(), position, text)
            slot = (term.is_profile, term.key)
            if slot in terms:
                raise SelectorError(f"selector {text!r} names {str(term).split('=')[0]!r} twice",
                                    fix=f"write one term with alternatives, e.g. {term.key}=a|b")
            terms[slot] = term
        return cls(frozenset(terms.values()))

    @classmethod
    def everything(cls) -> Selector:
        return cls(frozenset())

    def matches(self, device: RolloutDevice) -> bool:
        return all(term.matches(device) for term in self.terms)

    def __str__(self) -> str:
        if not self.terms:
            return MATCH_ALL
        return ",".join(sorted(str(term) for term in self.terms))


def _parse_term(raw: str, position: int, text: str) -> SelectorTerm:
    where = f"term {position} of selector {text!r}"
    if not raw:
        raise SelectorError(f"{where} is empty", fix="remove the extra comma")
    key, sep, rest = raw.partition("=")
    key = key.strip()
    if not sep:
        raise SelectorError(f"{where} ({raw!r}) has no '='", fix="write it as key=value, e.g. site=a")
    is_profile = key == PROFILE_KEY
    if key.startswith(LABEL_PREFIX):
        key = key[len(LABEL_PREFIX):]
    if not _KEY.match(key):
        raise SelectorError(f"{where} has a malformed key {key!r}",
                            fix="keys are 1-63 letters, digits, '.', '_', '/' or '-', starting with a letter or digit")
    values = [v.strip() for v in rest.split("|")]
    for value in values:
        if not _VALUE.match(value):
            raise SelectorError(f"{where} has a malformed value {value!r} for {key!r}",
                                fix="values are 1-128 characters without spaces, ',', '=', '|' or '*'")
    return SelectorTerm(key, frozenset(values), is_profile)


# --------------------------------------------------------------------------- wave plans


def parse_waves(text: str) -> tuple[float, ...]:
    """Parse ``"1,10,50,100"`` into checked cumulative percentages."""
    parts = [p.strip().rstrip("%") for p in text.split(",")]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError as exc:
        raise WavePlanError(f"waves {text!r} are not a list of numbers",
                            fix="write cumulative percentages, e.g. 1,10,50,100") from exc
    return check_waves(values)


def check_waves(percentages: Sequence[float]) -> tuple[float, ...]:
    """Return the percentages as a tuple if they are a valid cumulative wave list."""
    values = tuple(float(p) for p in percentages)
    example = "e.g. 1,10,50,100"
    if not values:
        raise WavePlanError("no waves were given", fix=f"give cumulative percentages, {example}")
    if any(not math.isfinite(p) or p <= 0 or p > 100 for p in values):
        raise WavePlanError(f"wave percentages {list(values)} must each be in (0, 100]", fix=example)
    if any(b <= a for a, b in itertools.pairwise(values)):
        raise WavePlanError(f"wave percentages {list(values)} must grow strictly: each is the "
                            "cumulative share of the fleet", fix=example)
    if values[-1] != 100:
        raise WavePlanError(f"the last wave is {values[-1]:g}%, so part of the fleet would never "
                            "get the version", fix="end the list with 100")
    return values


@dataclass(frozen=True)
class WavePlan:
    """The seeded draw: per wave, its cumulative percentage and its members in draw order.

    ``percentages`` are those of the waves kept (surplus waves merged into the last one, whose
    share is then 100). ``requested`` are the percentages the rollout asked for.
    """

    seed: int
    requested: tuple[float, ...]
    percentages: tuple[float, ...]
    waves: tuple[tuple[str, ...], ...]

    def __post_init__(self) -> None:
        check_waves(self.requested)
        if len(self.percentages) != len(self.waves) or not self.waves:
            raise WavePlanError("a wave plan needs one percentage per wave and at least one wave")
        check_waves(self.percentages)
        seen: set[str] = set()
        for index, members in enumerate(self.waves):
            if not members:
                raise WavePlanError(f"wave {index + 1} of the plan has no device")
            if seen.intersection(members) or len(set(members)) != len(members):
                raise WavePlanError(f"wave {index + 1} of the plan repeats a device")
            seen.update(members)

    def wave_of(self, device_id: str) -> int | None:
        """The wave (0-based) a device was drawn into, or None if it was not in the draw."""
        for index, members in enumerate(self.waves):
            if device_id in members:
                return index
        return None

    def place(self, device_id: str, current_wave: int) -> int:
        """The wave a device joining late belongs to: deterministic in (seed, device id).

        The device's hash falls in one wave's share band; if that wave has already started
        (index <= current_wave) it joins the current wave, so it is not left behind.
        """
        share = _unit_hash(self.seed, device_id) * 100.0
        band = next(i for i, p in enumerate(self.percentages) if share < p or i == len(self.percentages) - 1)
        return max(band, min(current_wave, len(self.waves) - 1))

    @property
    def size(self) -> int:
        return sum(len(members) for members in self.waves)

    def to_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "requested": list(self.requested),
                "percentages": list(self.percentages), "waves": [list(m) for m in self.waves]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WavePlan:
        try:
            return cls(int(data["seed"]), tuple(float(p) for p in data["requested"]),
                       tuple(float(p) for p in data["percentages"]),
                       tuple(tuple(str(d) for d in m) for m in data["waves"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise WavePlanError(f"stored wave plan is malformed: {exc!r}") from exc


def plan_waves(devices: Iterable[RolloutDevice], percentages: Sequence[float], seed: int) -> WavePlan:
    """Draw the waves for ``devices`` (all of which take part) with ``seed``.

    The result does not depend on the order ``devices`` come in.
    """
    requested = check_waves(percentages)
    fleet = list(devices)
    ids = [d.device_id for d in fleet]
    if len(set(ids)) != len(ids):
        raise WavePlanError("a device appears twice in the fleet to plan")
    if not fleet:
        raise WavePlanError("no device takes part in this rollout",
                            fix="check the selector and the profiles the version was validated for "
                                "with `edgefleet devices list`")
    rng = random.Random(seed)
    order = _spread(fleet, (_by_profile, _by_labels), rng)
    total = len(order)
    kept: list[float] = []
    waves: list[tuple[str, ...]] = []
    done = 0
    for index, percent in enumerate(requested):
        # Ceil, so a 1% wave of 30 devices still has one; at least one more than before; and
        # leave one device for each later wave while there are enough to go round.
        later = len(requested) - index - 1
        upto = min(math.ceil(percent * total / 100.0 - 1e-9), total - later)
        upto = min(total, max(upto, done + 1))
        if upto > done:
            waves.append(tuple(d.device_id for d in order[done:upto]))
            kept.append(percent)
            done = upto
        else:
            # Out of devices: this wave merges into the last one, which now covers its share.
            kept[-1] = percent
    return WavePlan(seed, requested, tuple(kept), tuple(waves))


def _by_profile(device: RolloutDevice) -> tuple[str, ...]:
    return (device.profile,)


def _by_labels(device: RolloutDevice) -> tuple[str, ...]:
    return tuple(f"{k}={v}" for k, v in sorted(device.labels.items()))


def _spread(devices: Sequence[RolloutDevice], levels: Sequence[Callable[[RolloutDevice], tuple[str, ...]]],
            rng: random.Random) -> list[RolloutDevice]:
    """A random order in which every prefix holds each stratum close to its share.

    Each stratum is ordered (recursively, by the next level), then its r-th of n devices gets
    the key (r + jitter) / n and all strata are merged by key: systematic sampling with a
    random start per stratum. Any prefix then holds within about one device of each stratum's
    proportional share (within 1 + strata * share, proven in the tests' docstring).
    """
    if not levels:
        shuffled = sorted(devices, key=lambda d: d.device_id)
        rng.shuffle(shuffled)
        return shuffled
    strata: dict[tuple[str, ...], list[RolloutDevice]] = {}
    for device in devices:
        strata.setdefault(levels[0](device), []).append(device)
    keyed: list[tuple[float, str, RolloutDevice]] = []
    for name in sorted(strata):
        ordered = _spread(strata[name], levels[1:], rng)
        count = len(ordered)
        keyed.extend(((rank + rng.random()) / count, d.device_id, d) for rank, d in enumerate(ordered))
    keyed.sort(key=lambda item: (item[0], item[1]))
    return [device for _, _, device in keyed]


def _unit_hash(seed: int, device_id: str) -> float:
    digest = hashlib.sha256(f"{seed}:{device_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64

"""Alert rules and their episodes: fire once when a value crosses a rule, resolve once when it is back.

A rule watches one kind of fleet value for every subject matching its glob:

    kind            value (per subject)                                  direction
    drift           max feature PSI of a model version (in a group)      above
    accuracy        rolling accuracy of a model version from feedback    below
    error_rate      errors / requests of a model version                 above
    offline         number of devices offline (in a group)               above
    rollout_halted  1 while a rollout is halted, else 0                  above

Subjects are strings rules match with ``fnmatch``: ``digits@1.0.0``, ``digits@1.0.0 site=b``,
``fleet``, ``rollout:42``. The server's evaluator loop builds ``Observation``s from its stores
(``drift_observations`` and ``model_observations`` name model subjects consistently) and
calls ``AlertEvaluator.evaluate(observations, now)``.

An episode: the value crosses ``threshold`` (strictly above, or strictly below for
``accuracy``); if it stays across for ``for_s`` seconds the episode fires (one ``firing``
event). It resolves (one ``resolved`` event) only once the value is back past ``resolve``,
the hysteresis edge (``resolve`` <= ``threshold`` for "above" rules, >= for "below"). A value
that wobbles between the two edges changes nothing, so a flapping metric cannot flood the
webhook. A subject with no observation in a round keeps its state: missing data neither fires
nor resolves (report 0 for a rollout that is no longer halted). Likewise a drift figure merged
from fewer than the rule's ``min_rows`` input rows (default ``DEFAULT_DRIFT_MIN_ROWS``) is
not evidence: a handful of rows scores a PSI of 1-6 on inputs that did not move at all.

Pure: time is an argument, rules and state are values; ``state()``/``from_state`` let the
caller persist episodes (e.g. in the database, so a restarted or second replica does not fire
again). Delivery is ``fleet_server.telemetry.alert_sinks``; the rules come from the ``[alerts]`` table of
the server's TOML config (``load_alert_config``, format in docs/telemetry.md).

    ServerError (fleet_server.errors)
    └── ConfigError
        └── AlertConfigError     an [alerts] table or rule is malformed
"""

from __future__ import annotations

import fnmatch
import math
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from edgefleet.telemetry import DRIFT_ABOVE, STABLE_BELOW
from fleet_server.errors import ConfigError, InvalidInputError
from fleet_server.telemetry.drift import FLEET, DriftReport, Totals

KINDS: Mapping[str, str] = {
    "drift": "above", "accuracy": "below", "error_rate": "above", "offline": "above", "rollout_halted": "above",
}
DRIFT_BANDS: Mapping[str, tuple[float, float]] = {
    # band -> (fire above, resolve below): back to stable resolves a drift alert.
    "drift": (DRIFT_ABOVE, STABLE_BELOW),
    "moderate": (STABLE_BELOW, STABLE_BELOW / 2),
}
DEFAULT_WEBHOOK_TIMEOUT_S = 5.0
DEFAULT_RETRAIN_TIMEOUT_S = 600.0
DEFAULT_EVALUATE_EVERY_S = 60.0
DEFAULT_DRIFT_MIN_ROWS = 200
"""Rows a group must have merged in the window before its drift is judged. Measured on the
digits reference (64 features, 1-9 bins): the worst feature's PSI of rows drawn from the
reference itself is ~3.8 at 10 rows, ~0.67 at 50, ~0.17 at 100 and at most 0.14 at 200
(median 0.08), so 200 keeps sampling noise below the drift band's 0.25."""


class AlertConfigError(ConfigError):
    """An [alerts] table or rule is malformed."""


def _config_error(message: str, fix: str = "see the [alerts] format in docs/telemetry.md") -> AlertConfigError:
    return AlertConfigError(message, fix=fix)


@dataclass(frozen=True)
class Rule:
    """One alert rule. ``resolve`` defaults to ``threshold`` (no hysteresis band)."""

    name: str
    kind: str
    threshold: float
    resolve: float | None = None
    match: str = "*"
    for_s: float = 0.0
    retrain: bool = False
    min_rows: int = DEFAULT_DRIFT_MIN_ROWS

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise _config_error("an alert rule has no name", fix="give every [[alerts.rules]] a unique name")
        if self.kind not in KINDS:
            raise _config_error(f"alert rule {self.name!r} has kind {self.kind!r}",
                                fix=f"use one of {', '.join(KINDS)}")
        if not all(math.isfinite(v) for v in (self.threshold, self.resolve_at, self.for_s)):
            # TOML allows nan and inf; a NaN threshold would silently never fire.
            raise _config_error(f"alert rule {self.name!r}: threshold, resolve and for_s must be finite numbers")
        if self.resolve is None:
            object.__setattr__(self, "resolve", self.threshold)
        resolve = float(self.resolve if self.resolve is not None else self.threshold)
        if self.direction == "above" and resolve > self.threshold:
            raise _config_error(f"alert rule {self.name!r}: resolve {resolve} is above threshold {self.threshold}",
                                fix="an 'above' rule resolves at or below its threshold")
        if self.direction == "below" and resolve < self.threshold:
            raise _config_error(f"alert rule {self.name!r}: resolve {resolve} is below threshold {self.threshold}",
                                fix="an accuracy rule resolves at or above its floor")
        if self.for_s < 0:
            raise _config_error(f"alert rule {self.name!r}: for_s must not be negative")
        if isinstance(self.min_rows, bool) or not isinstance(self.min_rows, int) or self.min_rows < 0:
            raise _config_error(f"alert rule {self.name!r}: min_rows must be a whole number >= 0, "
                                f"got {self.min_rows!r}", fix="e.g. min_rows = 200 (0 judges any sample)")

    @property
    def direction(self) -> str:
        return KINDS[self.kind]

    @property
    def resolve_at(self) -> float:
        return float(self.resolve if self.resolve is not None else self.threshold)

    def matches(self, kind: str, subject: str) -> bool:
        return kind == self.kind and fnmatch.fnmatchcase(subject, self.match)

    def judges(self, obs: Observation) -> bool:
        """Whether ``obs`` is evidence for this rule: a drift figure from fewer than ``min_rows``
        merged rows is sampling noise, so it neither fires nor resolves an episode."""
        return self.kind != "drift" or obs.rows is None or obs.rows >= self.min_rows

    def breached(self, value: float) -> bool:
        return value > self.threshold if self.direction == "above" else value < self.threshold

    def recovered(self, value: float) -> bool:
        return value < self.resolve_at if self.direction == "above" else value > self.resolve_at

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Rule:
        allowed = {"name", "kind", "threshold", "resolve", "band", "match", "for_s", "retrain", "min_rows"}
        unknown = sorted(set(data) - allowed)
        name = data.get("name", "?")
        if unknown:
            raise _config_error(f"alert rule {name!r} has unknown key(s) {', '.join(unknown)}",
                                fix=f"known keys: {', '.join(sorted(allowed))}")
        kind = data.get("kind")
        threshold, resolve = data.get("threshold"), data.get("resolve")
        if "band" in data:
            if kind != "drift" or data["band"] not in DRIFT_BANDS:
                raise _config_error(f"alert rule {name!r}: band {data['band']!r} is only for drift rules",
                                    fix=f"use band = one of {', '.join(DRIFT_BANDS)} with kind = \"drift\"")
            if threshold is not None:
                raise _config_error(f"alert rule {name!r} sets both band and threshold", fix="keep one of them")
            threshold, default_resolve = DRIFT_BANDS[data["band"]]
            resolve = default_resolve if resolve is None else resolve
        if kind == "rollout_halted" and threshold is None:
            threshold = 0.5
        for key, value in (("threshold", threshold), ("resolve", resolve), ("for_s", data.get("for_s", 0.0))):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise _config_error(f"alert rule {name!r}: {key} must be a number, got {value!r}")
        if threshold is None:
            raise _config_error(f"alert rule {name!r} has no threshold",
                                fix="set threshold (or band, for drift rules)")
        min_rows = data.get("min_rows", DEFAULT_DRIFT_MIN_ROWS)
        if "min_rows" in data and kind != "drift":
            raise _config_error(f"alert rule {name!r}: min_rows is only for drift rules",
                                fix="drop min_rows, or use it with kind = \"drift\"")
        match = data.get("match", "*")
        if not isinstance(match, str) or not isinstance(data.get("retrain", False), bool):
            raise _config_error(f"alert rule {name!r}: match must be a string and retrain a boolean")
        return cls(name=str(name), kind=str(kind), threshold=float(threshold),
                   resolve=None if resolve is None else float(resolve), match=match,
                   for_s=float(data.get("for_s", 0.0)), retrain=bool(data.get("retrain", False)),
                   min_rows=min_rows)  # __post_init__ refuses a fraction, a bool or a negative


@dataclass(frozen=True)
class AlertConfig:
    """The ``[alerts]`` table: rules, and where alerts go."""

    rules: tuple[Rule, ...] = ()
    webhook: str | None = None
    webhook_timeout_s: float = DEFAULT_WEBHOOK_TIMEOUT_S
    retrain_command: tuple[str, ...] = ()
    retrain_timeout_s: float = DEFAULT_RETRAIN_TIMEOUT_S
    evaluate_every_s: float = DEFAULT_EVALUATE_EVERY_S

    def __post_init__(self) -> None:
        names = [r.name for r in self.rules]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise _config_error(f"alert rule name(s) used twice: {', '.join(duplicates)}",
                                fix="give every rule a unique name: episodes are keyed by it")
        if self.webhook is not None and not self.webhook.startswith(("http://", "https://")):
            raise _config_error(f"alerts webhook {self.webhook!r} is not an http(s) URL")
        if min(self.webhook_timeout_s, self.retrain_timeout_s, self.evaluate_every_s) <= 0:
            raise _config_error("alerts timeouts and evaluate_every_s must be positive")
        if any(r.retrain for r in self.rules) and not self.retrain_command:
            raise _config_error("a rule asks for retrain but [alerts] has no retrain_command",
                                fix='set retrain_command = ["/path/to/retrain", "--flag"]')


def load_alert_config(document: Mapping[str, Any]) -> AlertConfig:
    """Read the ``[alerts]`` table of a parsed config document (empty config when absent)."""
    table = document.get("alerts", {})
    if not isinstance(table, dict):
        raise _config_error("[alerts] must be a table")
    allowed = {"rules", "webhook", "webhook_timeout_s", "retrain_command", "retrain_timeout_s", "evaluate_every_s"}
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise _config_error(f"[alerts] has unknown key(s) {', '.join(unknown)}",
                            fix=f"known keys: {', '.join(sorted(allowed))}")
    rules = table.get("rules", [])
    command = table.get("retrain_command", [])
    if isinstance(command, str):
        command = [command]
    if not isinstance(rules, list) or not all(isinstance(r, dict) for r in rules):
        raise _config_error("[alerts] rules must be an array of tables ([[alerts.rules]])")
    if not isinstance(command, list) or not all(isinstance(c, str) for c in command):
        raise _config_error("[alerts] retrain_command must be a list of strings (program and arguments)")
    numbers = {}
    for key, default in (("webhook_timeout_s", DEFAULT_WEBHOOK_TIMEOUT_S), ("retrain_timeout_s", DEFAULT_RETRAIN_TIMEOUT_S),
                         ("evaluate_every_s", DEFAULT_EVALUATE_EVERY_S)):
        value = table.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _config_error(f"[alerts] {key} must be a number of seconds, got {value!r}")
        numbers[key] = float(value)
    webhook = table.get("webhook")
    if webhook is not None and not isinstance(webhook, str):
        raise _config_error("[alerts] webhook must be a URL string")
    return AlertConfig(rules=tuple(Rule.from_dict(r) for r in rules), webhook=webhook,
                       retrain_command=tuple(command), **numbers)


def read_alert_config(path: str | Path) -> AlertConfig:
    """Parse a TOML file and read its ``[alerts]`` table."""
    try:
        document = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise _config_error(f"config file {path} does not exist", fix="check --config / $EDGEFLEET_CONFIG") from exc
    except tomllib.TOMLDecodeError as exc:
        raise _config_error(f"config file {path} is not valid TOML: {exc}") from exc
    return load_alert_config(document)


# ---- observations -------------------------------------------------------------------------

@dataclass(frozen=True)
class Observation:
    """A value of one kind for one subject, as measured now.

    ``rows``: for drift, the input rows merged into the figure (what ``min_rows`` is checked
    against); ``None`` where the kind has no sample size.
    """

    kind: str
    subject: str
    value: float
    rows: int | None = None

    def __post_init__(self) -> None:
        if self.rows is not None and self.rows < 0:
            raise InvalidInputError(f"observation of {self.subject}: rows must not be negative, got {self.rows}",
                                    fix="count the rows merged into the figure (0 or more)")


def model_subject(model: str, version: str, group: str = FLEET) -> str:
    """``NAME@VERSION`` for the whole fleet, ``NAME@VERSION GROUP`` (e.g. ``site=b``) for a group."""
    return f"{model}@{version}" if group == FLEET else f"{model}@{version} {group}"


def drift_observations(reports: Iterable[DriftReport]) -> list[Observation]:
    """One ``drift`` observation per report that has data: the report's ``max_psi``, the very
    figure ``GET .../drift`` shows for the group, with the rows it was computed from."""
    return [Observation("drift", model_subject(r.model, r.version, r.group), r.max_psi, rows=r.rows)
            for r in reports if r.band != "no data"]


def model_observations(model: str, version: str, totals: Totals, group: str = FLEET) -> list[Observation]:
    """``error_rate`` and ``accuracy`` observations of a model version, where there is data for them."""
    subject = model_subject(model, version, group)
    out = []
    if totals.error_rate is not None:
        out.append(Observation("error_rate", subject, totals.error_rate))
    if totals.accuracy is not None:
        out.append(Observation("accuracy", subject, totals.accuracy))
    return out


# ---- evaluation --------------------------------------------------------------------------

@dataclass(frozen=True)
class Episode:
    """A rule breached for a subject: ``pending`` (waiting out ``for_s``) or ``firing``."""

    rule: str
    subject: str
    state: str
    since: float
    value: float
    fired_at: float | None = None

    @property
    def id(self) -> str:
        # Deterministic, so two replicas or a restart name the same episode the same way.
        return f"{self.rule}:{self.subject}:{self.since:.3f}"

    def to_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "subject": self.subject, "state": self.state, "since": self.since,
                "value": self.value, "fired_at": self.fired_at}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Episode:
        return cls(str(data["rule"]), str(data["subject"]), str(data["state"]), float(data["since"]),
                   float(data["value"]), None if data.get("fired_at") is None else float(data["fired_at"]))


@dataclass(frozen=True)
class AlertEvent:
    """What sinks receive: an episode started firing or resolved."""

    state: str  # "firing" | "resolved"
    rule: Rule
    subject: str
    value: float
    ts: float
    episode: str
    started_at: float
    message: str
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "alert": self.rule.name, "kind": self.rule.kind, "state": self.state, "subject": self.subject,
            "value": self.value, "threshold": self.rule.threshold, "resolve": self.rule.resolve_at,
            "direction": self.rule.direction, "ts": self.ts, "started_at": self.started_at,
            "episode": self.episode, "message": self.message, "retrain": self.rule.retrain, **dict(self.extra),
        }


def _describe(rule: Rule, subject: str, value: float, edge: float, state: str, duration: float | None) -> str:
    side = "above" if (rule.direction == "above") == (state == "firing") else "below"
    what = rule.kind.replace("_", " ")
    text = f"{what} of {subject} is {value:.4g}, {side} {edge:.4g} (rule {rule.name})"
    if state == "resolved" and duration is not None:
        text = f"resolved: {text}, after {duration:.0f} s"
    return text


class AlertEvaluator:
    """Rules plus the episodes in progress. Not thread-safe: one evaluator loop owns it."""

    def __init__(self, rules: Sequence[Rule], state: Iterable[Mapping[str, Any]] = ()) -> None:
        self.rules = tuple(rules)
        known = {r.name for r in self.rules}
        # Episodes of rules no longer configured are forgotten rather than resolved: nobody watches them.
        self._episodes: dict[tuple[str, str], Episode] = {
            (e.rule, e.subject): e for e in map(Episode.from_dict, state) if e.rule in known}

    def state(self) -> list[dict[str, Any]]:
        """The episodes in progress, as plain data for the caller to persist."""
        return [e.to_dict() for _, e in sorted(self._episodes.items())]

    def active(self) -> list[Episode]:
        return [e for _, e in sorted(self._episodes.items()) if e.state == "firing"]

    def evaluate(self, observations: Iterable[Observation], now: float) -> list[AlertEvent]:
        """Feed this round's values; return the firing and resolved events it causes."""
        events: list[AlertEvent] = []
        for obs in observations:
            for rule in self.rules:
                if rule.matches(obs.kind, obs.subject) and rule.judges(obs):
                    event = self._step(rule, obs, now)
                    if event is not None:
                        events.append(event)
        return events

    def _step(self, rule: Rule, obs: Observation, now: float) -> AlertEvent | None:
        key = (rule.name, obs.subject)
        episode = self._episodes.get(key)
        value = float(obs.value)
        if value != value:  # NaN: no evidence either way
            return None
        if episode is None or episode.state == "pending":
            if not rule.breached(value):
                self._episodes.pop(key, None)  # a pending breach that did not last
                return None
            episode = episode or Episode(rule.name, obs.subject, "pending", now, value)
            if now - episode.since < rule.for_s:
                self._episodes[key] = replace(episode, value=value)
                return None
            episode = replace(episode, state="firing", value=value, fired_at=now)
            self._episodes[key] = episode
            return AlertEvent("firing", rule, obs.subject, value, now, episode.id, episode.since,
                              _describe(rule, obs.subject, value, rule.threshold, "firing", None))
        if rule.recovered(value):
            del self._episodes[key]
            return AlertEvent("resolved", rule, obs.subject, value, now, episode.id, episode.since,
                              _describe(rule, obs.subject, value, rule.resolve_at, "resolved", now - episode.since))
        self._episodes[key] = replace(episode, value=value)
        return None

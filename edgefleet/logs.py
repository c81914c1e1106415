"""One log format for every edgefleet process: text lines, or JSON lines on request.

``configure`` installs the one handler on the root logger, so everything that logs through
Python's ``logging`` comes out the same way: edgefleet's own modules, uvicorn (the server runs
it with ``log_config=None``, so its loggers propagate here instead of printing their own
``INFO:     ...`` lines), paho, tuf and httpx. Runtimes that print from C++ (onnxruntime,
TensorFlow) are quietened with ``quiet_runtimes`` before they are imported.

Fields: every record may carry ``device_id``, ``model``, ``version`` and ``rollout_id``, given
with ``extra=fields(...)`` where they apply; ``set_context(device_id=...)`` adds fields to every
record of the process (an agent knows its device id once enrolled). The text format appends
them as ``key=value``; the JSON format puts them in the object.

Levels come from, strongest first: ``-v``/``-vv`` on the command line, ``$EDGEFLEET_LOG_LEVEL``
(a name such as ``INFO`` or a number), the component's own setting (the agent's ``log_level``),
then WARNING. ``parse_level`` refuses anything else with a ``LogSettingError`` that names the
fix. The format is ``text`` unless ``--log-format json`` or ``$EDGEFLEET_LOG_FORMAT=json``.

This module does not rotate or ship logs (journald, Docker or a collector does), and it does
not decide what is logged: the modules do.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Mapping
from typing import IO, Any

from edgefleet.errors import EdgefleetError

__all__ = [
    "FIELDS",
    "FORMAT_ENV",
    "LEVEL_ENV",
    "LogSettingError",
    "configure",
    "fields",
    "format_flag",
    "parse_level",
    "quiet_runtimes",
    "restore",
    "set_context",
    "verbosity",
]

LEVEL_ENV = "EDGEFLEET_LOG_LEVEL"
FORMAT_ENV = "EDGEFLEET_LOG_FORMAT"
FORMATS = ("text", "json")
# The fields a record may carry, in the order the text format prints them.
FIELDS = ("device_id", "model", "version", "rollout_id")
_NAMES = {"DEBUG": logging.DEBUG, "INFO": logging.INFO, "WARNING": logging.WARNING, "WARN": logging.WARNING,
          "ERROR": logging.ERROR, "CRITICAL": logging.CRITICAL}
_context: dict[str, str] = {}


class LogSettingError(EdgefleetError):
    """A log level or format that is not one."""


def parse_level(value: str | int, where: str = LEVEL_ENV) -> int:
    """``"info"``, ``"INFO"``, ``"20"`` or ``20`` -> 20; anything else is a ``LogSettingError``."""
    if isinstance(value, int):
        return value
    text = value.strip()
    if text.isdigit():
        return int(text)
    level = _NAMES.get(text.upper())
    if level is None:
        raise LogSettingError(f"{where} {value!r} is not a log level",
                              fix="use DEBUG, INFO, WARNING, ERROR or CRITICAL (or a number such as 20)")
    return level


def verbosity(args: object) -> int:
    """``-v`` counted wherever the command line gave it: ``edgefleet -v agent run -v`` is ``-vv``."""
    return int(getattr(args, "verbose", 0) or 0) + int(getattr(args, "sub_verbose", 0) or 0)


def format_flag(args: object) -> str | None:
    """``--log-format`` wherever the command line gave it (the subcommand's wins)."""
    value = getattr(args, "sub_log_format", None) or getattr(args, "log_format", None)
    return None if value is None else str(value)


def parse_format(value: str, where: str = FORMAT_ENV) -> str:
    text = value.strip().lower()
    if text not in FORMATS:
        raise LogSettingError(f"{where} {value!r} is not a log format", fix="use text or json")
    return text


def fields(**values: object) -> dict[str, object]:
    """``extra=`` for a log call: the given fields that are set (None is left out)."""
    unknown = set(values) - set(FIELDS)
    if unknown:
        raise ValueError(f"unknown log fields {sorted(unknown)}; use {', '.join(FIELDS)}")
    return {k: v for k, v in values.items() if v is not None}


def set_context(**values: str | None) -> None:
    """Fields every later record of this process carries (None removes one)."""
    for key, value in fields(**{k: v for k, v in values.items()}).items():
        _context[key] = str(value)
    for key in [k for k, v in values.items() if v is None]:
        _context.pop(key, None)


def _record_fields(record: logging.LogRecord) -> dict[str, str]:
    found = dict(_context)
    for key in FIELDS:
        value = record.__dict__.get(key)
        if value is not None:
            found[key] = str(value)
    return {key: found[key] for key in FIELDS if key in found}


class TextFormatter(logging.Formatter):
    """``2026-12-07 08:00:00,123 INFO agent.updater: message device_id=d1 model=m version=1.0.0``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extra = _record_fields(record)
        if not extra:
            return line
        head, sep, tail = line.partition("\n")  # a traceback stays below the fields
        return head + " " + " ".join(f"{k}={v}" for k, v in extra.items()) + sep + tail


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (UTC, ISO 8601), level, logger, message, the fields, exc."""

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **_record_fields(record),
        }
        if record.exc_info:
            document["exc"] = self.formatException(record.exc_info)
        return json.dumps(document, ensure_ascii=False, default=str)


_HANDLER_MARK = "_edgefleet_handler"


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is when a record comes (a test may have swapped it)."""

    @property  # type: ignore[override]
    def stream(self) -> IO[str]:
        return sys.stderr

    @stream.setter
    def stream(self, _value: object) -> None:
        pass


def configure(verbosity: int = 0, *, level: str | int | None = None, log_format: str | None = None,
              environ: Mapping[str, str] | None = None, stream: IO[str] | None = None) -> int:
    """Install the one handler on the root logger; returns the level set.

    ``verbosity`` (the count of ``-v``) wins when non-zero; else ``$EDGEFLEET_LOG_LEVEL``; else
    ``level`` (a component's setting); else WARNING. Calling it again replaces the handler,
    so a component may re-configure once it has read its own settings.
    """
    env = os.environ if environ is None else environ
    if verbosity > 0:
        chosen = logging.WARNING - 10 * min(verbosity, 2)
    elif env.get(LEVEL_ENV):
        chosen = parse_level(env[LEVEL_ENV])
    elif level is not None:
        chosen = parse_level(level, "log_level")
    else:
        chosen = logging.WARNING
    fmt = parse_format(log_format, "--log-format") if log_format else parse_format(env.get(FORMAT_ENV) or "text")
    root = logging.getLogger()
    if not _installed(root):
        _saved_level[:] = [root.level]
    for old in _installed(root):
        root.removeHandler(old)
    handler: logging.Handler = logging.StreamHandler(stream) if stream is not None else _StderrHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    setattr(handler, _HANDLER_MARK, True)
    root.addHandler(handler)
    root.setLevel(chosen)
    quiet_runtimes()
    return chosen


_saved_level: list[int] = []


def _installed(root: logging.Logger) -> list[logging.Handler]:
    return [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]


def restore() -> None:
    """Undo ``configure``: the handler removed, the root level as it was (for in-process callers of the CLI)."""
    root = logging.getLogger()
    for old in _installed(root):
        root.removeHandler(old)
    if _saved_level:
        root.setLevel(_saved_level.pop())


def quiet_runtimes() -> None:
    """Keep C++ runtimes from printing their own lines: errors only (call before importing them).

    TensorFlow reads ``TF_CPP_MIN_LOG_LEVEL`` at import; onnxruntime takes its default logger
    severity from ``set_default_logger_severity``, set here only if it is already imported (the
    agent's runtime module sets ``SessionOptions.log_severity_level`` per session).
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    ort = sys.modules.get("onnxruntime")
    if ort is not None:
        ort.set_default_logger_severity(3)

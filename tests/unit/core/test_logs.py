"""edgefleet.logs and the CLI's log flags: one format, JSON lines with fields, levels by name (issue 17)."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from edgefleet import logs
from edgefleet.cli import build_parser, main


@pytest.fixture(autouse=True)
def _restore_root() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)
    logs.set_context(device_id=None)


@pytest.mark.parametrize(("text", "level"), [("INFO", 20), ("info", 20), ("DEBUG", 10), (" warning ", 30), ("15", 15)])
def test_levels_by_name_or_number(text: str, level: int) -> None:
    assert logs.parse_level(text) == level


def test_a_bad_level_is_an_error_with_a_fix() -> None:
    with pytest.raises(logs.LogSettingError, match="not a log level") as caught:
        logs.parse_level("loud")
    assert caught.value.fix and "INFO" in caught.value.fix


def test_level_precedence_flag_then_env_then_setting() -> None:
    stream = io.StringIO()
    assert logs.configure(1, level="ERROR", environ={"EDGEFLEET_LOG_LEVEL": "DEBUG"}, stream=stream) == logging.INFO
    assert logs.configure(0, level="ERROR", environ={"EDGEFLEET_LOG_LEVEL": "DEBUG"}, stream=stream) == logging.DEBUG
    assert logs.configure(0, level="ERROR", environ={}, stream=stream) == logging.ERROR
    assert logs.configure(0, environ={}, stream=stream) == logging.WARNING
    # One handler, however often a component re-configures.
    assert sum(1 for h in logging.getLogger().handlers if getattr(h, "_edgefleet_handler", False)) == 1


def test_json_lines_carry_the_fields_that_apply() -> None:
    stream = io.StringIO()
    logs.configure(0, level="INFO", log_format="json", environ={}, stream=stream)
    logs.set_context(device_id="dev-1")
    logging.getLogger("agent.x").info("update of %s: %s", "wine", "staged",
                                      extra=logs.fields(model="wine", version="1.1.0", rollout_id="r-1"))
    logging.getLogger("agent.x").warning("no fields here")
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["message"] == "update of wine: staged" and first["level"] == "INFO" and first["logger"] == "agent.x"
    assert (first["device_id"], first["model"], first["version"], first["rollout_id"]) == \
        ("dev-1", "wine", "1.1.0", "r-1")
    assert first["ts"].endswith("Z")
    assert second["device_id"] == "dev-1" and "model" not in second


def test_text_lines_append_the_fields() -> None:
    stream = io.StringIO()
    logs.configure(0, level="INFO", environ={}, stream=stream)
    logging.getLogger("agent.x").info("committed", extra=logs.fields(model="wine", version=None))
    assert stream.getvalue().rstrip().endswith(" INFO agent.x: committed model=wine")


def test_unknown_fields_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown log fields"):
        logs.fields(modle="typo")


@pytest.mark.parametrize("argv", [["agent", "run", "-v"], ["-v", "agent", "run"], ["agent", "-v", "run"],
                                  ["server", "-v"], ["models", "list", "-v"], ["rollouts", "status", "r", "-v"]])
def test_verbose_goes_before_or_after_any_subcommand(argv: list[str]) -> None:
    assert logs.verbosity(build_parser().parse_args(argv)) == 1


def test_verbose_counts_everywhere_and_log_format_after_the_subcommand() -> None:
    args = build_parser().parse_args(["-v", "agent", "run", "-v", "--log-format", "json"])
    assert logs.verbosity(args) == 2 and logs.format_flag(args) == "json"


def test_env_level_by_name_works_and_a_bad_one_is_one_line(monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("EDGEFLEET_LOG_LEVEL", "INFO")
    assert main(["profiles", "list"]) == 0
    assert not [h for h in logging.getLogger().handlers if getattr(h, "_edgefleet_handler", False)]  # main() cleans up
    monkeypatch.setenv("EDGEFLEET_LOG_LEVEL", "bogus")
    assert main(["profiles", "list"]) == 2
    err = capsys.readouterr().err
    assert "EDGEFLEET_LOG_LEVEL 'bogus' is not a log level" in err and "Traceback" not in err

"""The one error shape (edgefleet.problems): RFC 9457 problem details with a fix."""

from __future__ import annotations

import json

import pytest

from edgefleet.errors import AssignmentError, EdgefleetError, InputError
from edgefleet.problems import MEDIA_TYPE, Problem, from_error, problem_type


class NotFoundError(EdgefleetError):
    pass


def test_error_becomes_problem_with_fix_and_typed_kind() -> None:
    problem = from_error(InputError("x: expected a number", fix="send numbers", field="x"), status=400)
    assert problem.to_dict() == {
        "type": "urn:edgefleet:problem:input", "title": "Bad Request", "status": 400,
        "detail": "x: expected a number", "fix": "send numbers", "field": "x"}
    assert json.loads(problem.render()) == problem.to_dict()
    assert MEDIA_TYPE == "application/problem+json"


def test_type_is_kebab_case_of_the_class() -> None:
    assert problem_type(NotFoundError) == "urn:edgefleet:problem:not-found"
    assert problem_type(EdgefleetError) == "urn:edgefleet:problem:edgefleet"


def test_fix_always_present_status_only_when_known() -> None:
    document = from_error(EdgefleetError("broken")).to_dict()
    assert document["fix"] is None and "status" not in document and document["title"] == "Error"


def test_assignment_reason_is_a_member() -> None:
    document = from_error(AssignmentError("old", reason="replayed"), status=409).to_dict()
    assert document["reason"] == "replayed" and document["title"] == "Conflict"


def test_extension_members_cannot_shadow_standard_ones() -> None:
    with pytest.raises(ValueError):
        Problem(detail="x", extra={"status": 1})
    with pytest.raises(ValueError):
        Problem(detail="x", status=42)


def test_reads_old_and_foreign_shapes_leniently() -> None:
    assert Problem.from_dict({"detail": "gone", "fix": "retry"}, status=404).to_dict() == {
        "type": "about:blank", "title": "Not Found", "status": 404, "detail": "gone", "fix": "retry"}
    assert Problem.from_dict({"error": "bad", "fix": None}).detail == "bad"
    assert Problem.from_dict({"detail": [{"loc": ["body"]}]}, status=422).detail.startswith("{")
    round_trip = from_error(InputError("x", field="a"), status=400)
    assert Problem.from_dict(round_trip.to_dict()) == round_trip

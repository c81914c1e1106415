"""schemathesis against the server's own OpenAPI document (issue 14).

Every operation is called with data generated from its schema (valid and invalid), as the
admin, on a server (with its embedded broker and rollout engine) that holds a published model,
an enrolled device and a stored report.
No answer may be a 5xx, and every answer must match what the document says: status code,
content type (problem details for errors), headers and body schema. The examples are
bounded so the whole run stays well under a minute on a loaded 2-core machine.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.result import Ok

from fleet_server.app import create_app
from tests.integration.server.harness import make_bundle, server_config

ADMIN = {"Authorization": "Bearer test-admin-token"}
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance]


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    data: Path = tmp_path_factory.mktemp("openapi") / "data"
    # With MQTT (the embedded broker): the rollout routes need the engine.
    application = create_app(server_config(data, f"sqlite:///{data.parent}/db.sqlite", max_upload_bytes=200_000))
    with TestClient(application) as client:
        assert client.post("/api/v1/models", headers=ADMIN,
                           files={"bundle": ("b.tar.gz", make_bundle("digits", "1.0.0"))}).status_code == 201
        token = client.post("/api/v1/devices/enrollment-tokens", headers=ADMIN, json={"profile": "rpi4-64"}).json()
        device = client.post("/api/v1/enroll", json={"token": token["token"]}).json()["device_id"]
        with application.state.ctx.db.session() as session:
            from fleet_server.tables import DeviceRow

            row = session.get(DeviceRow, device)
            row.reported = {"online": True, "models": ["not", "an", "object"]}  # a poisoned report, stored
            session.commit()
        yield application
    application.state.ctx.close()


# Per operation and mode: ~20 operations x 2 modes x this many calls stay under a minute.
EXAMPLES = settings(max_examples=6, deadline=None, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck))


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["valid", "invalid"])
def test_every_operation_answers_as_documented(app: Any, mode: GenerationMode) -> None:
    # The schema comes from the running app (not loaded at collection): operations one by one,
    # each with its own bounded hypothesis run, so a failure names its operation.
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    results = list(schema.get_all_operations())
    assert all(isinstance(r, Ok) for r in results), [r for r in results if not isinstance(r, Ok)]
    operations = [r.ok() for r in results if isinstance(r, Ok)]
    assert len(operations) >= 15
    exercised = 0
    for operation in operations:
        @given(case=operation.as_strategy(generation_mode=mode))
        @EXAMPLES
        def call(case: schemathesis.Case) -> None:
            case.call_and_validate(headers=ADMIN, checks=CHECKS)

        try:
            call()
        except Unsatisfiable:  # no invalid data exists for an operation that takes no input
            assert mode is GenerationMode.NEGATIVE, operation.label
            continue
        except Exception as exc:
            raise AssertionError(f"{operation.label} ({mode.value} data): {exc}") from exc
        exercised += 1
    assert exercised >= 12

"""The server's batch route for a model with named columns (issue 12): a CSV upload with strings
is answered as CSV, and a bad cell is a 422 naming its row and column, through the real app."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from fleet_server.app import create_app
from tests.integration.server.harness import server_config
from tests.support.column_model import column_labels, make_column_bundle

ADMIN = {"Authorization": "Bearer test-admin-token"}


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    bundle = tmp_path / "shapes-1.0.0.tar.gz"
    bundle.write_bytes(make_column_bundle())
    app = create_app(server_config(tmp_path / "data"), mqtt=False)
    app.state.ctx.registry.push(bundle)
    with TestClient(app) as test_client:
        yield test_client


def test_a_csv_of_named_columns_is_answered_and_a_bad_cell_named(client: TestClient) -> None:
    body = b"size,color,note\n0.5,red,a\n-1.25,blue,b\n2,purple,unseen color\n"
    answer = client.post("/api/v1/models/shapes/predict/batch", files={"file": ("rows.csv", body)}, headers=ADMIN)
    assert answer.status_code == 200, answer.text
    lines = answer.text.splitlines()
    assert lines[0] == "prediction,p_small,p_big"
    assert [line.split(",")[0] for line in lines[1:]] == column_labels([0.5, -1.25, 2.0], ["red", "blue", "purple"])

    bad = client.post("/api/v1/models/shapes/predict/batch", headers=ADMIN,
                      files={"file": ("rows.csv", b"size,color\n0.5,red\nlarge,blue\n")})
    assert bad.status_code == 422
    assert "rows.csv: data row 2, column 'size' is 'large', not a number" in bad.json()["detail"]

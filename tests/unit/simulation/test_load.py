"""What the demo's prediction load sends: each model's bodies in its form, and their drifted twins."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgefleet.images import sniff
from simulation.load import (
    PNG,
    RECORDS,
    ROWS,
    RequestSource,
    brighter,
    image_requests,
    record_requests,
    row_requests,
)


def test_rows_records_and_pictures_in_the_forms_the_agent_takes() -> None:
    rows = row_requests([[1.0, 2.0], [3.0, 4.0]], weight=2)
    assert rows.form == ROWS and rows.weight == 2
    assert json.loads(rows.bodies[0].content) == {"inputs": [[1.0, 2.0]]}
    assert json.loads(rows.shifted[0].content) == {"inputs": [[7.5, 9.0]]}  # brighter, saturated pixels

    records = record_requests([{"alcohol": 13.2, "region": "east"}], column="region", unseen="south")
    assert records.form == RECORDS and records.bodies[0].content_type == "application/json"
    assert json.loads(records.bodies[0].content) == {"instances": [{"alcohol": 13.2, "region": "east"}]}
    assert json.loads(records.shifted[0].content) == {"instances": [{"alcohol": 13.2, "region": "south"}]}

    pictures = np.zeros((3, 4, 4, 3), np.uint8)
    images = image_requests(pictures)
    assert images.form == PNG and len(images.bodies) == len(images.shifted) == 3
    assert all(b.content_type == PNG and sniff(b.content) == "PNG" for b in (*images.bodies, *images.shifted))
    assert images.bodies[0].content != images.shifted[0].content


def test_an_over_exposed_picture_is_brighter_and_stays_8_bit() -> None:
    shifted = brighter(np.array([0, 100, 255], np.uint8))
    assert shifted.dtype == np.uint8 and shifted.tolist() == [100, 160, 253]


def test_a_source_needs_bodies_and_a_positive_weight() -> None:
    with pytest.raises(ValueError, match="needs bodies"):
        RequestSource(ROWS, [], [])
    with pytest.raises(ValueError, match="weight"):
        row_requests([[1.0]], weight=0)

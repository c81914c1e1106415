"""Secrets, device ids, labels and CLI durations."""

from __future__ import annotations

import argparse

import pytest

from edgefleet.topics import check_device_id
from fleet_server.cli.admin import parse_ttl
from fleet_server.credentials import (
    check_labels,
    hash_secret,
    new_device_id,
    new_secret,
    parse_label_args,
    safe_url,
    strip_userinfo,
)


def test_secrets_are_unique_and_stored_hashed() -> None:
    a, b = new_secret(), new_secret()
    assert a != b and len(a) >= 43
    assert hash_secret(a) != a and len(hash_secret(a)) == 64


def test_device_ids_are_valid_topic_levels() -> None:
    ids = {new_device_id() for _ in range(100)}
    assert len(ids) == 100
    for device_id in ids:
        check_device_id(device_id)


def test_label_args() -> None:
    assert parse_label_args(["site=a", "ring=canary"]) == {"site": "a", "ring": "canary"}
    for bad in (["novalue"], ["=x"], ["a b=c"], ["k=v w"], ["+/#=x"]):
        with pytest.raises(ValueError):
            parse_label_args(bad)
    with pytest.raises(ValueError, match="at most"):
        check_labels({f"k{i}": "v" for i in range(40)})


@pytest.mark.parametrize(("text", "seconds"), [("90", 90), ("15m", 900), ("1h", 3600), ("7d", 604800)])
def test_ttl(text: str, seconds: int) -> None:
    assert parse_ttl(text) == seconds


@pytest.mark.parametrize("text", ["0", "1w", "-1h", "h", ""])
def test_bad_ttl(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_ttl(text)


def test_urls_never_leak_passwords() -> None:
    assert safe_url("mqtt://srv:secret@broker:1883") == "mqtt://srv:***@broker:1883"
    assert strip_userinfo("mqtts://srv:secret@broker:8883/x") == "mqtts://broker:8883/x"
    assert strip_userinfo("mqtt://broker:1883") == "mqtt://broker:1883"

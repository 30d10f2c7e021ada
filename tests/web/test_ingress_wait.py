"""`Prefer: wait=N` (RFC 7240) as the HTTP ingress reads it."""

from __future__ import annotations

import pytest

from paystream.web.ingress import MAX_WAIT_SECONDS, _preferred_wait


@pytest.mark.parametrize(
    ("prefer", "wait"),
    [
        ("", None),
        ("wait=5", 5.0),
        ("respond-async, wait=10", 10.0),
        ("WAIT = 3", 3.0),
        ('wait="7"', 7.0),
        ("wait=7; x=y", 7.0),
        ("handling=lenient, wait=2, return=minimal", 2.0),
        ("wait=0", None),
        ("wait=3600", MAX_WAIT_SECONDS),
        ("wait=-1", None),
        ("wait=1.5", None),  # delta-seconds are whole
        ("nowait=5", None),
        ("wait", None),
    ],
)
def test_the_wait_preference(prefer: str, wait: float | None) -> None:
    assert _preferred_wait(prefer) == wait

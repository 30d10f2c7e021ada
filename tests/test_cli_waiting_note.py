"""A CLI command still running after a few seconds says what it waits on, once: a broker
that takes connections and never answers held `paystream tenants list` aiokafka's 40 s
in silence."""

from __future__ import annotations

import asyncio

import pytest

from paystream.cli import base


def test_a_slow_command_says_it_waits_on_the_broker(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(base, "WAITING_NOTE_SECONDS", 0.05)
    monkeypatch.setenv("KAFKA_BROKER_URL", "kafka://broker-1:9092;broker-2:9092")

    async def slow() -> str:
        await asyncio.sleep(0.3)
        return "done"

    assert base._run(slow()) == "done"
    err = capsys.readouterr().err
    assert err.count("still waiting on the broker at broker-1:9092, broker-2:9092") == 1, err


def test_a_quick_command_or_one_with_its_own_progress_says_nothing(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(base, "WAITING_NOTE_SECONDS", 0.05)

    async def quick() -> int:
        return 1

    async def slow() -> int:
        await asyncio.sleep(0.2)
        return 2

    assert base._run(quick()) == 1
    assert base._run(slow(), note_waiting=False) == 2
    assert capsys.readouterr().err == ""


def test_a_failure_after_the_note_is_still_the_clean_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import click

    from paystream.errors import PaystreamError

    monkeypatch.setattr(base, "WAITING_NOTE_SECONDS", 0.01)

    async def fails() -> None:
        await asyncio.sleep(0.05)
        raise PaystreamError("the registry is unreadable")

    with pytest.raises(click.ClickException, match="the registry is unreadable"):
        base._run(fails())

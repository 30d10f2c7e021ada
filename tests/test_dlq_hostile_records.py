"""`paystream dlq list` / `dlq replay` against hostile records on the dead-letter topic
(any principal that may produce to it can write them; review h64d)."""

from __future__ import annotations

import base64
from typing import Any

import pytest
import pytest_asyncio

from paystream.dlq import shown_text
from paystream.streams.pan import contains_card_number
from paystream.tenancy.crypto import MasterKey
from tests.fixtures.pipeline import RawSend
from tests.test_cli import run_cli
from tests.test_dlq_replay_safety import Shown

CARD = "4242424242424242"
# A control character whose escape ends in a digit ("\x04" is shown "\\x04"), then the
# card number but its first digit: no card number as sent (15 digits), one as shown.
SPLIT = "\x04" + CARD[1:]


# Groups parted by a control or invisible mark: a card number as sent, whole once escaped
# ("4242\\t4242...") unless redacted before (review h64h).
PARTED = [sep.join(["4242"] * 4) for sep in ("\t", "\x00", "\u202e", "\x01", "\x85", "\x9b")]


@pytest.mark.parametrize("text", [f"x/0/{SPLIT}", SPLIT, f"acme{SPLIT}", CARD, *PARTED])
def test_shown_text_never_shows_a_card_number(text: str) -> None:
    """Redacted, then escaped, an escape completed a card number (review h64g); escaped,
    then redacted, one parted by controls came out whole (review h64h)."""
    shown = shown_text(text)
    assert CARD not in shown and not contains_card_number(shown), shown
    assert "4242" not in shown, shown


@pytest.mark.parametrize("limit", [200, 64])
def test_no_twelve_digits_of_a_card_number_cut_at_the_limit_are_shown(limit: int) -> None:
    """Cut before it was redacted, a card number straddling the limit left its first 12
    digits (review h64h; PCI DSS allows the first six and the last four)."""
    shown = shown_text("x" * (limit - 12) + CARD, limit)
    assert "424242424242" not in shown, shown


SOURCES = [f"x/0/{CARD}\x1b]0;pwned\x07", f"x/0/{SPLIT}", f"x/0/{PARTED[0]}"]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def dropped_shown(deployment_factory: Any) -> Shown:
    """A dropped dead letter for each of SOURCES, at offsets 0, 1, 2 of one topic, listed
    and replayed once (each record's lines name its offset)."""
    dep = await deployment_factory()
    s = dep.settings
    await dep.produce(
        s.dlq_topic,
        *(
            RawSend(
                value=b"",
                partition=0,
                headers=(
                    ("paystream-dlq-reason", b"internal_error"),
                    ("paystream-dlq-dropped", b"too_large_to_keep"),
                    ("paystream-source", source.encode()),
                    ("paystream-dlq-detail", f"detail {SPLIT} {PARTED[0]}".encode()),
                ),
            )
            for source in SOURCES
        ),
    )
    listed = run_cli(dep, "dlq", "list", "--topic", "dlq")
    replayed = run_cli(dep, "dlq", "replay", "--topic", "dlq", "--without-master-key")
    return Shown(s.dlq_topic, listed, replayed)


@pytest.mark.asyncio(loop_scope="session")
@pytest.mark.parametrize("source", SOURCES)
async def test_a_dropped_dead_letters_source_is_shown_escaped_and_redacted(
    dropped_shown: Shown, source: str
) -> None:
    """A dropped dead letter's `paystream-source` was printed as it stood, by `dlq list`,
    `dlq replay` and its log line: a card number whole, terminal escapes to the terminal
    (every other producer-chosen field went through `_shown`; review h64d); then a card
    number an escape completed (review h64g), in the detail too."""
    at = f"{dropped_shown.topic}[0]@{SOURCES.index(source)}"
    listed, replayed = dropped_shown.listed, dropped_shown.replayed
    for where, out in (
        ("dlq list", listed.stdout),
        ("dlq replay", replayed.stdout),
        ("dlq replay's log", replayed.stderr),
    ):
        lines = out.split("\n")
        mine = [line for line in lines if at in line]
        assert len(mine) == 1, f"{where}: no single line for {at}:\n{out}"
        # Its own line, and those naming no record (what another record's line holds is
        # that record's case).
        for shown in mine + [line for line in lines if "[0]@" not in line]:
            assert CARD not in shown, f"{where}: {shown}"
            assert "\x1b" not in shown, f"{where}: {shown}"
            assert "4242\\t4242" not in shown, f"{where}: {shown}"


def _with_no_value(header: str) -> RawSend:
    """A dead letter one of whose headers has no value (Kafka allows a null one)."""
    headers = ((header, None), ("paystream-dlq-reason", b"x"))
    return RawSend(key=b"acme", value=b"{}", partition=0, headers=headers)


@pytest.mark.asyncio(loop_scope="session")
async def test_dlq_list_survives_a_header_with_no_value(deployment_factory: Any) -> None:
    """A Kafka header may have a null value: `ParkedRecord.command_id_and_type` called
    `.decode` on it, and `dlq list` died with a traceback on every run, listing nothing."""
    dep = await deployment_factory()
    s = dep.settings
    await dep.produce(s.dlq_topic, _with_no_value("ce_id"))
    listed = run_cli(dep, "dlq", "list", "--topic", "dlq", check=False)
    assert listed.returncode == 0, listed.stderr[-1500:]
    assert "Traceback" not in listed.stderr


@pytest.mark.asyncio(loop_scope="session")
async def test_a_replay_survives_a_ce_header_with_no_value(deployment_factory: Any) -> None:
    """With the master key, a re-send is sealed over its ce_* headers: a null-valued one
    raised TypeError in first_attempt._message, so every replay died with a traceback at
    that record and nothing after it on its partition was ever re-driven. Read as b"",
    as the worker reads it."""
    key = base64.b64encode(MasterKey.generate().key).decode()
    dep = await deployment_factory(paystream_master_key=key)
    s = dep.settings
    ok = (("paystream-dlq-reason", b"x"),)
    after = RawSend(key=b"acme", value=b"after", partition=0, headers=ok)
    await dep.produce(s.dlq_topic, _with_no_value("ce_subject"), after)
    first = run_cli(dep, "dlq", "replay", "--topic", "dlq", check=False)
    assert first.returncode == 0, first.stderr[-1500:]
    assert "Traceback" not in first.stderr

"""The outcome helpers' fast paths against what they stand for, on varied and hostile
input: ``command_ref`` against the dataclass's own constructor, ``outcome_id`` (salted
too) against ``uuid.uuid5``."""

from __future__ import annotations

import dataclasses
import pickle
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given
from hypothesis import strategies as st

from paystream.streams.outcomes import _NAMESPACE, CommandRef, command_ref, outcome_id

_TEXT = st.text(max_size=30)  # surrogates, NULs, control characters and all
_OPTIONAL = st.none() | _TEXT


def test_command_ref_is_built_as_its_dataclass_allows() -> None:
    """What ``command_ref`` relies on: plain fields set in declaration order, no
    __post_init__, no slots, the one default it leaves out False."""
    fields = dataclasses.fields(CommandRef)
    assert [f.name for f in fields] == [
        "tenant_id", "command_id", "command_type", "idempotency_key", "time", "traceparent",
        "source", "id_salt", "traceparent_is_outcomes", "tracestate",
    ]  # fmt: skip
    assert all(f.init for f in fields)
    assert not hasattr(CommandRef, "__post_init__")
    assert not hasattr(CommandRef, "__slots__")
    assert CommandRef.__dataclass_params__.frozen  # type: ignore[attr-defined]
    by_name = {f.name: f for f in fields}
    assert by_name["traceparent_is_outcomes"].default is False


@given(
    tenant_id=_TEXT,
    command_id=_TEXT,
    command_type=_TEXT,
    idempotency_key=_TEXT,
    time=st.datetimes(timezones=st.timezones() | st.just(UTC)),
    traceparent=_OPTIONAL,
    tracestate=_OPTIONAL,
    source=st.none() | st.tuples(st.integers(-1, 2**31), st.integers(-1, 2**63)),
    id_salt=_OPTIONAL,
)
def test_command_ref_is_the_dataclass_constructor(
    tenant_id: str,
    command_id: str,
    command_type: str,
    idempotency_key: str,
    time: datetime,
    traceparent: str | None,
    tracestate: str | None,
    source: tuple[int, int] | None,
    id_salt: str | None,
) -> None:
    fields = {
        "tenant_id": tenant_id,
        "command_id": command_id,
        "command_type": command_type,
        "idempotency_key": idempotency_key,
        "time": time,
        "traceparent": traceparent,
        "tracestate": tracestate,
        "source": source,
        "id_salt": id_salt,
    }
    fast, full = command_ref(**fields), CommandRef(**fields)
    assert type(fast) is CommandRef
    assert fast == full and hash(fast) == hash(full) and repr(fast) == repr(full)
    assert list(vars(fast).items()) == list(vars(full).items())  # (the same order too)
    assert pickle.loads(pickle.dumps(fast)) == full
    assert replace(fast, tracestate=None) == replace(full, tracestate=None)
    try:
        fast.tenant_id = "other"  # type: ignore[misc]
    except dataclasses.FrozenInstanceError:
        pass
    else:  # pragma: no cover
        raise AssertionError("a command_ref must stay frozen")


@given(_TEXT, _TEXT, _TEXT, _OPTIONAL)
def test_outcome_id_is_uuid5_of_the_command_salted_too(
    tenant: str, command: str, outcome: str, salt: str | None
) -> None:
    name = f"{tenant}\x1f{command}\x1f{outcome}" + ("" if salt is None else f"\x1f{salt}")
    try:
        expected = str(uuid.uuid5(_NAMESPACE, name))
    except UnicodeEncodeError:  # a lone surrogate: both refuse it alike
        try:
            outcome_id(tenant, command, outcome, salt)
        except UnicodeEncodeError:
            return
        raise AssertionError("outcome_id took what uuid5 refuses") from None
    assert outcome_id(tenant, command, outcome, salt) == expected
    # The namespace hash it copies from is never changed by a copy's updates.
    assert outcome_id(tenant, command, outcome, salt) == expected


def test_outcome_id_of_a_fixed_command() -> None:
    """(A literal: the ids already emitted must never change.)"""
    assert outcome_id("acme", "cmd-1", "payment.succeeded", "0:5") == str(
        uuid.uuid5(_NAMESPACE, "acme\x1fcmd-1\x1fpayment.succeeded\x1f0:5")
    )
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=2)))
    ref = command_ref(
        tenant_id="acme", command_id="c", command_type="payment.create",
        idempotency_key="c", time=when, traceparent=None, tracestate=None, source=None,
        id_salt=None,
    )  # fmt: skip
    assert ref == CommandRef("acme", "c", "payment.create", "c", when)


_TRACEPARENTS = (
    st.none()
    | _TEXT
    | st.builds(
        lambda t, s, f: f"00-{t:032x}-{s:016x}-{f:02x}",
        st.integers(1, 2**128 - 1),
        st.integers(1, 2**64 - 1),
        st.integers(0, 255),
    )
)


@given(
    st.lists(
        st.tuples(_TEXT, _TEXT, _OPTIONAL, _TRACEPARENTS, st.booleans()), min_size=1, max_size=6
    ),
    st.lists(st.integers(0, 5), max_size=20),
)
def test_outcome_traceparent_kept_for_the_last_command_is_its_own(
    commands: list[tuple[str, str, str | None, str | None, bool]], order: list[int]
) -> None:
    """Asked in any order, again and again (tenants interleave), each command's answer
    is the one worked out afresh for it."""
    from paystream.streams.outcomes import outcome_traceparent
    from paystream.streams.tracecontext import child_traceparent

    refs = [
        replace(
            command_ref(
                tenant_id=tenant,
                command_id=command,
                command_type="payment.create",
                idempotency_key=command,
                time=datetime(2026, 12, 2, tzinfo=UTC),
                traceparent=traceparent,
                tracestate=None,
                source=None,
                id_salt=salt,
            ),
            traceparent_is_outcomes=is_outcomes,
        )
        for tenant, command, salt, traceparent, is_outcomes in commands
    ]
    for i in [*range(len(refs)), *order, *range(len(refs))]:
        ref = refs[i % len(refs)]
        fresh = (
            ref.traceparent
            if ref.traceparent is None or ref.traceparent_is_outcomes
            else child_traceparent(ref.tenant_id, ref.command_id, ref.id_salt, ref.traceparent)
            or ref.traceparent
        )
        assert outcome_traceparent(ref) == fresh

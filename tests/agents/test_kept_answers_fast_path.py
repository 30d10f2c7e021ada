"""RecordAnswers.kept_or_parked (one lookup) against kept and parked (two), on varied and
hostile states: the same answers, the same errors."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from paystream.agents.answers import _PARKED, RecordAnswers, _tag

_IDS = st.sampled_from(["k1", "k2", "", "é-\x00", "x" * 300])
_DATA = st.dictionaries(st.sampled_from(["reason", "message", "refusal"]), st.text(max_size=5))
_ENTRY = st.fixed_dictionaries(
    {
        "id": _IDS.map(_tag)
        | _IDS.map(lambda i: _PARKED + _tag(i))
        | st.sampled_from(["", "parked:", "zz"]),
        "data": _DATA,
        "n": st.integers(0, 100),
    }
)
_KEPT = st.dictionaries(st.sampled_from(["-1", "0", "1", "2", "07", "x"]), _ENTRY, max_size=4)
_STATE = (
    st.none()
    | st.fixed_dictionaries({"floor": st.integers(-1, 3), "bytes": st.just(0), "kept": _KEPT})
    | st.sampled_from([[], "kept", {"kept": None}, {"kept": []}, {"floor": 0}])
)
_HOSTILE = st.sampled_from(
    [{"data": {}}, {"id": None, "data": {}}, {"id": _tag("k1"), "data": 5}, {"id": _tag("k1")}]
)


def _outcome(call: Any) -> tuple[str, Any]:
    try:
        return "ok", call()
    except Exception as exc:  # (the same error, whichever way)
        return "raised", type(exc)


def _both(answers: RecordAnswers, partition: int, offset: int, cid: str) -> tuple[Any, Any]:
    kept = answers.kept(partition, offset, cid)
    if kept is not None:
        return kept, None  # (the pipeline asks parked only of one not kept)
    return None, answers.parked(partition, offset, cid)


@settings(deadline=None)  # (a shared machine: no timing)
@given(
    _STATE,
    st.none() | _HOSTILE,
    st.integers(-2, 3),
    _IDS,
    st.integers(0, 2),
)
def test_one_lookup_answers_as_kept_then_parked(
    state: Any, hostile: Any, offset: int, cid: str, partition: int
) -> None:
    if hostile is not None and isinstance(state, dict) and isinstance(state.get("kept"), dict):
        state["kept"][str(max(offset, 0))] = hostile
    table: dict[str, Any] = {} if state is None else {RecordAnswers.key(partition): state}
    answers = RecordAnswers(table, None)
    expected = _outcome(lambda: _both(answers, partition, offset, cid))
    got = _outcome(lambda: answers.kept_or_parked(partition, offset, cid))
    assert got == expected
    if got[0] == "ok" and got[1][0] is not None:  # a copy, not the kept data itself
        assert got[1][0] is not table[RecordAnswers.key(partition)]["kept"][str(offset)]["data"]


def test_each_kind_is_found() -> None:
    table: dict[str, Any] = {}
    answers = RecordAnswers(table, None)
    answers.keep(0, 5, "k1", {"reason": "r"})
    answers.keep_parked(0, 6, "k1", {"refusal": None})
    assert answers.kept_or_parked(0, 5, "k1") == ({"reason": "r"}, None)
    assert answers.kept_or_parked(0, 6, "k1") == (None, {"refusal": None})
    assert answers.kept_or_parked(0, 5, "k2") == (None, None)
    assert answers.kept_or_parked(0, 7, "k1") == (None, None)
    assert answers.kept_or_parked(0, -1, "k1") == (None, None)

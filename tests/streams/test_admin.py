"""Topic creation reports what the broker refused instead of passing it as created."""

from __future__ import annotations

import pytest

from paystream.streams.admin import TopicCreationError, _raise_failures


def test_created_and_already_existing_topics_pass() -> None:
    _raise_failures([("a", 0), ("b", 36, None), ("c", 0, "")])


def test_a_refused_topic_is_an_error_naming_it_and_why() -> None:
    answer = [("ok", 0, None), ("big", 38, "Replication factor: 3 larger than brokers: 1.")]
    with pytest.raises(TopicCreationError) as err:
        _raise_failures(answer)
    assert "big: InvalidReplicationFactorError (Replication factor: 3" in str(err.value)
    assert "ok" not in str(err.value).replace("broker", "")

"""TopicTail, where the e2e tests have imported it from (it lives in tests/fixtures)."""

from tests.fixtures.topic_tail import TopicTail

__all__ = ["TopicTail"]

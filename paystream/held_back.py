"""The times `dlq replay` runs printed when they held stale records back, kept in Redis.

`--include-stale-as-of TIME` re-sends as reconciled the records that were stale as of
TIME: it means "the run that printed TIME showed me these, and I checked them with the
provider". Any other time, a later one above all ("now"), names records nobody was shown,
and re-sent past the provider's key window a command it applied is applied again. So a
run that holds records back records its time here (next to the replay lease, for 30
days), and a replay naming a time no run printed is refused. Without Redis (`--no-lease`)
nothing is recorded, and only a time later than now is refused.
"""

from __future__ import annotations

import time

import redis

__all__ = ["HeldBackTimes", "member"]

_KEEP_SECONDS = 30 * 86_400
_TIMEOUT_SECONDS = 5.0


def member(as_of_ms: int, topics: str) -> str:
    """How a run's time is kept: ms since the epoch and the topics it read ("all",
    "dlq" or "retry"), so that any spelling of the same instant matches."""
    return f"{as_of_ms}@{topics}"


class HeldBackTimes:
    """The set of printed times of one deployment (named after its commands topic)."""

    def __init__(self, redis_url: str, commands_topic: str) -> None:
        self._client = redis.Redis.from_url(
            redis_url, socket_timeout=_TIMEOUT_SECONDS, socket_connect_timeout=_TIMEOUT_SECONDS
        )
        self._key = f"paystream:dlq:held-back-as-of:{commands_topic}"

    def record(self, as_of_ms: int, topics: str) -> None:
        """Keep this run's time, scored by when it was printed; forget those older
        than 30 days."""
        now_ms = int(time.time() * 1000)
        with self._client.pipeline() as pipe:
            pipe.zadd(self._key, {member(as_of_ms, topics): now_ms})
            pipe.zremrangebyscore(self._key, "-inf", now_ms - _KEEP_SECONDS * 1000)
            pipe.expire(self._key, _KEEP_SECONDS)
            pipe.execute()

    def printed(self, as_of_ms: int, topics: str) -> bool:
        """Did a run print this time in the last 30 days?"""
        score = self._client.zscore(self._key, member(as_of_ms, topics))
        return score is not None and score >= time.time() * 1000 - _KEEP_SECONDS * 1000

    def close(self) -> None:
        self._client.close()

"""The times `dlq replay` runs printed when they held stale records back, kept in Redis.

`--include-stale-as-of TIME` re-sends as reconciled the records that were stale as of
TIME: it means "the run that printed TIME showed me these, and I checked them with the
provider". Any other time, a later one above all ("now"), names records nobody was shown,
and re-sent past the provider's key window a command it applied is applied again. So a
run that holds records back records its time here (next to the replay lease, for 30
days), and a replay naming a time no run printed is refused. Without Redis (`--no-lease`)
nothing is recorded, and only a time later than now is refused.

Beside each time, the offsets that run read each partition to: a park whose record time
is before it may still have landed after the run read its partition (a worker's batch
stamped as built, delivered late), and that one nobody was shown either (review h67h).
"""

from __future__ import annotations

import time

import redis

__all__ = ["HeldBackTimes", "member", "read_to_key"]

_KEEP_SECONDS = 30 * 86_400
_TIMEOUT_SECONDS = 5.0


def read_to_key(commands_topic: str, as_of_ms: int) -> str:
    """The Redis hash of where the run that began at ``as_of_ms`` read to: field
    "topic/partition", value the end offset it read that partition to."""
    return f"paystream:dlq:held-back-read-to:{commands_topic}:{as_of_ms}"


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
        self._commands_topic = commands_topic

    def record(self, as_of_ms: int, topics: str) -> None:
        """Keep this run's time, scored by when it was printed; forget those older
        than 30 days."""
        now_ms = int(time.time() * 1000)
        with self._client.pipeline() as pipe:
            pipe.zadd(self._key, {member(as_of_ms, topics): now_ms})
            pipe.zremrangebyscore(self._key, "-inf", now_ms - _KEEP_SECONDS * 1000)
            pipe.expire(self._key, _KEEP_SECONDS)
            pipe.execute()

    def record_read_to(self, as_of_ms: int, read_to: dict[tuple[str, int], int]) -> None:
        """Keep where the run that began at ``as_of_ms`` read each partition to."""
        key = read_to_key(self._commands_topic, as_of_ms)
        fields: dict[str | bytes, str | bytes | int] = {
            f"{topic}/{partition}": end for (topic, partition), end in read_to.items()
        }
        with self._client.pipeline() as pipe:
            pipe.delete(key)
            if fields:
                pipe.hset(key, mapping=fields)  # type: ignore[arg-type]
            pipe.expire(key, _KEEP_SECONDS)
            pipe.execute()

    def read_to(self, as_of_ms: int) -> dict[tuple[str, int], int] | None:
        """Where that run read each partition to; None if nothing was kept of it (an
        older version's run, or one Redis did not take)."""
        key = read_to_key(self._commands_topic, as_of_ms)
        fields = self._client.hgetall(key)
        if not fields and not self._client.exists(key):
            return None
        out: dict[tuple[str, int], int] = {}
        for name, end in fields.items():
            text = name.decode() if isinstance(name, bytes) else name
            topic, _, partition = text.rpartition("/")
            out[(topic, int(partition))] = int(end)
        return out

    def printed(self, as_of_ms: int, topics: str) -> bool:
        """Did a run print this time in the last 30 days?"""
        score = self._client.zscore(self._key, member(as_of_ms, topics))
        return score is not None and score >= time.time() * 1000 - _KEEP_SECONDS * 1000

    def close(self) -> None:
        self._client.close()

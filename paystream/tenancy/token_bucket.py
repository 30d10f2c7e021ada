"""A tenant's ``commands_per_second`` and ``burst`` as a token bucket on a local clock.

The command agent's own limit (tenancy/limits.py) is the one that counts: it runs on
the broker's append times and keeps its decisions for redeliveries. This one paces
what is sent towards it: `paystream dlq replay`'s re-sends, and the HTTP ingress's
flood guard. Same arithmetic: full at the start, integer milli-tokens, no floats.
"""

from __future__ import annotations

__all__ = ["MILLI", "TokenBucket"]

MILLI = 1000  # milli-tokens per command (as tenancy/limits.py counts them)


class TokenBucket:
    """``rate`` commands a second, at most ``burst`` at once, full at the start, on the
    caller's millisecond clock (a monotonic one)."""

    def __init__(self, rate: int, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self.capacity = burst * MILLI
        self.tokens = self.capacity
        self.at_ms: int | None = None

    def wait_ms(self, now_ms: int) -> int:
        """How long until the next command may go (0: now)."""
        self._refill(now_ms)
        return 0 if self.tokens >= MILLI else -(-(MILLI - self.tokens) // self.rate)

    def take(self, now_ms: int) -> None:
        self._refill(now_ms)
        self.tokens -= MILLI

    def give_back(self) -> None:
        """The command a token was taken for was not sent after all: not spent."""
        self.tokens = min(self.capacity, self.tokens + MILLI)

    def acknowledged(self, now_ms: int) -> None:
        """Time up to ``now_ms`` refills nothing (see dlq.py: a slow acknowledgement must
        not bunch the next re-sends together at the worker)."""
        self.at_ms = now_ms

    def _refill(self, now_ms: int) -> None:
        if self.at_ms is not None and now_ms > self.at_ms:
            self.tokens = min(self.capacity, self.tokens + (now_ms - self.at_ms) * self.rate)
        self.at_ms = now_ms

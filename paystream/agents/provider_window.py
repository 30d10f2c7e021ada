"""When a command was first run, and whether a provider may have forgotten its key since.

Providers keep idempotency keys for a day. A command re-driven (`dlq replay`), or read
from a backlog, longer after its first attempt than that could be charged again: it is
parked for a person instead. Its first-attempt time is believed only under paystream's
seal (first_attempt.py); a command marked reconciled by a person runs.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from paystream.agents.handlers import Tables, entity_key
from paystream.agents.idempotency_keeping import LET_THROUGH, LET_THROUGH_VALUES
from paystream.agents.inbound import Inbound
from paystream.agents.key_pointers import KeyPointers
from paystream.dlq import RECONCILED_HEADER, stale_after_ms
from paystream.first_attempt import FIRST_ATTEMPT_HEADER, FirstAttemptSeals
from paystream.log_limits import ThrottledLog
from paystream.streams.commands import PROVIDER_READS
from paystream.streams.outcomes import CommandRef
from paystream.tables.records import IdempotencyRecord

__all__ = ["CREATES", "PARKED_KEEP_SECONDS", "ProviderWindow", "create_scope"]

# (The pipeline's logger: what operators filter its warnings by.)
_throttled = ThrottledLog(logging.getLogger("paystream.agents.pipeline"))

# How long a parked record is kept when entities are kept for ever (see _parked_until).
PARKED_KEEP_SECONDS = 540 * 24 * 3600

# Creates whose provider key is their chosen id's (handlers.create_key): entity type and
# the data field naming the id. Every create_key caller belongs here: one missing ran a
# retry of its id under a new command id past the key window as a new request (a second
# payout, a second first invoice, a second TaxRate; review finding).
CREATES: dict[str, tuple[str, str]] = {
    "customer.create": ("customer", "customer_id"),
    "payment_method.attach": ("payment_method", "payment_method_id"),
    "payment.create": ("payment", "payment_id"),
    "refund.create": ("refund", "refund_id"),
    "subscription.create": ("subscription", "subscription_id"),
    "payout.create": ("payout", "payout_id"),
    "tax_rate.create": ("tax_rate", "tax_rate_id"),
    "connected_account.create": ("connected_account", "connected_account_id"),
    "invoice.create": ("invoice", "invoice_id"),
    "transfer.create": ("transfer", "transfer_id"),
}


def create_scope(cmd: CommandRef, data: Any) -> str | None:
    """Where the idempotency table keeps when a create of a chosen id was first let
    through, if parked (``"\x1f"``: no client key can name it), or None."""
    create = CREATES.get(cmd.command_type)
    if create is None:
        return None
    chosen = getattr(data, create[1], None)
    return f"{cmd.tenant_id}:\x1fcreate:{create[0]}:{chosen}" if chosen else None


class ProviderWindow(KeyPointers):
    """First-attempt times and the providers' key window; the pipeline builds on it."""

    # (Set by the pipeline.)
    seals: FirstAttemptSeals
    tables: Tables

    def _sealed_redrive(self, rec: Inbound) -> bool:
        """Does ``rec`` carry a first-attempt time under paystream's seal? (With no
        master key nothing is sealed: the time is read as it stands, but a header anyone
        may add vouches for nothing against the size limits.)"""
        return (
            self.seals.sealing
            and self.seals.first_attempt_ms(rec.key, rec.value, rec.headers) is not None
        )

    def _stale_redrive(self, rec: Inbound, cmd: CommandRef) -> bool:
        """A re-drive past the provider's key window, to be parked for a person: not a
        read (payment.refresh), which asks the provider again and can double nothing."""
        return cmd.command_type not in PROVIDER_READS and self._past_provider_window(rec)

    def _past_provider_window(self, rec: Inbound, *, reconciled_too: bool = False) -> bool:
        """Does ``rec`` say it was first run longer ago than a replay may be re-sent
        (and was not re-sent by ``dlq replay --include-stale-as-of``, after reconciling, unless
        ``reconciled_too``: reconciled by a person is not known to the provider still)?"""
        if FIRST_ATTEMPT_HEADER not in rec.headers:
            return False  # (the common case: no header, no seal to check)
        if not reconciled_too and self._reconciled(rec):
            return False
        first = self._carried_first_attempt(rec)
        return first is not None and time.time() * 1000 - first > stale_after_ms(self.settings)

    def _key_past_provider_window(self, rec: Inbound, existing: IdempotencyRecord | None) -> bool:
        """Is ``existing`` the record of a request let through (parked, in flight) first
        let through longer ago than a provider keeps its key? Its re-drives say so in a
        header; a client's retry under its key (a new command id) said nothing, and ran
        under the key the provider may have forgotten, a day after a charge; so did the
        command's own record redelivered after a long outage (review findings). A
        re-drive reconciled by a person (`dlq replay --include-stale-as-of`) goes ahead,
        as it does with the header."""
        if existing is None or existing.first_attempt_ms is None:
            return False
        if existing.state not in LET_THROUGH or self._reconciled(rec):
            return False
        return self._past_key_window(existing.first_attempt_ms)

    def _read_past_provider_window(self, rec: Inbound, cmd: CommandRef) -> bool:
        """Is ``rec`` a command record (not a re-drive: those carry their sealed first
        attempt, judged by _past_provider_window) read longer after the broker took it
        than a provider keeps its key?"""
        return (
            self.settings.park_late_commands
            and cmd.command_type not in PROVIDER_READS
            and self._carried_first_attempt(rec) is None
            and self._past_key_window(self._first_attempt_ms(rec))
        )

    def _reconciled(self, rec: Inbound) -> bool:
        """Re-sent by `dlq replay --include-stale-as-of` after a person reconciled it with
        the provider: the mark counts under paystream's seal only (first_attempt.py), or
        any producer could release its own stale retries with it. (Unsealed, by a replay
        run without the workers' master key, it is held back again, with a warning.)"""
        return RECONCILED_HEADER in rec.headers and self._carried_first_attempt(rec) is not None

    def _past_key_window(self, first_attempt_ms: int) -> bool:
        """Was a request first let through longer ago than a provider keeps its key?"""
        return time.time() * 1000 - first_attempt_ms > stale_after_ms(self.settings)

    def _create_past_provider_window(self, rec: Inbound, cmd: CommandRef, data: Any) -> int | None:
        """The first attempt of a create of the same chosen id parked longer ago than a
        provider keeps its key, its entity not made since (None: none such). Its provider
        key is the entity's (handlers.create_key), so a retry under a new command id and
        no idempotency key, past the window, would create it again (review finding)."""
        scope = create_scope(cmd, data)
        if scope is None:
            return None
        pointer = self.idempotency.get(scope)
        if pointer is None or self._reconciled(rec):
            return None
        # Only while the create it names is still let through (parked, in flight): once
        # answered (made, declined, refused), a create of the id is a new request.
        parked = self.idempotency.get(str(pointer.get("key")))
        if parked is None or parked.get("state") not in LET_THROUGH_VALUES:
            return None
        if float(parked.get("expires_at", 0)) <= time.time():
            return None
        first = parked.get("first_attempt_ms")
        if not isinstance(first, int) or not self._past_key_window(first):
            return None
        kind, field_name = CREATES[cmd.command_type]
        made = self.tables.by_type(kind).get(entity_key(cmd.tenant_id, getattr(data, field_name)))
        if made is not None:
            return None  # made since: answered from it, the provider is not asked
        return first

    def _sent_since_ms(
        self, rec: Inbound, cmd: CommandRef, data: Any, existing: IdempotencyRecord | None
    ) -> int:
        """The earliest time the command's provider request can first have been sent
        (unix ms), for a provider that keeps no idempotency keys and finds an earlier try
        among what was made since (Paddle): this record's time (a sealed re-drive's first
        attempt if earlier), its key's first let-through, and a parked create of the same
        chosen id's (under another command's key: its provider key is the id's).
        Not capped at now: a record dated ahead (a producer's clock, on a CreateTime
        topic) is refused by the gateway until its time is near (review h75r1 F2: capped,
        a redelivery's lookup started at the redelivering worker's clock)."""
        carried = self._carried_first_attempt(rec)
        first = rec.timestamp_ms if carried is None else min(rec.timestamp_ms, carried)
        if existing is not None and existing.first_attempt_ms is not None:
            first = min(first, existing.first_attempt_ms)
        scope = create_scope(cmd, data)
        pointer = self.idempotency.get(scope) if scope is not None else None
        if pointer is not None:
            parked = self.idempotency.get(str(pointer.get("key")))
            at = parked.get("first_attempt_ms") if parked is not None else None
            if isinstance(at, int):
                first = min(first, at)
        return first

    def _first_attempt_ms(self, rec: Inbound) -> int:
        """This record's time (the broker's, on a LogAppendTime commands topic; never
        later than now, whatever a producer stamped), or the sealed one a replay carried
        if earlier: a header can only make a command look older (held back), not fresher,
        and only under paystream's seal (first_attempt.py)."""
        first = min(rec.timestamp_ms, int(time.time() * 1000))
        carried = self._carried_first_attempt(rec)
        return first if carried is None else min(first, carried)

    def _carried_first_attempt(self, rec: Inbound) -> int | None:
        """The first-attempt time ``rec`` carries under a valid seal, if any."""
        if FIRST_ATTEMPT_HEADER not in rec.headers:
            return None
        carried = self.seals.first_attempt_ms(rec.key, rec.value, rec.headers)
        if carried is None:  # made up, or sealed under a key this worker lacks
            _throttled.warning(
                "unsealed-first-attempt",
                "%s[%d]@%d carries a first-attempt time without a valid seal: ignored, its "
                "age counts from this record (a replay run without the workers' master "
                "keys loses a parked command's age)",
                rec.topic,
                rec.partition,
                rec.offset,
            )
        return carried

    def _parked_until(self, expires: float) -> float:
        """How long a parked command's record is kept: until it is answered (a re-drive
        writes its final record, which expires as any), or for as long as the tables
        keep entities. Expiring a day after it parked, it let a retry under its key,
        past the provider's key window, run as a new request (review finding)."""
        horizon = self.settings.entity_retention_seconds or PARKED_KEEP_SECONDS
        return max(expires, time.time() + horizon)

    def _with_first_attempt(self, rec: Inbound, first: int | None) -> dict[str, bytes] | None:
        """A park's first-attempt header naming ``first`` (its key's request's first let
        through, from its idempotency record) where that is earlier than the record's
        own: a retry under the key (a new command id) parked, then re-driven a day after
        the request first ran, was sent under a key the provider may have forgotten
        (review finding); `dlq replay` holds such a park back as stale, and so does the
        worker. (A park's own time stays the broker's time of its record, as before: a
        backlog read a day late and parked is held back as stale, conservatively.)"""
        if first is None or first >= self._first_attempt_ms(rec):
            return None
        return {FIRST_ATTEMPT_HEADER: str(first).encode()}

    def _let_through_at(self, rec: Inbound) -> int:
        """When the request is first let through: now (the worker's clock), or earlier
        if a re-drive carries its first attempt under paystream's seal. Not the record's
        own time: a backlog read a day late would be held as stale when first retried,
        though the provider saw its key seconds before (review finding)."""
        now = int(time.time() * 1000)
        carried = self._carried_first_attempt(rec)
        return now if carried is None else min(now, carried)

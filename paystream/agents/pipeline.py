"""The command pipeline for one record: decode, validate, tenant, idempotency, handle, emit.

Free of Faust so it can be unit-tested against plain dicts; the command agent feeds it
batches and publishes what it returns. Nothing here raises for bad input: every record
yields emitted records (an outcome, a dead letter, or a parked command).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import time
import types
import typing
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from cloudevents.core.v1.event import CloudEvent
from pydantic import ValidationError

from paystream import metrics
from paystream.agents import entity_holds
from paystream.agents.admission_order import ADMISSION_TURN, Turn
from paystream.agents.answers import RecordAnswers
from paystream.agents.card_data import (
    UNNAMED_TENANT,
    digest,
    event_holds_card,
    kept_attributes_hold_code,
    kept_headers,
    key_str,
    park_value,
    raw_holds_card,
    raw_holds_security_code,
    raw_may_hold_card,
    safe_id,
    safe_tenant,
    safe_type,
    security_code_outside_data,
    trace_context_without_cards,
    without_card_trace,
    without_code_headers,
)
from paystream.agents.entity_probe import (
    ANSWERED_BY_ANOTHER,
    EFFECT_RECORDED,
    NoProvider,
    ProviderCall,
    applied_by_entity,
    first_provider_call,
)
from paystream.agents.handlers import (
    HANDLERS,
    AlreadyApplied,
    AnsweredByAnother,
    HandlerContext,
    HandlerResult,
    Rejection,
    Tables,
    digest_shaped,
    entity_key,
    invoice_charge,
    invoice_total,
    invoice_update_total,
    subscription_charge,
    subscription_pending_charge,
    subscription_repricing,
    subscription_resume_charge,
    subscription_trial_charge,
    subscription_trialing,
)
from paystream.agents.idempotency_keeping import (
    ERASED_HASH,
    LET_THROUGH,
    LET_THROUGH_VALUES,
    judged_as_read,
)
from paystream.agents.idempotency_keeping import request_hash as _request_hash
from paystream.agents.inbound import (
    Emit,
    Inbound,
    attribute_bytes,
    bad_time,
    command_identity,
    emit,
    record_size,
    record_time,
)
from paystream.agents.provider_window import CREATES, ProviderWindow, create_scope
from paystream.built import built
from paystream.dlq import PARK_DETAIL_HEADER
from paystream.errors import ConfigurationError
from paystream.first_attempt import FIRST_ATTEMPT_HEADER, FirstAttemptSeals
from paystream.gateways.base import (
    KEYLESS_OPERATIONS,
    MONEY_MOVING_OPERATIONS,
    REQUEST_SENT_SINCE,
    Capability,
)
from paystream.gateways.errors import ErrorCode, GatewayError
from paystream.log_limits import ThrottledLog
from paystream.origin_seal import ORIGIN_HEADER, OriginSeals
from paystream.settings import ATTRIBUTES_MAX_BYTES, COMMAND_MAX_BYTES_CEILING, Settings
from paystream.streams.codec import (
    KafkaRecord,
    UndecodableRecord,
    ce_text,
    decode_record,
    is_structured,
)
from paystream.streams.commands import (
    COMMAND_PREFIX,
    COMMANDS,
    DATA_NOT_AN_OBJECT,
    ID_MAX_CHARS,
    PROVIDER_READS,
    Proration,
    validation_errors,
)
from paystream.streams.outcomes import (
    ANSWERS_HEADER,
    NOT_CE_STRING,
    REQUEST_HEADER,
    REQUEST_PATTERN,
    CommandRef,
    RejectReason,
    command_ref,
    encode_outcome,
    outcome_traceparent,
    rejection_data,
    time_text,
)
from paystream.streams.pan import (
    redact_card_numbers,
    security_code_at,
)
from paystream.streams.record_batches import UNREADABLE_BATCH_HEADER
from paystream.streams.tracecontext import (
    parse_traceparent,
    valid_tracestate,
)
from paystream.tables.commands_view import command_id_key as _command_id_key
from paystream.tables.next_action import NextActionSeal
from paystream.tables.owners import OWNER_FIELDS
from paystream.tables.records import (
    EntityRecord,
    IdempotencyRecord,
    IdempotencyState,
    StoredOutcome,
    applied_entry,
    scrub_customer_applied,
    trim_applied,
)
from paystream.tenancy.crypto import CryptoError
from paystream.tenancy.gateways import GatewayPool
from paystream.tenancy.limits import (
    HOLDING_LIMITS,
    MONEY_COMMANDS,
    OUTFLOW_VOLUMES,
    UNREAD,
    Admission,
    LimitGate,
    LimitRejection,
    ProrationCharge,
    Repricing,
    TenantLimits,
    charge_now,
    learnt_paid,
    learnt_void,
    money_command,
)
from paystream.tenancy.limits import Record as LimitRecord
from paystream.tenancy.models import TENANT_ID_PATTERN, UNREGISTERED, Tenant, TenantStatus
from paystream.tracing import CommandTrace, CommandTracing

__all__ = ["CommandProcessor", "Emit", "Inbound"]

log = logging.getLogger(__name__)
# Parks and dead letters can come for every record (a provider down, a broken producer).
_throttled = ThrottledLog(log)

# Every reason a command is dead-lettered with (the ``_dead_letter`` calls below), its
# counter started at 0: a series first scraped at 1 shows no increase, and the
# dashboard's dead-letter panel missed a worker's first dead letter of each reason.
DEAD_LETTER_REASONS = frozenset(
    {
        "internal_error",
        "not_a_cloudevent",
        "payload_too_large",
        "redrive_too_large",
        "unreadable_batch",
    }
)
for _reason in sorted(DEAD_LETTER_REASONS):
    metrics.DEAD_LETTERS.labels(_reason)


class CommandProcessor(ProviderWindow):
    """Runs commands against tables and gateways; one instance per worker."""

    def __init__(
        self,
        settings: Settings,
        tables: Tables,
        idempotency: MutableMapping[str, Any],
        tenants: Mapping[str, Any],
        gateways: GatewayPool,
        limits: MutableMapping[str, Any] | None = None,
        committed: Callable[[int], int] | None = None,
        tracing: CommandTracing | None = None,
    ) -> None:
        super().__init__(settings, idempotency)
        # OpenTelemetry spans of commands and provider calls (None: off, the default).
        self.tracing = tracing
        # Whose first-attempt times to believe (re-sent by `dlq replay`, sealed).
        self.seals = FirstAttemptSeals.from_settings(settings)
        self.origins = OriginSeals.from_settings(settings)
        # A payment's next action holds the customer's credential: kept sealed.
        self.next_actions = NextActionSeal.from_settings(settings)
        self.tables = tables
        self.tenants = tenants
        self.gateways = gateways
        # ``committed(partition)``: the commands topic's committed offset there.
        self.limits = LimitGate({} if limits is None else limits, committed=committed)
        # Rejections that depend on state, for the record's redeliveries (answers.py).
        self.answers = RecordAnswers(self.limits.table, committed)
        self.committed = committed
        self._tenants_parsed: dict[str, tuple[Any, Tenant]] = {}
        # Registered tenant → the commands-topic partition it was last read from here.
        self._partition_of: dict[str, int] = {}
        # (provider, tenant; "" for every tenant) → until when K1 lookups are paused.
        self._lookups_paused: dict[tuple[str, str], float] = {}
        self._counters: dict[tuple[str, str, str], Any] = {}
        self._rejections: dict[tuple[str, str, str], Any] = {}
        # Commands older than this are refused `past_retention` (inf: retention off).
        retention_ms = settings.entity_retention_seconds * 1000
        self._past_retention_ms = retention_ms - 86_400_000 if retention_ms > 0 else float("inf")

    @property
    def _id_window(self) -> float:
        """The idempotency window: what handlers and their probes take a command id
        reused past it to name (another request, its entities ids of their own)."""
        return float(self.settings.idempotency_ttl_seconds)

    async def _applied_by_entity(
        self, cmd: CommandRef, data: Any, request_hash: str, stand_in: NoProvider
    ) -> AlreadyApplied | None:
        """``applied_by_entity`` on this processor's tables, in its idempotency window."""
        return await applied_by_entity(
            self.tables, cmd, data, request_hash, stand_in, id_window_seconds=self._id_window
        )

    # ---- entry point --------------------------------------------------------------

    async def process(self, rec: Inbound) -> list[Emit]:
        """What a command record comes to: its outcome, or its dead letter or parked
        copy (and, with tracing on, its span, ended with what it came to)."""
        with judged_as_read(rec.timestamp_ms):
            if self.tracing is None:
                emits = await self._process(rec, None)
            else:
                trace = self.tracing.start(rec)
                try:
                    emits = await self._process(rec, trace)
                except BaseException as exc:
                    trace.failed(exc)
                    raise
                trace.finish(emits)
        return self._for_its_sender(rec, emits)

    def _for_its_sender(self, rec: Inbound, emits: list[Emit]) -> list[Emit]:
        """The outcome carries the sender's request header: a client waiting on the same
        command id for another request takes only its own answer."""
        request = rec.headers.get(REQUEST_HEADER)
        if request is None or REQUEST_PATTERN.fullmatch(request) is None:
            return emits
        events = self.settings.events_topic
        return [_with_header(e, REQUEST_HEADER, request) if e.topic == events else e for e in emits]

    async def _process(self, rec: Inbound, trace: CommandTrace | None) -> list[Emit]:
        when = record_time(rec.timestamp_ms)
        if rec.key is None and UNREADABLE_BATCH_HEADER in rec.headers:
            # What stands for a record batch no parser reads (streams/record_batches.py):
            # its detail says where the batch is; no sender can be told.
            detail = rec.headers[UNREADABLE_BATCH_HEADER].decode("utf-8", "replace")
            return self._dead_letter(rec, "unreadable_batch", detail, reject=None, when=when)
        # The quick look at the raw bytes: False for nearly every command, and then no
        # card number can be anywhere in it (key, headers, data).
        kept = kept_headers(rec.headers)
        suspicious = raw_may_hold_card(rec, kept)
        size = len(rec.value or b"")
        # The key and the CloudEvents headers have their own limit: outcomes and stored
        # records echo them (a 500 KB tenant id in the key made a 1.25 MB outcome the
        # broker refused, batch after batch). Other headers are neither read nor kept.
        attributes = len(rec.key or b"") + sum(map(len, kept)) + sum(map(len, kept.values()))
        if size > self.settings.command_max_bytes or attributes > ATTRIBUTES_MAX_BYTES:
            # A re-drive is held to the largest value limit there may be, not to the one
            # set now: it was admitted at its first attempt, and the provider may have
            # acted on it (a limit lowered since refused it, and its sender, told so,
            # might pay again). Only one a seal or this worker's records vouch for: a
            # first-attempt header anyone may add made a fresh command run past the
            # limit, or wait unanswered and replayable until `dlq replay` sealed it
            # (review findings).
            vouched = self._vouched_redrive(rec, size)
            # (Over the attribute limit too: admitted by a version before it, and its
            # outcome echoes none of its extensions. Held back, it came back on every
            # replay, the limit being fixed; review finding. But not one a park of it
            # would not fit: parked again, a record larger than the broker takes stopped
            # its batch for good; review finding.)
            runs = (
                vouched
                and (self._sealed_redrive(rec) or not self.seals.sealing)
                and (attributes <= ATTRIBUTES_MAX_BYTES or record_size(rec) <= PARK_MAX_BYTES)
            )
            if vouched and not runs:
                # Never a final answer. It waits on the dead-letter topic, replayable
                # once the limit allows it (or, unsealed, for the replay to seal).
                return self._dead_letter(
                    rec,
                    "redrive_too_large",
                    f"a re-driven command of {size} bytes (limit "
                    f"{self.settings.command_max_bytes}), key and CloudEvents headers "
                    f"{attributes} bytes (limit {ATTRIBUTES_MAX_BYTES})",
                    reject=None,
                    when=when,
                    suspicious=suspicious,
                )
            if not runs:
                return self._dead_letter(
                    rec,
                    "payload_too_large",
                    f"value {size} bytes (limit {self.settings.command_max_bytes}), key and "
                    f"CloudEvents headers {attributes} bytes (limit {ATTRIBUTES_MAX_BYTES})",
                    reject=RejectReason.PAYLOAD_TOO_LARGE,
                    when=when,
                    suspicious=suspicious,
                )
        try:
            event = decode_record(rec.key, rec.value, rec.headers)
        except UndecodableRecord as exc:
            # A re-drive (it names its first attempt) decoded when it was parked: only a
            # stricter rule since refuses it, and the provider may have acted on it, so it
            # gets no answer (its dead letter is for an operator to look at).
            redrive = FIRST_ATTEMPT_HEADER in rec.headers
            return self._dead_letter(
                rec,
                "not_a_cloudevent",
                str(exc),
                reject=None if redrive else RejectReason.VALIDATION_ERROR,
                when=when,
                suspicious=suspicious,
            )
        scanned = event  # as decoded: the card scan exempts its trace context as it came
        if size > ATTRIBUTES_MAX_BYTES and is_structured(rec.headers):
            # A structured command's attributes are in its value: held to the same limit
            # (a 60 KB traceparent was copied into its outcome and every record it wrote).
            named = attribute_bytes(event)
            tenant = str(event.get_extension("tenantid") or "") or key_str(rec.key)
            idem = ce_text(event.get_extension("idempotencykey")) or event.get_id()
            # (Not this very command, admitted by a version before this limit: its
            # answer, or its re-drive of a request the provider may have acted on,
            # stands. Another command under its key gets this answer, redelivered too.
            # Only a record keyed by its tenant was ever admitted: read for another, its
            # answer told whether that tenant ran the id; review finding.)
            admitted = (
                self._idempotency_record(f"{tenant}:{idem}", time.time())
                if _state_readable(rec, tenant)
                else None
            )
            redrive = FIRST_ATTEMPT_HEADER in rec.headers
            if named > ATTRIBUTES_MAX_BYTES and redrive and not self._sealed_redrive(rec):
                # Not under paystream's seal: a re-drive this worker's records know
                # (admitted at its first attempt by a version before this limit, maybe
                # charged) gets no final answer (review finding): with a master key it
                # waits for `dlq replay` to seal it, without one it runs. Any other is a
                # fresh command with a header anyone may add (made unanswered and
                # replayable, `dlq replay` sealed it and it ran past the limit; review
                # finding).
                redrive = self._vouched_redrive(rec, size)
                if redrive and self.seals.sealing:
                    return self._dead_letter(
                        rec,
                        "redrive_too_large",
                        f"a re-driven command's CloudEvents attributes {named} bytes "
                        f"(limit {ATTRIBUTES_MAX_BYTES})",
                        reject=None,
                        when=when,
                        suspicious=suspicious,
                        decoded=True,
                    )
            if (
                named > ATTRIBUTES_MAX_BYTES
                and not redrive
                and (admitted is None or admitted.command_id != event.get_id())
            ):
                return self._dead_letter(
                    rec,
                    "payload_too_large",
                    f"CloudEvents attributes {named} bytes (limit {ATTRIBUTES_MAX_BYTES})",
                    reject=RejectReason.PAYLOAD_TOO_LARGE,
                    when=when,
                    suspicious=suspicious,
                    decoded=True,
                )
            if named > ATTRIBUTES_MAX_BYTES:
                # Admitted before (its answer stands; a sealed re-drive was admitted at its
                # first attempt), but its oversized trace context, no part of the request,
                # is not echoed: it starts a trace of its own.
                attrs = event.get_attributes()
                event = type(event)(
                    {k: v for k, v in attrs.items() if k not in ("traceparent", "tracestate")},
                    event.get_data(),
                )
        if suspicious and event_holds_card(rec, scanned):
            # Before any other rule: every other answer echoes the command's attributes.
            return self._reject(
                _redacted_ref(rec, event, when),
                RejectReason.CARD_DATA_FORBIDDEN,
                "card numbers are not accepted; tokenise with the provider and send its token",
            )
        while True:
            emits = await self._process_event(rec, event, when, trace, suspicious)
            if emits is not None:
                return emits
            # (None: chained, its tenant suspended or removed while it waited for its
            # turn. Nothing of it was written before its turn (every branch that writes
            # returns, but a let-through's in-flight record, which a re-run finds and
            # answers by), so it is run again, as it would have been had it started
            # now: serially it would have, and been answered by what the registry says.)

    async def _process_event(
        self,
        rec: Inbound,
        event: CloudEvent,
        when: datetime,
        trace: CommandTrace | None,
        suspicious: bool = True,
    ) -> list[Emit] | None:
        # What the SDK's getters return, read from the dict they read (get_attributes
        # returns it, not a copy; get_type/get_id index it, get_extension/get_time .get()
        # it): a method call fewer for each, on every command. The events here are
        # decode_record's, which override none of the getters (tests/agents/
        # test_pipeline_glue.py holds the classes and the values to that).
        attrs = event.get_attributes()
        ce_type = attrs["type"]
        command_id = attrs["id"]
        tenant_id = str(attrs.get("tenantid") or "")
        idem_key = ce_text(attrs.get("idempotencykey")) or command_id
        traceparent = attrs.get("traceparent")
        tracestate = attrs.get("tracestate")
        if suspicious and (traceparent or tracestate):
            traceparent, tracestate = trace_context_without_cards(traceparent, tracestate)
        suffix = ce_type.removeprefix(COMMAND_PREFIX)
        sent_at = attrs.get("time")
        time_wrong = None if sent_at is None else bad_time(sent_at)
        cmd = command_ref(
            tenant_id=tenant_id or key_str(rec.key) or UNNAMED_TENANT,
            command_id=command_id,
            command_type=suffix,
            idempotency_key=idem_key,
            time=when if time_wrong or sent_at is None else sent_at,
            # A traceparent that is not W3C trace context is ignored, as W3C says: copied
            # onto the outcome, it carried whatever text a sender put there ("cvc=737"
            # included) into outcomes, stored records and parks (review finding).
            traceparent=str(traceparent)
            if traceparent and parse_traceparent(str(traceparent))
            else None,
            tracestate=valid_tracestate(str(traceparent), tracestate) if tracestate else None,
            source=(rec.partition, rec.offset) if rec.offset >= 0 else None,
            id_salt=f"{rec.partition}:{rec.offset}" if rec.offset >= 0 else None,
        )
        raw = event.get_data()
        # Before any other rule (like a card number's, in _process): every other answer
        # echoes the command's attributes, and some keep its data.
        code_key = security_code_at(raw) or security_code_outside_data(rec, event)
        if code_key is not None:
            answered = await self._security_code_answer(
                rec, cmd, raw, event.get_attributes(), code_key, trace
            )
            if answered is not None:
                return answered
            # Let through once: it runs on as any other would, but nothing of its trace
            # state (key=value pairs: "cvc=737") is kept, emitted or traced, nor is a
            # header holding the code parked (_to_retry_topic). (A code in its data stays:
            # the provider may have acted on that very request, and a re-drive must send
            # it unchanged.)
            cmd = replace(cmd, tracestate=None)
            tracestate = None
            # Its id may hold the code: its span names it as its logs do (review finding).
            traced_id = safe_id(cmd.command_id)
        else:
            traced_id = None
        # (The names are listed only when one is too long: nearly never.)
        if max(len(cmd.command_id), len(tenant_id), len(ce_type)) > ID_MAX_CHARS and (
            too_long := [
                name
                for name, text in (
                    ("id", cmd.command_id),
                    ("tenantid", tenant_id),
                    ("type", ce_type),
                )
                if len(text) > ID_MAX_CHARS
            ]
        ):
            # Before anything echoes them: every outcome of the command keeps them, some
            # several times over, and so does every entity it touches. (A record answered
            # before, by a version that took them, keeps its answer.)
            # An over-long id is answered as "sha256:<hex digest of the id>": cut short, it
            # could be another command's whole id, whose sender would take this answer
            # for its own (and never see its real one).
            # The tenant and type cut, then redacted: the whole passed the card scan, but a
            # cut can make a card number of a longer run of digits (review finding).
            short = replace(
                cmd,
                tenant_id=safe_tenant(cmd.tenant_id),
                command_id=_id_digest(cmd.command_id),
                command_type=safe_type(suffix, ID_MAX_CHARS),
            )
            if trace is not None:  # (named as its rejection names it)
                trace.begin(_nameable(short), tracestate)
            answered = self._answered_before(cmd) if _state_readable(rec, tenant_id) else None
            return answered or self._reject(
                short,
                RejectReason.VALIDATION_ERROR,
                f"{', '.join(too_long)} too long (at most {ID_MAX_CHARS} characters)",
            )
        if trace is not None:
            # Named as a rejection names it (_reject): its outcome's traceparent derives
            # the span id from those names, and a span under the raw ones (control
            # characters) was linked to by nothing (review h60d).
            named = _nameable(cmd)
            if named is not cmd:
                traced_id = named.command_id
            trace.begin(named, tracestate, message_id=traced_id)
        # Rules that need no state: the order is cheapest-first.
        if not ce_type.startswith(COMMAND_PREFIX) or suffix not in COMMANDS:
            return self._reject(
                cmd,
                RejectReason.UNKNOWN_COMMAND
                if ce_type.startswith(COMMAND_PREFIX)
                else RejectReason.UNSUPPORTED,
                f"unsupported command type {ce_type!r}; supported: "
                + ", ".join(COMMAND_PREFIX + t for t in sorted(COMMANDS)),
            )
        if not tenant_id:
            return self._reject(cmd, RejectReason.VALIDATION_ERROR, "missing extension tenantid")
        if time_wrong:
            return self._reject(cmd, RejectReason.VALIDATION_ERROR, f"time: {time_wrong}")
        if key_str(rec.key) != tenant_id:
            # The record key decides the partition and thus where tenant state lives;
            # a command keyed for one tenant must not act on another's state.
            return self._reject(
                cmd, RejectReason.TENANT_MISMATCH, "record key must equal the tenantid extension"
            )
        if _TENANT_ID.fullmatch(tenant_id) is None:
            # No tenant has such an id, and every table key is "<tenant>:<...>": read as
            # one, "acme:export" with key "cus1" was acme's record of key "export:cus1",
            # and acme's answer went out under it (review finding). Refused unread (one
            # holding a control character answered under no tenant's name: _nameable).
            return self._reject(cmd, RejectReason.UNKNOWN_TENANT, f"unknown tenant {tenant_id!r}")
        if len(idem_key) > ID_MAX_CHARS:
            return self._reject(cmd, RejectReason.VALIDATION_ERROR, "idempotencykey too long")
        # (Listed only when one holds a control character: nearly never.)
        if (
            _CONTROL.search(cmd.command_id) is not None or _CONTROL.search(idem_key) is not None
        ) and (
            controlled := [
                name
                for name, text in (("id", cmd.command_id), ("idempotencykey", idem_key))
                if _CONTROL.search(text) is not None
            ]
        ):
            # (The table keeps its own records under keys holding one.) A record answered
            # before, by a version that took it, keeps its answer. (C1 characters, which
            # no CloudEvents string may hold either, are let through as before: versions
            # before took them, and a retry of a command they ran must get its answer.)
            return self._answered_before(cmd) or self._reject(
                # (An id holding one is named by its digest, as an over-long one is:
                # _nameable.)
                cmd,
                RejectReason.VALIDATION_ERROR,
                f"{controlled[0]} holds a control character",
            )
        if raw is not None and not isinstance(raw, dict):  # [], 0, false, "..." too
            return self._reject(cmd, RejectReason.VALIDATION_ERROR, DATA_NOT_AN_OBJECT)
        # This very command (its id, its request) sent again under another key goes on as
        # under the key it was let through or answered under, through every rule below
        # (a suspended or removed tenant, past retention, ...). Run under its own key, it
        # asked the provider under a key it had never seen: charged or refunded twice
        # while the first attempt was parked (review finding).
        cmd = self._under_its_first_key(cmd, raw)
        past_before_ms = time.time() * 1000 - self._past_retention_ms
        if (
            0 < rec.timestamp_ms < past_before_ms
            or (
                sent_at is not None
                and not time_wrong
                and sent_at.timestamp() * 1000 < past_before_ms
            )
        ) and (answered := await self._past_retention_answer(rec, cmd, raw, attrs)):
            return answered
        # Everything above depends on the record alone; what follows on state, which may
        # have changed since this record was first answered (a redelivery).
        # (Both from one lookup of the record's partition's kept answers.)
        rejected, parked = self.answers.kept_or_parked(rec.partition, rec.offset, cmd.command_id)
        if rejected is not None:
            return self._answer_again(rec, cmd, rejected)
        if parked is not None:  # parked, unanswered: parked again, as decided
            self._rewrite_answers(rec)
            return self._park_unanswered(rec, cmd, stamp=bool(parked.get("refusal")))
        tenant_raw = self.tenants.get(tenant_id)
        tenant = None if tenant_raw is None else self._tenant(tenant_id, tenant_raw)
        if tenant is not None and rec.partition >= 0:
            self._note_partition(tenant_id, rec.partition)
        if tenant is None or tenant.status is TenantStatus.SUSPENDED:
            # A tenant removed or suspended since must not change an answer given, nor
            # answer a request the provider may have acted on (let through once: parked,
            # or in flight at a crash) with a final rejection: a suspended tenant's one
            # finishes (suspension stops new business), a removed tenant's is parked again.
            # This very record, answered before: the same answer (a limits rejection is
            # kept by the limits, not the idempotency table).
            kept = self.limits.kept_rejection(
                cmd.tenant_id,
                LimitRecord(cmd.command_id, rec.partition, rec.offset, rec.timestamp_ms),
            )
            if kept is not None:
                return self._limits_answer_again(cmd, kept)
            answered = self._answered_before(cmd)
            if answered is not None:
                if tenant is not None:  # its count holds should it be resumed today
                    self._account_suspended_replay(rec, cmd, tenant, raw)
                return answered
            earlier = self._earlier_request(cmd, raw)
            if earlier is not None and earlier.state is IdempotencyState.DONE and earlier.outcome:
                return self._replay_done(cmd, earlier)  # a retry of it: its answer
            if earlier is None:
                # A crash may have kept its entity and lost its idempotency record.
                earlier = await self._let_through_by_entity(cmd, raw, tenant)
            if earlier is None and tenant is not None:
                # Or lost every write of its batch after the provider call (K1).
                found = await self._let_through_by_provider(rec, cmd, raw, tenant)
                if found is UNANSWERED:
                    # The provider, which can tell, could not be asked now: no final
                    # answer while it may have acted. Parked, to be asked again.
                    return self._park_unanswered(rec, cmd, stamp=True)
                earlier = found if isinstance(found, IdempotencyRecord) else None
            if (earlier is None or earlier.state not in LET_THROUGH) and (
                self._stale_redrive(rec, cmd)
            ):
                # A re-drive reached past the provider's key window, its record expired:
                # the provider may have acted on it, so no final answer (as for an active
                # tenant's, in _run): parked again for a person to reconcile.
                return self._to_retry_topic(rec, cmd, STALE)
            if tenant is None:
                if earlier is not None and earlier.state in LET_THROUGH:
                    return self._repark(rec, cmd, earlier, RejectReason.UNKNOWN_TENANT)
                return self._reject_kept(
                    rec, cmd, RejectReason.UNKNOWN_TENANT, f"unknown tenant {tenant_id!r}"
                )
            if earlier is None or earlier.state not in LET_THROUGH:
                return self._reject_kept(
                    rec, cmd, RejectReason.TENANT_SUSPENDED, f"tenant {tenant_id} is suspended"
                )
        try:
            data = COMMANDS[suffix].model_validate(raw or {})
        except ValidationError as exc:
            errors = validation_errors(exc)
            shown = errors[:VALIDATION_ERRORS_SHOWN]
            while True:
                message = f"invalid {suffix} data" + (
                    f" ({len(errors)} errors, the first {len(shown)} shown)"
                    if shown != errors
                    else ""
                )
                # As few as keep it small enough to be kept for the record's redeliveries
                # (long non-ASCII field names): else one could be answered otherwise.
                fits = RecordAnswers.fits(
                    rejection_data(suffix, RejectReason.VALIDATION_ERROR, message, shown)
                )
                if fits or not shown:
                    break
                shown = shown[:-1]
            return self._reject_kept(rec, cmd, RejectReason.VALIDATION_ERROR, message, shown)
        return await self._run(rec, cmd, tenant, data, when, trace)

    async def _security_code_answer(
        self,
        rec: Inbound,
        cmd: CommandRef,
        raw: Any,
        attributes: Mapping[str, Any],
        code_key: str,
        trace: CommandTrace | None,
    ) -> list[Emit] | None:
        """A command holding a card security code (in keys a client names: metadata,
        dispute evidence; or an attribute, a trace state member, JSON in a string) is
        refused, naming it only as far as nothing of the code is repeated. Kept, it would
        sit in outcomes, tables, traces and the ledger (PCI DSS: never stored after
        authorisation, even encrypted). Not remembered under its key: a corrected command
        under the same key goes through.

        None for one the provider may have acted on (an older version, which did not see
        this code, ran it), which goes on as any other would: this record answered or
        parked before (its answer kept), a request under its key let through or finished
        (replayed), or a re-drive past the provider's key window (parked as stale).
        (Not found so: an older version's run whose every record a crash lost.)"""
        safe = _without_security_code(cmd)
        # This very record answered before: the same answer, as first emitted (by this
        # gate, named safely; by an older version, as it named it).
        for ref in (safe, cmd):
            kept = self.answers.kept(rec.partition, rec.offset, ref.command_id)
            if kept is not None:
                if trace is not None:
                    trace.begin(_nameable(safe), None)
                return self._answer_again(rec, replace(ref, tracestate=None), kept)
        # (Only for a record of a tenant's own: checked later, another's was never run,
        # and its answer told whether that tenant ran the request; review finding.)
        named = str(attributes.get("tenantid") or "")  # (cmd's falls back to the key)
        if _state_readable(rec, named) and await self._may_have_reached_provider(
            rec, cmd, raw, attributes
        ):
            return None
        if trace is not None:
            trace.begin(_nameable(safe), None)
        return self._reject_kept(
            rec,
            safe,
            RejectReason.CARD_DATA_FORBIDDEN,
            f"{code_key!r} holds a card security code: card data is not accepted",
        )

    async def _past_retention_answer(
        self, rec: Inbound, cmd: CommandRef, raw: Any, attributes: Mapping[str, Any]
    ) -> list[Emit] | None:
        """A command older than the entity retention less a day: read again that late (a
        consumer group reset), or sent again from an outbox, a create would find its
        entity gone by retention (tables/retention.py) and charge again. Refused, unless
        it was answered before (this very record: the same answer) or the provider may
        have acted on it (parked, let through, finished, or a re-drive past the provider's
        key window): None, and it goes on as any other would (answered from what is
        stored, parked again; never a final refusal while money may have moved)."""
        kept = self.answers.kept(rec.partition, rec.offset, cmd.command_id)
        if kept is not None:
            return self._answer_again(rec, cmd, kept)
        # (The limits keep their refusals themselves, until the record is committed.)
        limited = self.limits.kept_rejection(
            cmd.tenant_id, LimitRecord(cmd.command_id, rec.partition, rec.offset, rec.timestamp_ms)
        )
        if limited is not None:
            return self._limits_answer_again(cmd, limited)
        if await self._may_have_reached_provider(rec, cmd, raw, attributes):
            return None
        return self._reject_kept(
            rec,
            cmd,
            RejectReason.PAST_RETENTION,
            "the command (its record or its time) is older than the entity retention "
            "less a day (PAYSTREAM_ENTITY_RETENTION_SECONDS): not run",
        )

    async def _may_have_reached_provider(
        self, rec: Inbound, cmd: CommandRef, raw: Any, event_attributes: Mapping[str, Any]
    ) -> bool:
        """Has this very record been parked, or this request let through or finished
        (its idempotency record, or its entity's memory of it), or does it come back past
        the provider's key window (under a valid seal: a made-up time is no evidence)?

        A code outside the data is no part of the request's hash: where a park or answer
        of this command would keep it (its id, key, tenant, type, source, subject, ...;
        any attribute of a structured command, whose body is parked as it came), only
        this very command id counts (another id of the same request would be stored,
        parked or emitted, code and all). Its trace state and extension headers are
        dropped from what it keeps."""
        if self.answers.parked(rec.partition, rec.offset, cmd.command_id) is not None:
            return True
        # (Not for a read: it can double nothing, and a forged one parked "long ago",
        # sealed by `dlq replay` as it re-sent it, got a card code past this gate.)
        if (
            self.seals.sealing
            and cmd.command_type not in PROVIDER_READS
            and self._past_provider_window(rec)
        ):
            return True
        if cmd.command_type not in COMMANDS:
            return False  # (no request of this type ever ran)
        kept_by_code = kept_attributes_hold_code(rec, event_attributes, raw)
        existing = self._idempotency_record(f"{cmd.tenant_id}:{cmd.idempotency_key}", time.time())
        if existing is not None:
            same = (
                existing.command_id == cmd.command_id
                and existing.command_type == cmd.command_type
                and existing.request_hash == ERASED_HASH  # (its customer erased since)
            ) or self._earlier_request(cmd, raw) is not None
            return same and (existing.command_id == cmd.command_id or not kept_by_code)
        unrecorded = self._unrecorded_request(cmd, raw)
        if unrecorded is None:
            return False
        data, request_hash = unrecorded
        stand_in = NoProvider("", Rejection(RejectReason.CARD_DATA_FORBIDDEN, ""))
        done = await self._applied_by_entity(cmd, data, request_hash, stand_in)
        # Only an entity that kept this request's hash (an erased customer's keep none).
        return done is not None and done.request_hash == request_hash

    def _count(
        self,
        tenant_id: str,
        command_type: str,
        outcome_type: str,
        reason: RejectReason | None = None,
    ) -> None:
        """Count a command's outcome (and a rejection's reason); the labelled children are
        looked up once per label set."""
        key = (tenant_id, command_type, outcome_type)
        counter = self._counters.get(key)
        if counter is None:
            counter = self._counters[key] = metrics.COMMANDS.labels(*key)
        counter.inc()
        if reason is not None:
            why = (tenant_id, command_type, reason.value)
            rejected = self._rejections.get(why)
            if rejected is None:
                rejected = self._rejections[why] = metrics.REJECTIONS.labels(*why)
            rejected.inc()

    def _note_partition(self, tenant_id: str, partition: int) -> None:
        """A tenant's commands must all come from one partition: its state (limits,
        idempotency, entities) lives in that partition's changelogs, and the worker that
        owns it is the only one to see it. Producers keying by tenant id with differing
        partitioners (murmur2 and librdkafka's CRC32), or naming partitions, split it:
        limits counted per partition, a capture not finding its payment. Counted and
        logged; what this worker sees of it (its own partitions) is all it can tell."""
        seen = self._partition_of.get(tenant_id)
        if seen == partition:
            return
        self._partition_of[tenant_id] = partition
        if seen is None:
            return
        self._split_tenants.add(tenant_id)
        metrics.TENANT_PARTITION_CHANGES.labels(tenant_id).inc()
        _throttled.warning(
            ("partition", tenant_id),
            "tenant %s: a command from commands-topic partition %d after one from %d; "
            "every producer must key its commands by tenant id with the same partitioner",
            tenant_id,
            partition,
            seen,
        )

    def _tenant(self, tenant_id: str, raw: Any) -> Tenant:
        """Parse a registry record once per change, not once per command."""
        if isinstance(raw, Tenant):
            return raw
        cached = self._tenants_parsed.get(tenant_id)
        if cached is not None and (cached[0] is raw or cached[0] == raw):
            return cached[1]
        tenant = Tenant.model_validate(raw)
        self._tenants_parsed[tenant_id] = (raw, tenant)
        return tenant

    def registered(self, tenant_id: str) -> Tenant | None:
        """The tenant's registry record now, parsed; None if it has none or it does not
        parse (the callers then go on as they would without it)."""
        raw = self.tenants.get(tenant_id)
        if raw is None:
            return None
        try:
            return self._tenant(tenant_id, raw)
        except ValueError:  # (pydantic's ValidationError is one)
            return None

    # ---- idempotent execution -----------------------------------------------------

    async def _run(
        self,
        rec: Inbound,
        cmd: CommandRef,
        tenant: Tenant,
        data: Any,
        when: datetime,
        trace: CommandTrace | None = None,
    ) -> list[Emit] | None:
        """The command's answer; None if its tenant was suspended or removed while it
        waited for its turn (_take_turn): it is then to be run again from the start."""
        limit_rec = LimitRecord(cmd.command_id, rec.partition, rec.offset, rec.timestamp_ms)
        limited = self.limits.applies(cmd.tenant_id, tenant.limits)
        # The tenant's limits state, read once for the kept rejection and the admission
        # (UNREAD: admit reads it). Safe as nothing writes it in between: the branches
        # that do (_account_replay, the rejections, parks) return, and a branch that
        # awaits (other tenants run meanwhile) sets it back to UNREAD.
        limits_state: Any = UNREAD
        if limited:
            limits_state = self.limits.stored(cmd.tenant_id)
            # A redelivered record the limits rejected keeps its rejection even if the
            # command has since been retried and finished under the same key.
            kept = self.limits.kept_rejection(cmd.tenant_id, limit_rec, limits_state)
            if kept is not None:
                return self._limits_answer_again(cmd, kept)
        idem_table_key = f"{cmd.tenant_id}:{cmd.idempotency_key}"
        request_hash = _request_hash(cmd.command_type, data)
        now = time.time()
        existing = self._idempotency_record(idem_table_key, now)
        if (
            existing is not None
            and existing.state is IdempotencyState.PARKED
            and cmd.source is not None
            and existing.source == list(cmd.source)
        ):
            self._rewrite_holds(cmd, idem_table_key)
        if existing is not None:
            # A command about a customer since erased has lost its hash: it is known by
            # its id (its own redelivery or retry keeps its answer).
            # (Not another command id under the key: nothing tells the same request from
            # another one then, which ran as the parked one's retry; review h59m.)
            erased_same = (
                existing.request_hash == ERASED_HASH and existing.command_id == cmd.command_id
            )
            if (
                existing.request_hash != request_hash and not erased_same
            ) or existing.command_type != cmd.command_type:
                return self._reject_kept(
                    rec,
                    cmd,
                    RejectReason.IDEMPOTENCY_CONFLICT,
                    _conflict_message(cmd, existing),
                )
            if erased_same:
                # (Its customer erased since: what it records from now on keeps no hash of
                # the data either; a parked update re-driven kept one; review h59j.)
                request_hash = ERASED_HASH
            if existing.state is IdempotencyState.DONE and existing.outcome is not None:
                if cmd.source is not None and existing.source == list(cmd.source):
                    # This very record, redelivered: the limits may have lost its count.
                    self._account_replay(rec, cmd, tenant, data, existing, request_hash)
                elif existing.command_id != cmd.command_id:
                    # Another command's answer under the key: a client's retry under it,
                    # past this command's window. An entity remembering this one answers
                    # it as it was first answered (else it got the retry's answer: its
                    # refusal, or another payment's event; review finding).
                    limits_state = UNREAD  # (read again after the await)
                    own = await self._answered_from_entity(cmd, data, request_hash, tenant)
                    if own is not None:
                        return own
                if cmd.source is not None and existing.source != list(cmd.source):
                    self._kept_for_a_retry(idem_table_key, now)
                return self._replay_done(cmd, existing)
        if cmd.command_type not in PROVIDER_READS and (
            self._past_provider_window(rec) or self._key_past_provider_window(rec, existing)
        ):
            # A parked or dead-lettered command re-driven (`dlq replay` records its first
            # attempt), or any command under the key of one let through that long ago (a
            # client's retry under a new id, the record redelivered after a long outage),
            # that reached us after the provider may have forgotten its key: run now, a
            # charge its first attempt made could be made again. Parked again for a
            # person to reconcile (`dlq replay` holds it back from now on).
            if existing is not None and existing.state in LET_THROUGH:
                return self._repark(rec, cmd, existing, STALE)
            return self._to_retry_topic(rec, cmd, STALE)
        scoped_first = self._create_past_provider_window(rec, cmd, data)
        if scoped_first is not None:
            # A create of a chosen id, parked long ago under another key (its retry
            # under a new command id, with no idempotency key, shares only its id): its
            # provider key is the entity's, which the provider may have forgotten.
            return self._to_retry_topic(
                rec, cmd, STALE, self._with_first_attempt(rec, scoped_first)
            )
        # Not for a command let through once (parked, or in flight at a crash): it is
        # never stopped afterwards, whatever has run under its id since.
        let_through = existing is not None and existing.command_id == cmd.command_id
        if not let_through and self._command_id_taken(cmd, request_hash, now):
            # Same id, another request (another source's ids, or a producer bug): run, it
            # would have the first one's outcome ids, and the ledger would keep only one.
            return self._reject_kept(
                rec,
                cmd,
                RejectReason.IDEMPOTENCY_CONFLICT,
                f"command id {cmd.command_id!r} was already used for a different request",
            )
        account = gateway_account(tenant)
        if (
            existing is not None
            and existing.state in LET_THROUGH
            and existing.gateway not in (None, account)
        ):
            # Let through to another provider account, which may have acted on it: sent
            # to this one, under a key it has never seen, it would be charged again.
            # Parked again for a person to reconcile (or for the tenant's account to be
            # put back).
            return self._repark(rec, cmd, existing, PROVIDER_CHANGED)
        gateway_or_rejection = self._gateway_for(tenant)
        # Parked while its tenant was suspended, because the provider could not be asked
        # whether it took it (K1): refused `tenant_suspended` unless the provider did or
        # an entity records its effect, even if the tenant was resumed since (it must not
        # run because the provider was unreachable when it came).
        stamped = existing is None and UNANSWERED_REFUSAL_HEADER in rec.headers
        # Its entity says it took effect (a crash lost its idempotency record): it was
        # let through once, and is answered from the entity, not refused.
        applied = False
        if isinstance(gateway_or_rejection, Rejection):
            # One let through before (its gateway was usable then) waits on the retry
            # topic for the tenant's setup to be fixed.
            # (The checks above made it the same request as the record's.)
            if existing is not None and existing.state in LET_THROUGH:
                return self._repark(rec, cmd, existing, gateway_or_rejection.reason)
            stand_in = NoProvider(
                tenant.gateway,
                Rejection(
                    gateway_or_rejection.reason, gateway_or_rejection.message, remember=False
                ),
            )
            limits_state = UNREAD  # (read again after the await)
            applied = (
                existing is None
                and await self._applied_by_entity(cmd, data, request_hash, stand_in) is not None
            )
            if not applied and stamped:
                # The provider still cannot be asked (its setup broken meanwhile).
                return self._park_unanswered(rec, cmd, stamp=True)
            if not applied:
                return self._reject_kept(
                    rec, cmd, gateway_or_rejection.reason, gateway_or_rejection.message
                )
            gateway: Any = stand_in  # the handler stops at AlreadyApplied, before any call
            call: Any = stand_in.call
        else:
            gateway, call = gateway_or_rejection, self.gateways.call_for(tenant)
        provider_took = False
        if stamped and not applied:
            limits_state = UNREAD  # (read again after the await)
            known = await self._provider_knows(
                rec, cmd, data, request_hash, gateway, parked_unanswered=True
            )
            if known is None:
                return self._park_unanswered(rec, cmd, stamp=True)
            if not known:
                return self._reject_kept(
                    rec,
                    cmd,
                    RejectReason.TENANT_SUSPENDED,
                    f"tenant {cmd.tenant_id} was suspended when the command came (the "
                    "provider could not be asked then, and did not confirm taking it since)",
                )
            provider_took = True
        # Limits come after the idempotency check: a replay of a finished command is
        # answered from its record, neither counted nor limited again. A parked or
        # in-flight record means it was let through once: the provider may have acted
        # on it, so it is not stopped now.
        # A command let through by an older version keeps its provider keys (see
        # HandlerContext.create_key): re-driven under new ones it would be a new request.
        entity_keys = existing.entity_keys if existing is not None else True
        digest_keys_apart = existing.digest_keys_apart if existing is not None else True
        # Read a day late, and nothing here says whether it ran: a crash may have lost its
        # whole batch after its provider call, and the provider, its key forgotten, would
        # move the money again. Parked for a person to reconcile (below), never refused
        # by limits changed since, nor run.
        late = False
        late_day_ms: int | None = None
        if (
            existing is None
            and not (applied or provider_took)
            and self._read_past_provider_window(rec, cmd)
        ):
            limits_state = UNREAD  # (read again after the await)
            late = await self._would_move_money(cmd, data, request_hash, gateway)
            if late:
                # Its hold on the day it is read, as a park's is on the day its provider
                # failed: counted against that day and the next, it covers a re-drive
                # reconciled by then (on its record's day, long past, it covered none,
                # and the re-drive, admitted before, passed the day's volume unchecked).
                late_day_ms = int(now * 1000)
        decision = None
        turn = ADMISSION_TURN.get()  # (its tenant's commands in chains: see admission_order)
        # (``deciding``: the tenant as read at its start, its limits as at its turn.)
        deciding = tenant
        if limited:
            if turn is not None:
                waited, at_turn = await self._take_turn(
                    turn,
                    lambda now_as: self._admit(
                        limit_rec, cmd, now_as, data, existing, request_hash, entity_keys,
                        applied or provider_took, exempt=self._own_refresh(rec, cmd),
                        day_ms=late_day_ms, trial=True,
                    ),
                    cmd,
                    tenant,
                    data,
                )  # fmt: skip
                if at_turn is None:
                    return None  # (suspended or removed meanwhile: run again, see _process)
                deciding = at_turn
                if waited:
                    limits_state = UNREAD  # (other chains of the tenant wrote it meanwhile)
            # (As one let through before: a refusal its entity or provider contradicts.)
            as_let_through = functools.partial(
                self._admit, limit_rec, cmd, deciding, data, existing, request_hash,
                entity_keys, True, day_ms=late_day_ms,
            )  # fmt: skip
            decision = self._admit(
                limit_rec,
                cmd,
                deciding,
                data,
                existing,
                request_hash,
                entity_keys,
                applied or provider_took,
                limits_state,
                exempt=self._own_refresh(rec, cmd),
                day_ms=late_day_ms,
            )
            if late and isinstance(decision, LimitRejection) and not decision.replay:
                # (Its refusal would be a final answer, or a "later" the provider, its
                # key forgotten, answers with a second charge.)
                self.limits.forget_decision(cmd.tenant_id, limit_rec)
                return self._park_late(rec, cmd, idem_table_key, request_hash, data, tenant)
            if (
                isinstance(decision, LimitRejection)
                and decision.reason == RejectReason.QUOTA_EXCEEDED.value
                and self._creates_over_a_payment(cmd, data)
            ):
                # Its handler answers it without the provider (invalid_state, or the
                # answer of the command that made it): as without limits, not a quota
                # refusal saying the payment made was not (review h59f: its client could
                # charge again under a new id). Admitted as one before: nothing counted.
                self.limits.forget_decision(cmd.tenant_id, limit_rec)
                decision = as_let_through()
            if (
                isinstance(decision, LimitRejection)
                and not decision.replay
                and existing is None
                and not applied
            ):
                took: bool | None = (
                    await self._applied_by_entity(
                        cmd,
                        data,
                        request_hash,
                        NoProvider(tenant.gateway, Rejection(RejectReason(decision.reason), "")),
                    )
                    is not None
                )
                # Not for a rate limit: its refusal only says "later", and later the
                # command runs and the provider answers it from its key.
                if not took and decision.reason == RejectReason.QUOTA_EXCEEDED.value:
                    took = await self._provider_knows(rec, cmd, data, request_hash, gateway)
                if took is None:
                    # The provider could not be asked now: no final answer while it may
                    # have acted (the limits keep their decisions per record: forgotten).
                    self.limits.forget_decision(cmd.tenant_id, limit_rec)
                    # Unstamped: a quota refusal is decided afresh whenever it is sent
                    # again (not remembered), so also when this copy is re-driven.
                    return self._park_unanswered(rec, cmd, stamp=False)
                if took:
                    # Refused now (a limit lowered, the day's volume spent since), though
                    # its entity says it took effect (a crash lost its idempotency and
                    # limits writes), or the provider finished its request (a crash lost
                    # the whole batch): admitted as let through, so answered as it was.
                    provider_took = True  # (a let-through run, as the lookup assumed)
                    self.limits.forget_decision(cmd.tenant_id, limit_rec)
                    decision = as_let_through()
        if isinstance(decision, LimitRejection):
            # Not remembered under the idempotency key: the command may be sent again.
            if not decision.replay:
                metrics.LIMITED.labels(cmd.tenant_id, decision.extra["limit"]).inc()
            return self._reject(
                cmd,
                RejectReason(decision.reason),
                decision.message,
                extra=decision.extra,
                replay=decision.replay,
            )
        if turn is not None:
            turn.passed()  # decided for good: the next command may be admitted
        admission = decision
        if late:
            # Admitted by the limits, its hold kept until it is answered (as a command
            # its provider failed keeps its own): the day's volume keeps its place.
            return self._park_late(
                rec,
                cmd,
                idem_table_key,
                request_hash,
                data,
                tenant,
                counted=self.limits.counted(cmd.tenant_id, limit_rec),
            )
        let_through = let_through or provider_took
        # A retry under the key of a command parked or in flight is the same request
        # (checked above) under the same provider key: let through as that command is,
        # by the handler's checks and by the limits' counting (its earlier record may
        # have counted the money already; review findings).
        let_through = let_through or (existing is not None and existing.state in LET_THROUGH)
        ctx = HandlerContext(
            cmd=cmd,
            gateway=gateway,
            tables=self.tables,
            call=call,
            entity_keys=entity_keys,
            digest_keys_apart=digest_keys_apart,
            request_hash=request_hash,
            # (A retry under a parked command's key was refused by what changed since,
            # a card detached, a dispute lost; its rejection was kept under the key and
            # the parked command, re-driven, got it too, after the charge.)
            let_through=let_through,
            # (Without a record saying, the time a sealed re-drive carries, if any.)
            first_attempt_ms=(
                (existing.first_attempt_ms if existing is not None else None)
                or self._carried_first_attempt(rec)
                if let_through
                else None
            ),
            trace=trace,
            id_window_seconds=self._id_window,
            sent_since_ms=(
                self._sent_since_ms(rec, cmd, data, existing)
                if getattr(gateway, "finds_earlier_attempts", False)
                else None
            ),
        )
        expires = now + self.settings.idempotency_ttl_seconds
        # Not queued for expiry: a final write (done/parked) or a removal always follows.
        # (``counted``: a record this command left parked, whose money an earlier record
        # of it already counted, keeps saying so; see the AlreadyApplied branch.)
        # A re-drive from another record says so explicitly (False: this record is to
        # count it), so that its own in-flight record, redelivered, is told from a
        # resend past the window's.
        carried = existing.counted if let_through and existing is not None else None
        if (
            let_through
            and existing is not None
            and existing.source is not None
            and existing.source != [rec.partition, rec.offset]
        ):
            carried = bool(existing.counted)
        held_before = self.idempotency.get(idem_table_key) if existing is not None else None
        in_flight = _idempotency_dict(
            cmd,
            request_hash,
            IdempotencyState.IN_FLIGHT,
            expires,
            entity_keys=entity_keys,
            digest_keys_apart=digest_keys_apart,
            counted=carried,
            # (one let through by an older version, which did not say: this account)
            gateway=(existing.gateway if let_through and existing is not None else None) or account,
            # When the key's request first reached here (the first of its commands let
            # through), for the provider's key window (see _key_past_provider_window).
            first_attempt=(
                existing.first_attempt_ms
                if let_through and existing is not None and existing.first_attempt_ms
                else self._let_through_at(rec)
            ),
        )
        _name_its_customer(in_flight, cmd, data)
        # What its park held (entity_holds), for its finish to release: told from here,
        # not read again at every finish (a table read per command; review h82rc).
        holds = held_before.get(entity_holds.HOLDS_FIELD) if isinstance(held_before, dict) else None
        if let_through and holds:
            in_flight[entity_holds.HOLDS_FIELD] = holds
        else:
            holds = None
        self.idempotency[idem_table_key] = in_flight
        # Under its own key, its id is not in the table: say which request the id names
        # (written again by each command of that request, so it lasts the window of the
        # latest; ``claimed``: this command is the first, within the window, to name it).
        names_id = cmd.idempotency_key != cmd.command_id
        claimed = names_id and self._id_unclaimed(cmd, now)
        if names_id:
            self._point_id(cmd, request_hash, expires)
        if (
            existing is not None
            and existing.state in LET_THROUGH
            and existing.command_id != cmd.command_id
        ):
            # A retry under the key of another command let through: that command's id
            # pointer names this key, and lasts as long as the record this one leaves
            # (one written before pointers named keys expired a day after its park, and
            # the command, sent again under a third key then, charged again; review).
            # (As long as a park of this one would keep the key's record: it holds the id
            # only while that record lives, _pointer_holds.)
            self._keep_id_pointer(
                replace(cmd, command_id=existing.command_id), self._parked_until(expires)
            )
        try:
            if (
                existing is not None
                and existing.state in LET_THROUGH
                and existing.command_id != cmd.command_id
            ):
                await self._answered_by_the_keys_command(cmd, existing, data, request_hash)
            result = await HANDLERS[cmd.command_type](ctx, data)
        except AlreadyApplied as done:
            # Faust wrote the entity's changelog but the offset was not committed.
            metrics.REPLAYS.labels(cmd.tenant_id, "entity").inc()
            cmd = _as_first_emitted(cmd, done)
            self._repair_entities(
                cmd.tenant_id,
                cmd.command_id,
                done.outcome,
                request_hash,
                cmd.id_salt,
                done.emitted,
                cmd.command_type,
            )
            self._rewrite_entities(cmd.tenant_id, done.outcome)
            self._scrub_after_erasure(cmd.tenant_id, done.outcome, _salt_source(done.id_salt))
            # Whether this record counts the money the outcome moved (see _counts_here).
            counts = self._counts_here(rec, existing, let_through, done.id_salt)
            self._release_voided(cmd, done.outcome)
            if admission is not None:
                # (with the command and its first send: a trial end's or a resume's
                # invoice a refresh recorded first is found here too; review h82rr M2)
                self._settle(cmd, admission, done.outcome, counts, data, ctx.sent_since_ms)
                if counts:  # (sent again past the window: counted by its first record)
                    self._count_learnt(cmd, admission, done.outcome, deciding.limits)
            self._finish(
                idem_table_key, cmd, request_hash, expires, done.outcome, counted=counts,
                holds=holds,
            )  # fmt: skip
            return [self._outcome(cmd, done.outcome)]
        except AnsweredByAnother as other:
            # Its answer, under this command's id; the volume is counted once, by
            # whichever of the two says so (see AnsweredByAnother.counts).
            if admission is not None:
                # (a rejection settled: its hold released, nothing counted)
                self.limits.settle(
                    admission, other.outcome.type if other.counts else "command.rejected"
                )
            stored = StoredOutcome(
                type=other.outcome.type,
                data={
                    **other.outcome.data,
                    "command_id": cmd.command_id,
                    "answered_by": other.command_id,
                },
            )
            self._finish(
                idem_table_key, cmd, request_hash, expires, stored, counted=other.counts,
                holds=holds,
            )  # fmt: skip
            return [self._outcome(cmd, stored)]
        except Rejection as rej:
            if not rej.remember and existing is not None and held_before is not None:
                # Let through before (parked, or in flight at a crash): the provider may
                # have acted on it, so no answer that a later run would contradict (a
                # provider refusing the tenant's key now, say). Parked again as it was,
                # with its hold, until it can run.
                self.idempotency[idem_table_key] = held_before
                return self._repark(rec, cmd, existing, rej.reason)
            if admission is not None:
                self.limits.settle(admission, "command.rejected")  # releases its hold
            if not rej.remember:
                self.idempotency.pop(idem_table_key, None)
                if claimed:  # only a record this command was the first to write
                    self.idempotency.pop(_command_id_key(cmd.tenant_id, cmd.command_id), None)
                return self._reject_kept(rec, cmd, rej.reason, rej.message)
            stored = StoredOutcome(
                type="command.rejected",
                data=rejection_data(cmd.command_type, rej.reason, rej.message),
            )
            # A rejection names no entity: the customer it was about is kept beside it, so
            # that an erasure finds its request hash (of the personal data) too.
            self._finish(
                idem_table_key, cmd, request_hash, expires, stored,
                customer_id=getattr(data, "customer_id", None), holds=holds,
            )  # fmt: skip
            self._count(cmd.tenant_id, cmd.command_type, stored.type, rej.reason)
            return [self._outcome(cmd, stored)]
        except GatewayError as exc:
            if exc.retryable:  # retries exhausted or circuit open: keep it for a replay
                return self._park(
                    rec,
                    cmd,
                    idem_table_key,
                    request_hash,
                    expires,
                    exc,
                    entity_keys,
                    counted=bool(carried) or self.limits.counted(cmd.tenant_id, limit_rec),
                    data=data,
                )
            if (
                exc.code is ErrorCode.IDEMPOTENCY_ERROR
                and existing is not None
                and existing.state in LET_THROUGH
                and held_before is not None
            ):
                # Let through before, and now the provider keeps another request under
                # its key (Stripe's 400 idempotency_error: keys are saved once a request
                # ran): the first attempt ran, and may have charged. Parked again for an
                # operator with its hold, never answered "rejected" (review finding).
                self.idempotency[idem_table_key] = held_before
                return self._repark(rec, cmd, existing, PROVIDER_KEY_CONFLICT)
            # The provider refused the request itself: answer it, as the provider would again.
            if admission is not None:
                self.limits.settle(admission, "command.rejected")
            refused = _PROVIDER_REJECTIONS.get(exc.code, RejectReason.PROVIDER_REJECTED)
            stored = StoredOutcome(
                type="command.rejected",
                data={
                    **rejection_data(cmd.command_type, refused, exc.message),
                    "error": exc.as_outcome(),
                },
            )
            # Named by its customer: the provider's message may quote what it refused (an
            # e-mail address), which the customer's erasure blanks (review h59j).
            # (A customer command's only: their data is what it sent. A payment naming a
            # customer holds none of it, and keeps its answer and hash; review h59k.)
            about = getattr(data, "customer_id", None)
            ours = isinstance(about, str) and cmd.command_type.startswith("customer.")
            self._finish(
                idem_table_key,
                cmd,
                request_hash,
                expires,
                stored,
                customer_id=about if ours else None,
                holds=holds,
            )
            self._count(cmd.tenant_id, cmd.command_type, stored.type, refused)
            return [self._outcome(cmd, stored)]
        stored = self._apply(cmd, result, request_hash, expires)
        # A re-drive that charged again (its first record's entity write was lost) whose
        # money an earlier record already counted: answered, not counted again.
        counts = not (
            let_through
            and existing is not None
            and existing.counted is True
            and existing.source != [rec.partition, rec.offset]
        )
        self._release_voided(cmd, stored)
        if admission is not None:
            self._settle(cmd, admission, stored, counts, data, ctx.sent_since_ms)
            if counts:
                self._count_learnt(cmd, admission, stored, deciding.limits)
        if stored.type == "customer.erased" and result.primary is not None:
            self._scrub_idempotency(cmd.tenant_id, result.primary.id, cmd.source)
        self._finish(
            idem_table_key, cmd, request_hash, expires, stored, counted=counts, holds=holds
        )
        why = None if result.rejected is None else result.rejected.reason
        self._count(cmd.tenant_id, cmd.command_type, stored.type, why)
        if result.unkept and result.rejected is None:
            # (emitted, never stored: a replay is answered from ``stored``, without it)
            stored = StoredOutcome(type=stored.type, data={**stored.data, **result.unkept})
        return [self._outcome(cmd, stored)]

    def _settle(
        self,
        cmd: CommandRef,
        admission: Admission,
        outcome: StoredOutcome,
        counts: bool,
        data: Any = None,
        sent_since_ms: int | None = None,
    ) -> None:
        """Settle an admitted command by its outcome: what it moved counted (if this
        record ``counts`` it), its hold released. A proration invoice's charge is told by
        its invoices, not its outcome type (``_moved``). ``sent_since_ms``: the earliest
        its provider request can first have been sent (a resume's charge found by it)."""
        if not counts:
            self.limits.settle(admission, "command.rejected")
            return
        ended_now = getattr(data, "trial_end", None) == "now"
        moved = _moved(cmd.command_type, outcome, ended_now)
        if moved == 0 and ended_now:
            moved = self._first_invoice_recorded(cmd.tenant_id, outcome, sent_since_ms)
        if moved == 0 and cmd.command_type == "subscription.resume":
            moved = self._resume_invoice_recorded(cmd.tenant_id, outcome, sent_since_ms)
        if moved is None:
            self.limits.settle(admission, outcome.type)
        else:
            self.limits.settle(admission, outcome.type, moved)

    def _first_invoice_recorded(
        self, tenant_id: str, outcome: StoredOutcome, sent_since_ms: int | None = None
    ) -> int:
        """What the first invoice of a trial an update ended now (``trial_end: "now"``)
        was paid, when its outcome does not list it: recorded first by another command
        (a refresh, a Stripe webhook's, that read it paid before a parked end was
        re-driven and answered from its key). Its subscription's latest invoice, paid,
        beginning when the trial ended; 0 if none is (still trialing, declined, or one
        the outcome lists: ``_moved`` counted that). Paddle names no trial_end once
        active: then beginning at or after the end's first try can have been sent (less
        the clocks' skew), as a resume's (review h82rr H1)."""
        found = self._latest_invoice(tenant_id, outcome, unlisted=True)
        if found is None:
            return 0
        sub, raw = found
        if sub.get("status") == "trialing" or raw.get("status") != "paid":
            return 0
        ended = _instant(sub.get("trial_end"))
        if ended is not None:
            counted = _instant(raw.get("period_start")) == ended
        else:
            counted = _begins_since(raw, sent_since_ms)
        return int(raw.get("amount") or 0) if counted else 0

    def _resume_invoice_recorded(
        self, tenant_id: str, outcome: StoredOutcome, sent_since_ms: int | None
    ) -> int:
        """What a ``subscription.resume``'s new period was charged when its outcome does
        not list the invoice: recorded first by another command (a refresh, a Paddle
        webhook's, that read it before a parked resume was re-driven and answered as
        read; review h82re M4). Its subscription's latest invoice, paid or being
        collected (no decline: as _resume_paid), its period beginning at or after the
        resume's first try can have been sent (less the clocks' skew); 0 if none is
        (nothing charged: Stripe's, the simulator's; or the time is not known)."""
        if sent_since_ms is None:
            return 0
        found = self._latest_invoice(tenant_id, outcome)
        if found is None:
            return 0
        _, raw = found
        if not _paid_or_collecting(raw) or not _begins_since(raw, sent_since_ms):
            return 0
        return int(raw.get("amount") or 0)

    def _latest_invoice(
        self, tenant_id: str, outcome: StoredOutcome, unlisted: bool = False
    ) -> tuple[dict[str, Any], Mapping[str, Any]] | None:
        """The subscription an outcome shows and its latest invoice as recorded, if that
        invoice is the subscription's (and, ``unlisted``, not one the outcome lists): the
        walk of the fallbacks above, which find a charge another command recorded first."""
        sub = outcome.data.get("object")
        if not isinstance(sub, dict):
            return None
        latest = sub.get("latest_invoice_id")
        if not isinstance(latest, str):
            return None
        if unlisted:
            related = outcome.data.get("related") or ()
            if latest in {part.get("entity_id") for part in related if isinstance(part, dict)}:
                return None
        raw = self.tables.invoices.get(entity_key(tenant_id, latest))
        if not isinstance(raw, Mapping) or raw.get("subscription_id") != sub.get("id"):
            return None
        return sub, raw

    def _count_learnt(
        self, cmd: CommandRef, admission: Admission, outcome: StoredOutcome, limits: TenantLimits
    ) -> None:
        """A one-off invoice learnt paid by a command that did not charge it (an
        invoice.refresh, an invoice.finalize its provider paid at once): its amount counted
        toward the day's volume, once, as an invoice.pay's is (LimitGate.count_learnt;
        review h78o M1b). An invoice.pay that paid it: the holds of its other pays go."""
        obj = outcome.data.get("object") or {}
        if learnt_paid(cmd.command_type, outcome.type, obj):
            self.limits.count_learnt(
                admission, limits, str(obj.get("currency")), int(obj.get("amount") or 0),
                str(obj["id"]), _pay_requests(obj),
            )  # fmt: skip
        elif cmd.command_type == "invoice.pay" and outcome.type == "invoice.paid" and obj.get("id"):
            # (counted by its settle; the holds of other pays of it, parked, go)
            self.limits.release_invoice_holds(cmd.tenant_id, str(obj["id"]), _pay_requests(obj))

    def _release_voided(self, cmd: CommandRef, outcome: StoredOutcome) -> None:
        """A one-off invoice learnt void (invoice.void, or read back so): the holds of its
        pays, parked, go; they can charge nothing now (limits.learnt_void). On every
        delivery, whatever the limits say now: releasing is idempotent (review h79r_c F7)."""
        if outcome.type != "invoice.voided":
            return  # (most commands: nothing more looked at)
        obj = outcome.data.get("object") or {}
        if learnt_void(outcome.type, obj):
            self.limits.release_invoice_holds(cmd.tenant_id, str(obj["id"]), _pay_requests(obj))

    def _own_refresh(self, rec: Inbound, cmd: CommandRef) -> bool:
        """A refresh a provider's webhook brought (paystream/origin_seal.py): paystream's
        own, neither checked against the tenant's rate limit nor spending its tokens (the
        webhook endpoint bounds them: web/webhooks.py)."""
        return (
            cmd.command_type in _WEBHOOK_REFRESHES
            and ORIGIN_HEADER in rec.headers
            and self.origins.sealed(rec.key, rec.value, rec.headers)
        )

    def _creates_over_a_payment(self, cmd: CommandRef, data: Any) -> bool:
        """A payment.create (or subscription.create) naming a payment (subscription) that
        exists, whichever command made it: its handler refuses to create over it
        (handlers.ensure_new) before any provider call."""
        chosen_field, table = _CREATED_ENTITY.get(cmd.command_type, (None, None))
        if chosen_field is None:
            return False
        chosen = getattr(data, chosen_field, None)
        return isinstance(chosen, str) and entity_key(cmd.tenant_id, chosen) in getattr(
            self.tables, str(table)
        )

    async def _take_turn(
        self,
        turn: Turn,
        trial: Callable[[Tenant], Admission | LimitRejection | None],
        cmd: CommandRef,
        tenant: Tenant,
        data: Any,
    ) -> tuple[bool, Tenant | None]:
        """Wait for this command's turn among its tenant's chains to be decided by the
        limits (admission_order.py); whether it waited (other chains wrote the tenant's
        limits state meanwhile), and ``tenant`` with the limits to decide it by: the
        registry's at its turn (None: the tenant suspended or removed meanwhile).
        ``trial(tenant)``: its decision now, nothing written."""
        waited = await turn.wait()
        at_turn = self._tenant_at_turn(cmd.tenant_id, tenant)
        if at_turn is None:
            return waited, None
        tenant = at_turn
        checked = self._limits_data(cmd, data) if _LIMITS_READ.get(cmd.command_type) else data
        if (
            not turn.settled()
            and self._short_of_room(cmd, checked, tenant)
            and _refused_while_others_hold(trial(tenant))
        ):
            # Refused with earlier payments of the run still holding their amounts:
            # serially they would be answered by now.
            metrics.VOLUME_WAITS.labels(cmd.tenant_id).inc()
            await turn.wait_settled()
            return True, self._tenant_at_turn(cmd.tenant_id, tenant)
        return waited, tenant

    def _short_of_room(self, cmd: CommandRef, checked: Any, tenant: Tenant) -> bool:
        """Might a daily volume (a payment's, a transfer's or a payout's) refuse this
        command with every hold counted (LimitGate.volume_room)? False for any other
        command."""
        outflow = OUTFLOW_VOLUMES.get(cmd.command_type)
        if outflow is not None:
            prefix, limit = outflow
            return bool(getattr(tenant.limits, limit)) and not self.limits.volume_room(
                cmd.tenant_id,
                tenant.limits,
                prefix + str(checked.currency),
                int(checked.amount),
            )
        return (
            money_command(cmd.command_type, checked)
            and bool(tenant.limits.daily_payment_volume)
            and not self.limits.volume_room(
                cmd.tenant_id,
                tenant.limits,
                str(checked.currency),
                charge_now(cmd.command_type, checked, self._charge(cmd, checked, False)),
            )
        )

    def _tenant_at_turn(self, tenant_id: str, tenant: Tenant) -> Tenant | None:
        """``tenant`` (as read when its command started) with the registry's limits now;
        None if the registry now has it suspended or has no record of it.

        Chained, a command reads its tenant at its start, then waits for its turn while
        other chains run; a limits change landing meanwhile (review h70d) was seen by an
        earlier command that started later (refused under the new limits) but not by this
        one (admitted under the old). Serially, once one command sees a change, every
        later one does: read at each admission (taken in offset order), they do here too.
        Limits removed meanwhile: ``admit`` answers kept decisions and releases holds as
        for any tenant whose limits went (a kept rejection of this very record stands
        either way: ``admit`` answers it before it looks at the limits).

        Suspended or removed meanwhile (a kill switch, for fraud): serially this command
        would have started after, and been refused (or answered as let through before)
        by ``_process_event``; it has written nothing yet, and is run again from there
        (None). The gateway stays as read at its start; a record this worker cannot read
        leaves the tenant as read (one read so at a command's start fails it as a bug)."""
        now = self.registered(tenant_id)
        if now is tenant:
            return tenant  # (unchanged, the parse cached: nearly always)
        if now is None:
            return None if self.tenants.get(tenant_id) is None else tenant
        if now.status is TenantStatus.SUSPENDED:
            return None
        if now.limits == tenant.limits:
            return tenant
        return tenant.model_copy(update={"limits": now.limits})

    def _admit(
        self,
        limit_rec: LimitRecord,
        cmd: CommandRef,
        tenant: Tenant,
        data: Any,
        existing: IdempotencyRecord | None,
        request_hash: str,
        entity_keys: bool,
        applied: bool,
        limits_state: Any = UNREAD,
        *,
        exempt: bool = False,
        day_ms: int | None = None,
        trial: bool = False,
    ) -> Admission | LimitRejection | None:
        """The limits' decision on a command (``applied``: its entity says it took effect,
        so it passes as one let through before does; ``limits_state``: the tenant's, as
        read for its kept rejection with nothing written since, or UNREAD; ``trial``:
        what it would be, nothing written)."""
        idem_table_key = f"{cmd.tenant_id}:{cmd.idempotency_key}"
        admitted_before = existing is not None or applied
        checked = self._limits_data(cmd, data, admitted_before)
        return (self.limits.trial if trial else self.limits.admit)(
            cmd.tenant_id,
            tenant.limits,
            limit_rec,
            cmd.command_type,
            checked,
            admitted_before=admitted_before,
            # Another command id under a let-through command's key: its quota is that
            # command's, but its rate the tenant's, as any command's (a refusal says
            # "later", no final answer; review finding: unbounded resends each tried the
            # provider and were parked again).
            resent=existing is not None and existing.command_id != cmd.command_id and not applied,
            exempt=exempt,
            hold_key=_hold_key(cmd, data, idem_table_key, entity_keys),
            former_hold_key=_former_hold_key(cmd, data, entity_keys)
            if existing is not None
            else None,
            request=request_hash,
            stored=limits_state,
            day_ms=day_ms,
            amount=self._charge(cmd, checked, admitted_before),
        )

    def _limits_data(self, cmd: CommandRef, data: Any, let_through: bool = False) -> Any:
        """What the limits decide a command by: a ``subscription.update``'s new amount in
        its subscription's currency (a Repricing: its data names no currency, and a new
        price unchecked let a tenant capped at 100 bill any amount a period), an
        ``invoice.pay``'s invoice's amount due (an InvoiceCharge), an ``invoice.create``'s
        total (an InvoiceTotal), an ``invoice.update``'s new total when it replaces the
        lines (an InvoiceTotal too), or its own data."""
        if cmd.command_type == "invoice.pay":
            # (its invoice's amount due: its data names none)
            return invoice_charge(self.tables.invoices, cmd.tenant_id, data)
        if cmd.command_type == "invoice.create":
            # (its total with exclusive tax: a sent invoice is paid on the provider's page)
            return invoice_total(self.tables.tax_rates, cmd.tenant_id, data)
        if cmd.command_type == "invoice.update":
            # (its new total, checked as a create's: its lines replaced)
            updated = invoice_update_total(
                self.tables.invoices, self.tables.tax_rates, cmd.tenant_id, data
            )
            return data if updated is None else updated
        if cmd.command_type == "subscription.resume":
            # (a new period charged at the resume, at Paddle: held as an always_invoice)
            charged = subscription_resume_charge(
                self.tables.subscriptions, cmd.tenant_id, data, let_through
            )
            return data if charged is None else charged
        if cmd.command_type != "subscription.update":
            return data
        ending = subscription_trial_charge(
            self.tables.subscriptions, cmd.tenant_id, data, let_through
        )
        if ending is not None:
            # (its trial ended now: its first period charged now, as a create's without
            # a trial; nothing prorated in a trial, so nothing else on its invoice)
            return ending
        repricing = subscription_repricing(self.tables.subscriptions, cmd.tenant_id, data)
        if repricing is None:
            return data
        if data.proration is Proration.ALWAYS_INVOICE:
            # (it charges now: its own net proration, at most the new per-period charge,
            # and the lines still pending from an earlier create_prorations: review
            # h79r_e M2)
            subs = self.tables.subscriptions
            return ProrationCharge(
                *repricing,
                trialing=subscription_trialing(subs, cmd.tenant_id, data),
                pending=subscription_pending_charge(
                    subs, self.tables.tax_rates, cmd.tenant_id, data, repricing
                ),
            )
        return repricing

    def _charge(self, cmd: CommandRef, data: Any, let_through: bool) -> int | None:
        """A money command's per-period charge where it is not its ``amount``: a
        subscription's with its tax rates' exclusive tax (handlers.subscription_charge);
        None otherwise. A repricing takes its subscription's rates as they are (archived
        since or not, its provider bills them)."""
        if isinstance(data, (Repricing, ProrationCharge)):
            return subscription_charge(self.tables.tax_rates, cmd.tenant_id, data, True)
        if cmd.command_type != "subscription.create":
            return None
        return subscription_charge(self.tables.tax_rates, cmd.tenant_id, data, let_through)

    async def _let_through_by_entity(
        self, cmd: CommandRef, raw: Any, tenant: Tenant | None
    ) -> IdempotencyRecord | None:
        """For a tenant suspended or removed: a command with no idempotency record whose
        entity says it took effect (a crash lost that record) is recorded as let through
        (in flight), so that it is finished or parked again as one, never refused."""
        unrecorded = self._unrecorded_request(cmd, raw)
        if unrecorded is None:
            return None
        data, request_hash = unrecorded
        reason = RejectReason.UNKNOWN_TENANT if tenant is None else RejectReason.TENANT_SUSPENDED
        stand_in = NoProvider("" if tenant is None else tenant.gateway, Rejection(reason, ""))
        done = await self._applied_by_entity(cmd, data, request_hash, stand_in)
        if done is None:
            return None
        # Made by another record (this command sent again past the window): that one
        # counted its money, and a re-drive of this record must not count it again.
        by_another = done.id_salt is not None and done.id_salt != cmd.id_salt
        return self._record_in_flight(cmd, data, request_hash, counted=by_another or None)

    def _unrecorded_request(self, cmd: CommandRef, raw: Any) -> tuple[Any, str] | None:
        """A command read from Kafka that has no idempotency record: its validated data
        and request hash (None if it has a record, or its data is invalid)."""
        key = f"{cmd.tenant_id}:{cmd.idempotency_key}"
        if cmd.source is None or self._idempotency_record(key, time.time()) is not None:
            return None
        if cmd.command_type not in COMMANDS:
            return None
        try:
            data = COMMANDS[cmd.command_type].model_validate(raw or {})
        except ValidationError:
            return None
        return data, _request_hash(cmd.command_type, data)

    def _record_in_flight(
        self, cmd: CommandRef, data: Any, request_hash: str, counted: bool | None = None
    ) -> IdempotencyRecord | None:
        """Record the command as let through (in flight): finished or parked again as
        one from now on, never refused."""
        key = f"{cmd.tenant_id}:{cmd.idempotency_key}"
        now = time.time()
        expires = now + self.settings.idempotency_ttl_seconds
        in_flight = _idempotency_dict(
            cmd, request_hash, IdempotencyState.IN_FLIGHT, expires, counted=counted
        )
        # (As the main path's: parked again from here, it meets their erasure.)
        _name_its_customer(in_flight, cmd, data)
        self._remember(key, in_flight)
        return self._idempotency_record(key, now)

    async def _let_through_by_provider(
        self, rec: Inbound, cmd: CommandRef, raw: Any, tenant: Tenant
    ) -> IdempotencyRecord | str | None:
        """For a suspended tenant: a command with no record of ours whose very request
        the provider finished (under the key of the command's first provider call) is
        recorded as let through (in flight), so that it finishes (the provider answers
        it from that key), never refused. Nothing of a batch is durable before it is
        delivered: a worker killed after a provider call leaves only the provider's
        record of the command. None: it is refused (the provider did not take it, or
        cannot tell, as Stripe); UNANSWERED: the provider could not be asked now."""
        unrecorded = self._unrecorded_request(cmd, raw)
        if unrecorded is None:
            return None
        gateway = self._gateway_for(tenant)
        if isinstance(gateway, Rejection):
            return None
        data, request_hash = unrecorded
        known = await self._provider_knows(rec, cmd, data, request_hash, gateway)
        if known is None:
            return UNANSWERED
        return self._record_in_flight(cmd, data, request_hash) if known else None

    async def _provider_knows(
        self,
        rec: Inbound,
        cmd: CommandRef,
        data: Any,
        request_hash: str,
        gateway: Any,
        *,
        parked_unanswered: bool = False,
    ) -> bool | None:
        """Did the provider finish the command's first provider call, this very request
        (a crash lost everything of ours about it)? True without asking, for a command
        ``parked_unanswered``, when an entity records its effect (or another command of
        the same request made its entity), whenever it comes. False when the provider
        did not take it, cannot tell (Stripe), the command makes no provider call or one
        that takes no key, or is a re-drive first run so long ago that the provider may
        have forgotten its key (its answer could be gone by the time the command runs);
        None when it could not be asked now: an error or no answer within
        PROVIDER_LOOKUP_SECONDS, and for LOOKUP_PAUSE_SECONDS after one (or after a slow
        answer), for this tenant."""
        ask = getattr(gateway, "knows_request", None)  # a stand-in has none
        if ask is None and not parked_unanswered:
            return False  # (every other caller asked the entities already)
        provider = str(gateway.provider)
        capabilities = frozenset(getattr(gateway, "capabilities", ()))
        probe = functools.partial(
            first_provider_call,
            self.tables,
            cmd,
            data,
            request_hash,
            provider,
            id_window_seconds=self._id_window,
        )
        call = await probe(capabilities=capabilities)
        if call == EFFECT_RECORDED or (call == ANSWERED_BY_ANOTHER and parked_unanswered):
            # An entity says it took effect: the run answers from it, whenever it comes.
            # Or another command of the same request made it: a command parked
            # unanswered (it may have reached the provider) is answered from that one; a
            # new one is refused as it always was (an active tenant's: "already exists").
            return True
        if (
            ask is None
            or not isinstance(call, ProviderCall)
            or call.operation in KEYLESS_OPERATIONS
            or self._past_provider_window(rec, reconciled_too=True)
        ):
            return False
        # Paused per tenant (a provider account or a store's shard may fail alone), and
        # for every tenant once several failed: an outage must not cost each tenant its
        # own wait, one after another, in one batch.
        now = time.monotonic()
        if (
            max(
                self._lookups_paused.get((provider, cmd.tenant_id), 0.0),
                self._lookups_paused.get((provider, ""), 0.0),
            )
            > now
        ):
            return None
        # The request as first sent may carry the webhook reference this version leaves
        # out (or the other way round): the tenant's `webhooks` changed since. Asked
        # about that form too, it is this very request all the same (review finding:
        # charged, then refused `tenant_suspended`).
        other = await probe(capabilities=capabilities ^ {Capability.WEBHOOKS})
        requests = [call.request]
        if (
            isinstance(other, ProviderCall)
            and (other.operation, other.idempotency_key) == (call.operation, call.idempotency_key)
            and other.request != call.request
        ):
            requests.append(other.request)

        async def asked() -> bool:
            if getattr(gateway, "finds_earlier_attempts", False):
                REQUEST_SENT_SINCE.set(self._sent_since_ms(rec, cmd, data, None) / 1000)
            for request in requests:
                if await ask(call.operation, request, idempotency_key=call.idempotency_key):
                    return True
            return False

        try:
            known = await asyncio.wait_for(asked(), PROVIDER_LOOKUP_SECONDS)
        except Exception as exc:
            if not _in_progress(exc):
                self._pause_lookups(provider, cmd.tenant_id, f"failed ({exc!r})")
            return None
        took = time.monotonic() - now
        if took > LOOKUP_SLOW_SECONDS:
            # Each lookup waits in turn, holding the batch: a slow provider is not asked
            # again for a while (the commands meanwhile are parked, asked when re-driven).
            self._pause_lookups(provider, cmd.tenant_id, f"took {took:.1f} s")
        return known is True

    def _pause_lookups(self, provider: str, tenant_id: str, why: str) -> None:
        now = time.monotonic()
        until = now + LOOKUP_PAUSE_SECONDS
        self._lookups_paused = {k: t for k, t in self._lookups_paused.items() if t > now}
        self._lookups_paused[(provider, tenant_id)] = until
        tenants = sum(1 for (p, t) in self._lookups_paused if p == provider and t)
        everyone = tenants >= LOOKUP_TENANTS_FAILING
        if everyone:
            self._lookups_paused[(provider, "")] = until
        _throttled.warning(
            ("lookup", provider, "" if everyone else tenant_id),
            "asking %s whether it took a request of %s %s; not asked for %.0f s (%s)",
            provider,
            tenant_id,
            why,
            LOOKUP_PAUSE_SECONDS,
            "any tenant" if everyone else "this tenant",
        )

    def _park_unanswered(self, rec: Inbound, cmd: CommandRef, *, stamp: bool) -> list[Emit]:
        """Park a command the provider could not be asked about, and keep that decision
        for the record: redelivered before its offset is committed, decided afresh, it
        could get a final answer while its parked copy is re-driven. ``stamp``: it was
        refused for its tenant's suspension, and carries that (UNANSWERED_REFUSAL_HEADER)
        so that, re-driven, it is refused unless the provider took it, whatever changed
        meanwhile (the tenant resumed: it must not run because the provider was
        unreachable when it came)."""
        stamp = stamp or UNANSWERED_REFUSAL_HEADER in rec.headers  # once, for good
        self.answers.keep_parked(
            rec.partition,
            rec.offset,
            cmd.command_id,
            {"refusal": RejectReason.TENANT_SUSPENDED.value if stamp else None},
        )
        return self._to_retry_topic(
            rec, cmd, UNANSWERED, {UNANSWERED_REFUSAL_HEADER: SUSPENDED_STAMP} if stamp else None
        )

    def _applied_at(self, expires: float) -> float:
        """When a command whose idempotency record expires at ``expires`` ran: the same
        from the record as when it was written (a repair converges on the entity)."""
        return round(expires - self.settings.idempotency_ttl_seconds, 3)

    def _replay_done(self, cmd: CommandRef, existing: IdempotencyRecord) -> list[Emit]:
        """The stored outcome of a finished command, again: the same event, byte for byte."""
        assert existing.outcome is not None
        self._repair_entities(
            cmd.tenant_id,
            existing.command_id,
            existing.outcome,
            existing.request_hash,
            existing.id_salt,
            None
            if existing.time is None
            else {
                "at": self._applied_at(existing.expires_at),
                "time": existing.time.isoformat(),
                "traceparent": existing.traceparent,
                "tracestate": existing.tracestate,
            },
            cmd.command_type,
        )
        redelivered = cmd.source is not None and existing.source == list(cmd.source)
        if redelivered:
            # This very record, redelivered after a crash: what it wrote may be in the
            # local store (RocksDB writes on set) but never reached the changelog.
            self._rewrite(self.idempotency, f"{cmd.tenant_id}:{cmd.idempotency_key}")
            if cmd.idempotency_key != cmd.command_id:
                self._rewrite(self.idempotency, _command_id_key(cmd.tenant_id, cmd.command_id))
            self._rewrite_entities(cmd.tenant_id, existing.outcome)
            self._scrub_after_erasure(cmd.tenant_id, existing.outcome, existing.source)
        metrics.REPLAYS.labels(cmd.tenant_id, "idempotency").inc()
        # The stored outcome was produced for the original command id; a retry under a
        # new id with the same key gets the original event (as Stripe does).
        first: dict[str, Any] = {"command_id": existing.command_id, "id_salt": existing.id_salt}
        if existing.time is not None:
            # (its traceparent is the one its outcome carried, whichever version stored it)
            first.update(
                time=existing.time,
                traceparent=existing.traceparent,
                tracestate=existing.tracestate,
                traceparent_is_outcomes=True,
            )
        original = CommandRef(**{**cmd.__dict__, **first})
        replayed = self._outcome(original, existing.outcome)
        if not redelivered:
            # A repeated command: the dashboard's row says it is the same event again,
            # not a second effect. (A record redelivered after a crash is not marked: its
            # first answer may never have left the worker that crashed.)
            summary = {**(replayed.summary or {}), "resent": True}
            replayed = emit(replayed.topic, replayed.record, summary)
        if existing.command_id != cmd.command_id:
            replayed = _with_header(replayed, ANSWERS_HEADER, cmd.command_id.encode())
        return [replayed]

    def _earlier_request(self, cmd: CommandRef, raw: Any) -> IdempotencyRecord | None:
        """The record under this command's key if it is of the same request (``raw``: its
        data), whichever command id ran it and whatever its state."""
        existing = self._idempotency_record(f"{cmd.tenant_id}:{cmd.idempotency_key}", time.time())
        if existing is None or existing.command_type != cmd.command_type:
            return None
        try:
            data = COMMANDS[cmd.command_type].model_validate(raw or {})
        except ValidationError:
            return None
        if _request_hash(cmd.command_type, data) != existing.request_hash:
            return None  # another request under the key: answered as any would be
        return existing

    async def _answered_by_the_keys_command(
        self, cmd: CommandRef, existing: IdempotencyRecord, data: Any, request_hash: str
    ) -> None:
        """A retry under the key of a command let through before, which may have made
        its entity (a crash lost only its answer): AnsweredByAnother with that command's
        outcome if it did. Run itself, the retry derives ids of its own (a create without
        a chosen id), and made a second entity of the one provider object (review)."""
        first = replace(cmd, command_id=existing.command_id)
        stand_in = NoProvider("", Rejection(RejectReason.INVALID_STATE, "", remember=False))
        done = await self._applied_by_entity(first, data, request_hash, stand_in)
        if done is not None:
            # That command, let through before, may not have counted its money: a crash
            # lost its limits write with its answer, and it was parked again uncounted
            # (its record says). Then this answer counts it, and its re-drive, answered
            # from this one's record, does not (review finding: charged, counted as 0).
            counts = existing.counted is not True
            raise AnsweredByAnother(done.outcome, existing.command_id, counts=counts)

    def _vouched_redrive(self, rec: Inbound, size: int) -> bool:
        """Is ``rec`` a re-drive that a limit lowered or made since must not refuse for
        good: under paystream's seal, or, without one (a replay run without the workers'
        master keys, or workers without one), a request this worker let through or
        answered before? Never one over the value ceiling, under which every command
        ever admitted was: each replay would dead-letter it again, until its age held
        its partition back (review finding)."""
        if FIRST_ATTEMPT_HEADER not in rec.headers or size > COMMAND_MAX_BYTES_CEILING:
            return False
        if self._sealed_redrive(rec):
            return True
        try:
            return self._let_through_before(rec) is not None
        except (UndecodableRecord, ValidationError, KeyError, ValueError):  # not a command
            return False

    async def _answered_from_entity(
        self, cmd: CommandRef, data: Any, request_hash: str, tenant: Tenant
    ) -> list[Emit] | None:
        """The command's own first answer, as the entity that applied it remembers it
        (its ids, time and trace context), or None: no entity remembers it. Read only:
        the entities hold it, and the key's record stays the other command's."""
        stand_in = NoProvider(tenant.gateway, Rejection(RejectReason.NOT_FOUND, ""))
        done = await self._applied_by_entity(cmd, data, request_hash, stand_in)
        if done is None:
            return None
        metrics.REPLAYS.labels(cmd.tenant_id, "entity").inc()
        return [self._outcome(_as_first_emitted(cmd, done), done.outcome)]

    def _park_late(
        self,
        rec: Inbound,
        cmd: CommandRef,
        idem_key: str,
        request_hash: str,
        data: Any,
        tenant: Tenant,
        *,
        counted: bool = False,
    ) -> list[Emit]:
        """Parked `stale`, as a command let through is: its record says when it was first
        attempted (the broker's time of its record) and where, so that a resend or a
        retry under its key, its id or its chosen id is held back too (parked with no
        record, a client told to resend the same command had it run, and charged again;
        with no id pointer, resent under another key)."""
        first = self._first_attempt_ms(rec)
        parked_until = self._parked_until(time.time() + self.settings.idempotency_ttl_seconds)
        self._remember(
            idem_key,
            _idempotency_dict(
                cmd,
                request_hash,
                IdempotencyState.PARKED,
                parked_until,
                counted=True if counted else None,
                gateway=gateway_account(tenant),
                first_attempt=first,
            ),
        )
        if cmd.idempotency_key != cmd.command_id:
            self._point_id(cmd, request_hash, parked_until)
        self._point_create_scope(create_scope(cmd, data), idem_key, first, parked_until)
        return self._to_retry_topic(rec, cmd, STALE)

    async def _would_move_money(
        self, cmd: CommandRef, data: Any, request_hash: str, gateway: Any
    ) -> bool:
        """Would the command's run make a provider call that moves money (a charge, a
        capture, a refund)? Not when an entity records its effect (answered from it),
        another command of the request made its entity, or it is refused first."""
        call = await first_provider_call(
            self.tables,
            cmd,
            data,
            request_hash,
            str(gateway.provider),
            id_window_seconds=self._id_window,
            capabilities=frozenset(getattr(gateway, "capabilities", ())),
        )
        return isinstance(call, ProviderCall) and call.operation in MONEY_MOVING_OPERATIONS

    def _repark(
        self,
        rec: Inbound,
        cmd: CommandRef,
        existing: IdempotencyRecord,
        reason: RejectReason | str,
    ) -> list[Emit]:
        """Park again a command let through once that cannot run now. Its record stays as
        it is but for its state (it may name another command of the same request), and
        so does any daily-volume hold it has, until it can run. Parked with its request's
        first attempt where that is earlier than its own (see _with_first_attempt)."""
        key = f"{cmd.tenant_id}:{cmd.idempotency_key}"
        # This record may have moved money and counted it before a crash lost its
        # answer (its limits decision is kept until it is committed): the re-drive must
        # know, or count it again.
        counted = existing.counted or self.limits.counted(
            cmd.tenant_id, LimitRecord(cmd.command_id, rec.partition, rec.offset, rec.timestamp_ms)
        )
        if existing.state is not IdempotencyState.PARKED or counted != bool(existing.counted):
            record = {**self.idempotency[key], "state": IdempotencyState.PARKED.value}
            if counted:
                record["counted"] = True
            record["expires_at"] = self._parked_until(float(record["expires_at"]))
            self._remember(key, record)
        self._keep_id_pointer(cmd, float(self.idempotency[key]["expires_at"]))
        first = existing.first_attempt_ms
        if existing.entity_keys and first is not None and cmd.command_type in CREATES:
            # In flight at a crash, then parked here: _park never ran for it, so its id
            # may have no pointer yet (review finding: a late create of the id under
            # another key then ran under the id's provider key, maybe forgotten).
            scope = create_scope(cmd, _validated_data(rec, cmd.command_type))
            expires = float(self.idempotency[key]["expires_at"])
            self._point_create_scope(scope, key, first, expires)
        earlier = self._with_first_attempt(rec, first)
        return self._to_retry_topic(rec, cmd, getattr(reason, "value", reason), earlier)

    @staticmethod
    def _counts_here(
        rec: Inbound,
        existing: IdempotencyRecord | None,
        let_through: bool,
        first_salt: str | None,
    ) -> bool:
        """Does this record count the money of an outcome its entity already holds?

        * The record that moved it, redelivered (a crash lost the limits write, or not:
          the limits keep this record's decision and count it once): yes.
        * The command re-driven by another record (parked, then `dlq replay` or a client
          retry): only if no earlier record of it counted it (the parked record says, as
          of when it was parked; records of older versions do not: counted).
        * The command sent again past the idempotency window: no, it was counted then.
        """
        here = f"{rec.partition}:{rec.offset}"
        if let_through and existing is not None and existing.counted is True:
            return False  # an earlier record of it counted it
        if first_salt == here:
            return True
        if let_through and existing is not None:
            if existing.source == [rec.partition, rec.offset] and existing.counted is False:
                return True  # its own in-flight record of a re-drive that was to count
            if existing.source is None:  # where it was let through is not known: counted
                return True
            if existing.source != [rec.partition, rec.offset]:  # re-driven by another record
                return not existing.counted
        # Sent again (or its own in-flight record redelivered): counted by the record
        # that moved the money. (Without a salt, an older version's: counted here.)
        return first_salt is None

    def _account_replay(
        self,
        rec: Inbound,
        cmd: CommandRef,
        tenant: Tenant,
        data: Any,
        existing: IdempotencyRecord,
        request_hash: str,
    ) -> None:
        """Count a redelivered record answered from its own idempotency record, in case a
        crash kept that record but lost the limits' write (counted once either way)."""
        limit_rec = LimitRecord(cmd.command_id, rec.partition, rec.offset, rec.timestamp_ms)
        exempt = self._own_refresh(rec, cmd)
        if existing.outcome is None:
            return
        idem_table_key = f"{cmd.tenant_id}:{cmd.idempotency_key}"
        # Answered by the command that made its entity, or answered again past the
        # idempotency window (its outcome first produced by another record): that one
        # counted the money; this one was settled as moving none and only releases its
        # hold. (A let-through command re-driven by another record counts there, and
        # would not be counted again here: a crash losing that limits write under-counts.)
        source = existing.source
        if existing.counted is not None:  # what this record's settle did
            answered_by = not existing.counted
        else:  # a record of an older version: judged by where its outcome came from
            answered_by = "answered_by" in existing.outcome.data or (
                existing.id_salt is not None
                and source is not None
                and existing.id_salt != f"{source[0]}:{source[1]}"
            )
        self.limits.account_answered(
            cmd.tenant_id,
            tenant.limits,
            limit_rec,
            cmd.command_type,
            "command.rejected" if answered_by else existing.outcome.type,
            existing.outcome.data,
            hold_key=_hold_key(cmd, data, idem_table_key, existing.entity_keys),
            former_hold_key=_former_hold_key(cmd, data, existing.entity_keys),
            request=request_hash,
            exempt=exempt,
            amount=self._charge(cmd, data, True),
            invoice_requests=_pay_requests(existing.outcome.data.get("object") or {})
            if existing.outcome.type == "invoice.paid"
            else (),
        )
        # (a void it learnt: its release lost with the limits' write, done again)
        self._release_voided(cmd, existing.outcome)

    def _account_suspended_replay(
        self, rec: Inbound, cmd: CommandRef, tenant: Tenant, raw: Any
    ) -> None:
        """A suspended tenant's record answered before: counted as on the normal path (a
        tenant resumed the same day must not find that day's volume short)."""
        if not tenant.limits.enforced:
            return
        existing = self._idempotency_record(f"{cmd.tenant_id}:{cmd.idempotency_key}", time.time())
        if existing is None:
            return
        try:
            data = COMMANDS[cmd.command_type].model_validate(raw or {})
        except ValidationError:
            return  # answered, so valid once: a version with other rules took it
        request_hash = _request_hash(cmd.command_type, data)
        self._account_replay(rec, cmd, tenant, data, existing, request_hash)

    def _answered_before(self, cmd: CommandRef) -> list[Emit] | None:
        """This very record's outcome, if it was answered before (a redelivery after a
        crash): a tenant suspended or removed since must not change an answer already
        given, for a payment already made."""
        if cmd.source is None:
            return None
        existing = self._idempotency_record(f"{cmd.tenant_id}:{cmd.idempotency_key}", time.time())
        if (
            existing is None
            or existing.state is not IdempotencyState.DONE
            or existing.outcome is None
            or existing.source != list(cmd.source)
            or existing.command_type != cmd.command_type
        ):
            return None
        return self._replay_done(cmd, existing)

    def _apply(
        self, cmd: CommandRef, result: HandlerResult, request_hash: str, expires: float
    ) -> StoredOutcome:
        """Bump versions, build the outcome data, and write every changed entity
        (``expires``: when its idempotency record does)."""
        primary = result.primary
        entities = [primary, *result.related] if primary is not None else result.related
        # One dump per entity serves both its published snapshot and its table record, so
        # the two (and the stored outcome) share nested containers: replace, never mutate
        # them in place (changelog values are serialised only at the end of the batch).
        dumped: list[dict[str, Any]] = []
        snapshots: list[dict[str, Any]] = []
        for entity in entities:
            entity.version += 1
            record = _stored_fields(entity)
            if record.get("next_action") is not None:
                record["next_action"] = self.next_actions.sealed(
                    cmd.tenant_id, record["id"], record["next_action"]
                )
            dumped.append(record)
            snapshot = dict(record)  # (in its order, without the type)
            snapshot.pop("entity_type", None)
            snapshots.append(snapshot)
        if primary is not None:
            data: dict[str, Any] = {
                "tenant_id": cmd.tenant_id,
                "command_id": cmd.command_id,
                "entity_type": primary.entity_type,
                "entity_id": primary.id,
                "version": primary.version,
                "object": snapshots[0],
            }
        else:
            data = {"tenant_id": cmd.tenant_id, "command_id": cmd.command_id}
        if result.extra:
            data.update(result.extra)
        if result.related:
            offset = 0 if result.primary is None else 1
            data["related"] = [
                {
                    "entity_type": e.entity_type,
                    "entity_id": e.id,
                    "version": e.version,
                    "object": snapshots[offset + i],
                }
                for i, e in enumerate(result.related)
            ]
        if result.error is not None:
            data["error"] = result.error.as_outcome()
        outcome_type = result.outcome_type
        if result.rejected is not None:
            # Refused, its entities written all the same (a read-back's truth): the
            # answer is the rejection alone, as every other one.
            refused = result.rejected
            outcome_type = "command.rejected"
            data = rejection_data(cmd.command_type, refused.reason, refused.message)
        # (a str and a dict made here, held by nothing else: see paystream.built)
        stored = built(StoredOutcome, {"type": outcome_type, "data": data})
        emitted = _emission(cmd, self._applied_at(expires)) if entities else None
        for entity, record in zip(entities, dumped, strict=True):
            entity.remember(
                cmd.command_id, stored, request_hash, cmd.id_salt, self.committed, emitted
            )
            record["applied"] = dict(entity.applied)
            entity_type = record["entity_type"]
            key = entity_key(cmd.tenant_id, record["id"])
            self.tables.by_type(entity_type)[key] = record
            if entity_type in OWNER_FIELDS:
                self.tables.owners.note(entity_type, key, record)
        return stored

    def _finish(
        self,
        key: str,
        cmd: CommandRef,
        request_hash: str,
        expires: float,
        stored: StoredOutcome,
        *,
        counted: bool | None = None,
        customer_id: str | None = None,
        holds: Any = None,
    ) -> None:
        """``holds``: what its record (in flight, carried from its park) names as held
        (entity_holds), released now."""
        record = _idempotency_dict(
            cmd, request_hash, IdempotencyState.DONE, expires, stored, counted=counted
        )
        if customer_id is not None:
            record["customer_id"] = customer_id
        if holds:
            self._release_holds(cmd, holds)
        self._remember(key, record)

    def _release_holds(self, cmd: CommandRef, names: Any) -> None:
        """A parked command answered (its key's record about to be written over): the
        entities it held (entity_holds) may leave with retention again."""
        mark = _id_digest(cmd.idempotency_key)
        entity_holds.release(self.tables, cmd.tenant_id, names, mark)

    def _rewrite_holds(self, cmd: CommandRef, key: str) -> None:
        """The record that parked, redelivered (a crash before its offset was committed):
        its marks written again, as _rewrite_entities writes a replay's entities. With
        RocksDB the store may be ahead of the changelog, and the park, finding its marks
        in place, writes none: the next owner of the partition, recovered from the
        changelog, would sweep what the record says is held (review h82rc)."""
        raw = self.idempotency.get(key)
        if isinstance(raw, dict) and raw.get(entity_holds.HOLDS_FIELD):
            mark = _id_digest(cmd.idempotency_key)
            entity_holds.rewrite(self.tables, cmd.tenant_id, raw[entity_holds.HOLDS_FIELD], mark)

    def _hold_for_park(self, rec: Inbound, cmd: CommandRef) -> None:
        """Parking a command let through to its provider (its idempotency record in
        flight or parked): hold the entities its re-drive reads against the retention
        sweep until the provider's key window has passed (entity_holds; review h68p),
        and name them in its record, for its finish to release. A read (``*.refresh``)
        holds nothing: it made nothing at the provider to be recorded. A mark in place is
        not written again here (entity_holds.hold); a redelivery of the record that parked
        writes them again (_rewrite_holds: the changelog may have lost them)."""
        if self.settings.entity_retention_seconds <= 0 or cmd.command_type in PROVIDER_READS:
            return
        key = f"{cmd.tenant_id}:{cmd.idempotency_key}"
        record = self.idempotency.get(key)
        if not isinstance(record, dict) or record.get("state") not in LET_THROUGH_VALUES:
            return  # (never sent: nothing the provider may have done to record)
        first = record.get("first_attempt_ms")
        if not isinstance(first, int) or isinstance(first, bool):
            first = self._first_attempt_ms(rec)
        until, now = entity_holds.hold_until(first), time.time()
        data = _validated_data(rec, cmd.command_type)
        if until <= now or data is None:
            return
        same = record.get("command_id") == cmd.command_id
        if not same and record.get("request_hash") != _request_hash(cmd.command_type, data):
            return  # (another request under its key: this one was not let through)
        chosen = CREATES[cmd.command_type][1] if cmd.command_type in CREATES else None
        names = entity_holds.needed(self.tables, cmd.tenant_id, data, chosen)
        if not names:
            return
        # Marked by its key (the record's): a retry under it (a new command id) finishes
        # the same request, and releases the same mark.
        mark = _id_digest(cmd.idempotency_key)
        entity_holds.hold(self.tables, cmd.tenant_id, names, mark, until, now)
        before = record.get(entity_holds.HOLDS_FIELD)
        named = list(before) if isinstance(before, list) else []
        named += [n for n in names if n not in named]
        if named != before:
            # (Its expiry unchanged: the purge's queue has it already.)
            self.idempotency[key] = {**record, entity_holds.HOLDS_FIELD: named}

    def _repair_entities(
        self,
        tenant_id: str,
        command_id: str,
        outcome: StoredOutcome,
        request_hash: str | None = None,
        id_salt: str | None = None,
        emitted: Mapping[str, Any] | None = None,
        command_type: str | None = None,
    ) -> None:
        """Restore whichever of a command's entity writes a crash lost.

        A command writes several changelog partitions (idempotency, the entity, related
        entities); a SIGKILL can persist any subset. The outcome carries the post-image
        of every entity the command changed, so each one older than its post-image is
        rewritten. Commands of a tenant run in order, so an entity already at or past
        that version has this command's change in it.
        """
        for entity_type, image in _post_images(outcome):
            table = self.tables.by_type(entity_type)
            key = entity_key(tenant_id, str(image.get("id", "")))
            current = table.get(key)
            if current is not None and int(current.get("version", 0)) >= int(
                image.get("version", 0)
            ):
                continue
            applied = dict((current or {}).get("applied") or {})
            if outcome.type == "customer.erased":
                # The erasure's own write lost: the outcomes the record remembers from
                # before it still held the personal data it blanked (review finding).
                applied = scrub_customer_applied(applied, str(image.get("id", "")))
            # (its type kept with it, as the first write did: a read is no change)
            kept = emitted if command_type is None else {**(emitted or {}), "cmd": command_type}
            applied[command_id] = applied_entry(outcome, request_hash, id_salt, kept)
            trim_applied(applied, self.committed, keep=image.get("created_by"))
            table[key] = repaired = {**image, "entity_type": entity_type, "applied": applied}
            if entity_type in OWNER_FIELDS:
                self.tables.owners.note(entity_type, key, repaired)
            metrics.REPAIRS.labels(tenant_id, entity_type).inc()
            log.info("repaired %s %s to version %s", entity_type, key, image.get("version"))

    def _rewrite_entities(self, tenant_id: str, outcome: StoredOutcome) -> None:
        """Write a replayed command's entities again as they are, so the changelog has
        them. With RocksDB a table set reaches the local store at once, before the batch's
        changelog is produced: after a crash the store can be ahead of the changelog, and
        the replay, finding everything done, would otherwise write nothing, leaving the
        next owner's recovery without those writes. (Replays are rare; this is cheap.)"""
        for entity_type, image in _post_images(outcome):
            key = entity_key(tenant_id, str(image.get("id", "")))
            self._rewrite(self.tables.by_type(entity_type), key)
        self._rewrite(self.limits.table, self.limits.key(tenant_id))

    def _rewrite_answers(self, rec: Inbound) -> None:
        key = self.answers.key_holding(rec.partition, rec.offset)
        if key is not None:
            self._rewrite(self.answers.table, key)
            # (And the index naming it: else, lost with it, the record is never pruned.)
            self._rewrite(self.answers.table, self.answers.index_key(rec.partition))

    @staticmethod
    def _rewrite(table: Any, key: str) -> None:
        current = table.get(key)
        if current is not None:
            table[key] = current

    def _gateway_for(self, tenant: Tenant) -> Any:
        try:
            return self.gateways.get(tenant)
        except GatewayError as exc:
            return Rejection(RejectReason.GATEWAY_NOT_CONFIGURED, exc.message)
        except (CryptoError, ConfigurationError) as exc:
            # A secret sealed under another key or tenant, or bad gateway options: the
            # tenant's setup is wrong (the pool logs it once per tenant record).
            return Rejection(RejectReason.GATEWAY_NOT_CONFIGURED, str(exc))

    # ---- emitted records ----------------------------------------------------------

    def _outcome(self, cmd: CommandRef, stored: StoredOutcome) -> Emit:
        record = encode_outcome(
            cmd,
            stored.type,
            self.next_actions.opened(cmd.tenant_id, stored.data),
            self.settings.cloudevents_mode,
        )
        obj = stored.data.get("object") or {}
        registered = cmd.tenant_id in self.tenants
        summary = {
            "time": time_text(cmd.time),
            # (a made-up id can be as long as a Kafka header: the dashboard shows a prefix)
            "tenant": cmd.tenant_id
            if registered
            else redact_card_numbers(cmd.tenant_id[:64]),  # (a cut may make one)
            "registered": registered,
            "command": cmd.command_type,
            "outcome": stored.type,
            "entity_id": stored.data.get("entity_id"),
            # What the command moved: a (partial) capture's captured amount.
            "amount": obj.get("amount_captured")
            if cmd.command_type == "payment.capture" and "amount_captured" in obj
            else obj.get("amount"),
            "currency": obj.get("currency"),
            "reason": stored.data.get("reason") or (stored.data.get("error") or {}).get("code"),
            "resent": False,
        }
        return emit(self.settings.events_topic, record, summary)

    def _reject(
        self,
        cmd: CommandRef,
        reason: RejectReason,
        message: str,
        errors: list[dict[str, Any]] | None = None,
        extra: dict[str, Any] | None = None,
        *,
        replay: bool = False,
    ) -> list[Emit]:
        """``replay``: the rejection this record got before (a redelivery answered from a
        kept decision), counted as a replay and not as a second rejection."""
        cmd = _nameable(cmd)
        # Labels only from known values: a hostile stream of made-up tenant ids or types
        # must not grow the metrics without bound.
        tenant = cmd.tenant_id if cmd.tenant_id in self.tenants else UNREGISTERED
        if replay:
            metrics.REPLAYS.labels(tenant, "rejection").inc()
        else:
            self._count(
                tenant,
                cmd.command_type if cmd.command_type in COMMANDS else "unknown",
                "command.rejected",
                reason,
            )
        data = rejection_data(cmd.command_type, reason, message, errors)
        if extra:
            data.update(extra)
        stored = StoredOutcome(type="command.rejected", data=data)
        return [self._outcome(cmd, stored)]

    def _reject_kept(
        self,
        rec: Inbound,
        cmd: CommandRef,
        reason: RejectReason,
        message: str,
        errors: list[dict[str, Any]] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> list[Emit]:
        """A rejection that depends on state: kept for the record's redeliveries, which
        get it again whatever changed since (answers.py)."""
        emits = self._reject(cmd, reason, message, errors, extra)
        data = rejection_data(cmd.command_type, reason, message, errors)
        self.answers.keep(rec.partition, rec.offset, cmd.command_id, {**data, **(extra or {})})
        return emits

    def _limits_answer_again(self, cmd: CommandRef, kept: LimitRejection) -> list[Emit]:
        """A limits rejection kept for this record, as first answered; its state written
        again (RocksDB: see _answer_again)."""
        self._rewrite(self.limits.table, self.limits.key(cmd.tenant_id))
        return self._reject(
            cmd, RejectReason(kept.reason), kept.message, extra=kept.extra, replay=True
        )

    def _answer_again(self, rec: Inbound, cmd: CommandRef, data: dict[str, Any]) -> list[Emit]:
        """A kept rejection, as first answered (the same event). Its record is written
        again: with RocksDB the store may be ahead of the changelog after a crash, and the
        next owner of the partition must still find it (see _rewrite_entities)."""
        metrics.REPLAYS.labels(
            cmd.tenant_id if cmd.tenant_id in self.tenants else UNREGISTERED, "rejection"
        ).inc()
        self._rewrite_answers(rec)
        # (Named as _reject named it the first time: the same event; review finding.)
        return [self._outcome(_nameable(cmd), StoredOutcome(type="command.rejected", data=data))]

    def _dead_letter(
        self,
        rec: Inbound,
        reason: str,
        detail: str,
        *,
        reject: RejectReason | None,
        when: datetime,
        suspicious: bool = True,
        decoded: bool = False,
    ) -> list[Emit]:
        """Dead-letter the raw bytes; also reject if the headers identify a command (and
        ``reject`` is given: None for one that must get no final answer). An oversized
        record's value is not parsed, unless it ``decoded`` (within the value limit).

        Bytes holding a card number are not kept (PCI): the dead letter then carries only
        where it came from and why, and the rejection names no attribute that held one.
        """
        metrics.DEAD_LETTERS.labels(reason).inc()
        _throttled.warning(
            ("dead-letter", rec.topic, reason),
            "dead-lettering %s[%d]@%d (`paystream dlq list` shows it): %s",
            rec.topic,
            rec.partition,
            rec.offset,
            reason,
        )
        # An oversized record is not parsed (at any size): its escapes are resolved as text.
        try:
            card = suspicious and raw_holds_card(
                rec, parse=decoded or reject is not RejectReason.PAYLOAD_TOO_LARGE
            )
            code = not card and raw_holds_security_code(rec)
        except Exception as exc:
            # This is also the path of our own bugs: it must never raise (the worker would
            # stop on every redelivery). Unsure means the bytes are not kept.
            _throttled.bug(exc, "card scan of a dead letter failed; its bytes are not kept")
            card, code = True, False
        # The decoder's message may quote the record (an attribute's name, a value): one
        # that holds card data is not repeated at all, as `dlq list` would show it.
        shown = f"{reason}: not shown, the record holds card data" if card or code else detail
        ours = {
            "paystream-dlq-reason": reason.encode(),
            "paystream-dlq-detail": redact_card_numbers(shown[:500]).encode(),
            "paystream-source": f"{rec.topic}/{rec.partition}/{rec.offset}".encode(),
        }
        if card:
            ours["paystream-dlq-redacted"] = b"card_number"
        elif code:
            ours["paystream-dlq-redacted"] = b"card_security_code"
            card = True  # kept and answered as one holding a card number would be
        # Bytes too large to produce again (with our headers, under the broker's message
        # size) are not kept: the dead letter says where to find them while the commands
        # topic retains them. Producing them would fail the batch on every redelivery.
        dropped = not card and record_size(rec) > DEAD_LETTER_KEEP_MAX_BYTES
        if dropped:
            ours["paystream-dlq-dropped"] = b"too_large_to_keep"
        kept = {} if card or dropped else kept_headers(rec.headers)
        if not (card or dropped):
            # Its first attempt, whatever headers it came with: without one, a replay
            # reckons its age from the `time` in its body, which the producer chose.
            kept[FIRST_ATTEMPT_HEADER] = str(self._first_attempt_ms(rec)).encode()
            if UNANSWERED_REFUSAL_HEADER in rec.headers:  # a K1 park's refusal, kept
                kept[UNANSWERED_REFUSAL_HEADER] = SUSPENDED_STAMP
            kept.update(_sender_request(rec))
        # A structured command over its limit names its sender in its body: read up to
        # the ceiling any limit may be set to (unread, its sender was never answered;
        # review finding), not a body up to the broker's message size.
        identity = command_identity(
            rec,
            parse=decoded
            or reject is not RejectReason.PAYLOAD_TOO_LARGE
            or record_size(rec) <= COMMAND_MAX_BYTES_CEILING,
        )
        if identity is not None and reject is not None:
            # Its sender is answered below, for good: `dlq replay` never re-runs it (the
            # sender may have paid again under a new id; review finding).
            ours["paystream-dlq-answered"] = (
                RejectReason.CARD_DATA_FORBIDDEN if card else reject
            ).value.encode()
        headers = tuple(sorted({**kept, **ours}.items()))
        value = b"" if card or dropped else rec.value or b""
        key = _tenant_key_only(rec.key, self.tenants) if card or dropped else rec.key
        out = [Emit(self.settings.dlq_topic, KafkaRecord(key, value, headers))]
        if identity is not None and reject is not None:
            tenant, cmd_id, ce_type = identity
            cmd = CommandRef(
                tenant_id=safe_tenant(tenant),
                command_id=safe_id(cmd_id),
                command_type=safe_type(ce_type.removeprefix(COMMAND_PREFIX)),
                idempotency_key="",
                time=when,
            )
            if card:
                out += self._reject(
                    cmd,
                    RejectReason.CARD_DATA_FORBIDDEN,
                    f"{reason}, and card data is not accepted: the record was not kept",
                )
            else:
                out += self._reject(cmd, reject, redact_card_numbers(f"{reason}: {detail}")[:500])
        return out

    def dead_letter_bug(self, rec: Inbound) -> list[Emit]:
        """An unexpected exception of ours: keep the command and the partition moving.
        Its answer, if any, is its sender's only, as ``process``'s is (without the
        request header, a client took it for the answer of every request under the id)."""
        # (Its records judged as process() judged them: by the clock, a retry answered
        # from its key there got a final internal_error here; review finding.)
        with judged_as_read(rec.timestamp_ms):
            emits = self._dead_letter_bug(rec)
        return self._for_its_sender(rec, emits)

    def _dead_letter_bug(self, rec: Inbound) -> list[Emit]:
        """See :meth:`dead_letter_bug`.

        A command let through to the provider (its record in flight or parked) may have
        moved money before the failure: it is parked, unanswered, as a provider outage's
        would be; one that finished gets its stored answer. A final ``internal_error``
        would contradict the answer its replay gives once the bug is fixed, and a sender
        trusting it might pay again under a new id. Others are dead-lettered and
        rejected ``internal_error``.
        """
        try:
            found = self._let_through_before(rec)
        except Exception as exc:  # this path must never raise: the dead letter below is the floor
            _throttled.bug(
                exc, "could not read %s[%d]@%d again", rec.topic, rec.partition, rec.offset
            )
            found = None
        if found is not None:
            cmd, existing = found
            try:
                if existing.state is IdempotencyState.DONE:
                    return self._replay_done(cmd, existing)
                log.error(
                    "parking command %s of %s after an unexpected failure (the provider may "
                    "have acted on it): fix the cause, then `paystream dlq replay`",
                    safe_id(cmd.command_id),  # (a let-through command's id may hold a code)
                    cmd.tenant_id,
                )
                return self._repark(rec, cmd, existing, RejectReason.INTERNAL_ERROR)
            except Exception as exc:
                _throttled.bug(exc, "could not answer or park %s", safe_id(cmd.command_id))
                reject = None  # kept, never answered: its provider may have acted
        elif FIRST_ATTEMPT_HEADER in rec.headers:
            # A re-drive with no record here (a K1 park, one parked past its record's
            # window): the provider may have acted on it; kept, never answered (review).
            reject = None
        else:
            reject = RejectReason.INTERNAL_ERROR
        try:
            return self._dead_letter(
                rec,
                "internal_error",
                "unexpected processing failure; see worker logs",
                reject=reject,
                when=record_time(rec.timestamp_ms),
            )
        except Exception as exc:
            # The floor: raised here, the batch fails on every redelivery and the
            # partition stops. Where it came from only (its bytes were never scanned).
            _throttled.bug(
                exc, "could not dead-letter %s[%d]@%d", rec.topic, rec.partition, rec.offset
            )
            source = f"{rec.topic}/{rec.partition}/{rec.offset}".encode()
            headers = (
                ("paystream-dlq-detail", b"could not be dead-lettered as usual; see worker logs"),
                ("paystream-dlq-dropped", b"not_scanned"),
                ("paystream-dlq-reason", b"internal_error"),
                ("paystream-source", source),
            )
            return [Emit(self.settings.dlq_topic, KafkaRecord(None, b"", headers))]

    def _let_through_before(self, rec: Inbound) -> tuple[CommandRef, IdempotencyRecord] | None:
        """The command of ``rec`` and its idempotency record if that request was let
        through to the provider (in flight or parked) or finished; else None."""
        event = decode_record(rec.key, rec.value, rec.headers)
        tenant_id = str(event.get_extension("tenantid") or "")
        if not _state_readable(rec, tenant_id):
            return None  # (never run: refused tenant_mismatch or unknown_tenant)
        idem_key = ce_text(event.get_extension("idempotencykey")) or event.get_id()
        command_type = event.get_type().removeprefix(COMMAND_PREFIX)
        cmd = CommandRef(
            tenant_id=tenant_id,
            command_id=event.get_id(),
            command_type=command_type,
            idempotency_key=idem_key,
            time=record_time(rec.timestamp_ms),
            source=(rec.partition, rec.offset) if rec.offset >= 0 else None,
        )
        now = time.time()
        existing = self._idempotency_record(f"{tenant_id}:{idem_key}", now)
        if existing is None:
            # Sent again under another key: run under the one it was let through under.
            data = COMMANDS[command_type].model_validate(event.get_data() or {})
            return self._same_command_keyed(cmd, _request_hash(command_type, data), now)
        done = existing.state is IdempotencyState.DONE and existing.outcome is not None
        if not done and existing.state not in LET_THROUGH:
            return None
        # Only the very same request shares the record's fate (another command of the key
        # or the same id reused for another request would not have run).
        same_id = existing.command_id == cmd.command_id
        try:
            data = COMMANDS[command_type].model_validate(event.get_data() or {})
            request_hash = _request_hash(command_type, data)
        except Exception:
            if not same_id:
                raise  # another command: not known to have run
            request_hash = existing.request_hash  # its own record: no verdict against it
        erased_same = existing.request_hash == ERASED_HASH and same_id
        if existing.command_type != command_type or (
            request_hash != existing.request_hash and not erased_same
        ):
            return None
        return cmd, existing

    def _park(
        self,
        rec: Inbound,
        cmd: CommandRef,
        idem_key: str,
        request_hash: str,
        expires: float,
        exc: GatewayError,
        entity_keys: bool,
        counted: bool = False,
        data: Any = None,
    ) -> list[Emit]:
        """Retries exhausted: keep the command on the retry topic for `paystream dlq replay`
        (``data``: its validated data)."""
        in_flight = self.idempotency.get(idem_key) or {}
        parked_until = self._parked_until(expires)
        parked = _idempotency_dict(
            cmd,
            request_hash,
            IdempotencyState.PARKED,
            parked_until,
            entity_keys=entity_keys,
            # (as it was sent: see HandlerContext._provider_key)
            digest_keys_apart=bool(in_flight.get("digest_keys_apart")),
            counted=True if counted else None,
            gateway=in_flight.get("gateway"),  # where it was sent
            first_attempt=in_flight.get("first_attempt_ms"),  # and when first
        )
        holds = in_flight.get(entity_holds.HOLDS_FIELD)
        if holds:
            # What it holds (entity_holds), carried as _repark's record does: written
            # without, _hold_for_park wrote the record again at every park (review h82rc).
            parked[entity_holds.HOLDS_FIELD] = holds
        about = getattr(data, "customer_id", None)
        if isinstance(about, str) and cmd.command_type.startswith("customer."):
            # Its hash is of the customer's data, kept parked for up to the providers'
            # window and more: the customer's erasure erases it (review h59j).
            parked["customer_id"] = about
        self._remember(idem_key, parked)
        self._keep_id_pointer(cmd, parked_until)
        first = in_flight.get("first_attempt_ms")
        if entity_keys and first is not None:
            self._point_create_scope(create_scope(cmd, data), idem_key, first, parked_until)
        # What the provider (or its circuit breaker) said: the code alone told an operator
        # no DNS failure from a 503 from an open breaker (review h59b). A GatewayError's
        # message is what outcomes carry (no secrets), its card numbers redacted anyway.
        detail = {PARK_DETAIL_HEADER: _header_text(exc.message)}
        earlier = self._with_first_attempt(rec, first)
        return self._to_retry_topic(rec, cmd, exc.code.value, {**detail, **(earlier or {})})

    def _to_retry_topic(
        self,
        rec: Inbound,
        cmd: CommandRef,
        reason: str,
        extra_headers: dict[str, bytes] | None = None,
    ) -> list[Emit]:
        """The command's record, as it came, on the retry topic; ``reason`` says why."""
        # (A made-up tenant's re-drive is parked too, stale: its id is no label, one
        # series each for ever; review finding.)
        tenant = cmd.tenant_id if cmd.tenant_id in self.tenants else UNREGISTERED
        metrics.PARKED.labels(tenant, reason).inc()
        detail = (extra_headers or {}).get(PARK_DETAIL_HEADER)
        _throttled.warning(
            ("park", tenant, reason),
            "parking command %s of %s for `paystream dlq replay`: %s%s",
            safe_id(cmd.command_id),  # (a let-through command's id may hold a code)
            cmd.tenant_id,
            reason,
            "" if detail is None else f" ({detail.decode()})",
        )
        headers = tuple(
            sorted(
                {
                    # (Without a header holding a card security code: only one let
                    # through once, which the provider may have acted on, has one.)
                    **without_code_headers(
                        without_card_trace(kept_headers(rec.headers), cmd.tracestate)
                    ),
                    "paystream-park-reason": reason.encode(),
                    "paystream-source": f"{rec.topic}/{rec.partition}/{rec.offset}".encode(),
                    FIRST_ATTEMPT_HEADER: str(self._first_attempt_ms(rec)).encode(),
                    # A K1 park's refusal stays with the command, however often parked.
                    **(
                        {UNANSWERED_REFUSAL_HEADER: SUSPENDED_STAMP}
                        if UNANSWERED_REFUSAL_HEADER in rec.headers
                        else {}
                    ),
                    **_sender_request(rec),
                    **(extra_headers or {}),
                }.items()
            )
        )
        parked = KafkaRecord(rec.key, park_value(rec), headers)
        size = len(parked.key or b"") + len(parked.value or b"")
        size += sum(len(name) + len(value) for name, value in headers)
        if size > PARK_MAX_BYTES:
            # Larger than the broker may take (a structured body written again grows:
            # numbers in full, 1e15 as 1000000000000000.0; review finding): produced, it
            # stopped its batch for good. Dead-lettered unanswered instead, where a record
            # this size keeps only where it came from and why.
            return self._dead_letter(
                rec,
                "redrive_too_large",
                f"its park would be {size} bytes (at most {PARK_MAX_BYTES})",
                reject=None,
                when=record_time(rec.timestamp_ms),
            )
        self._hold_for_park(rec, cmd)
        return [Emit(self.settings.retry_topic, parked)]


def _in_progress(exc: Exception) -> bool:
    """A lookup's "a try of this request is in progress" (a retryable idempotency_error,
    e.g. Paddle's in-flight key held: gateways/base.py knows_request): it cannot tell
    now, asked again when the command is re-driven; the provider did not fail, so the
    tenant's other lookups are not paused."""
    return (
        isinstance(exc, GatewayError) and exc.code is ErrorCode.IDEMPOTENCY_ERROR and exc.retryable
    )


def _sender_request(rec: Inbound) -> dict[str, bytes]:
    """The sender's request header, kept on a park or dead letter: re-driven, its outcome
    echoes it, so that a second sender of the same command id, waiting meanwhile, is
    not given this one's answer as its own (client.py; review finding)."""
    request = rec.headers.get(REQUEST_HEADER)
    if request is None or REQUEST_PATTERN.fullmatch(request) is None:
        return {}
    return {REQUEST_HEADER: request}


# What every tenant id is (TENANT_ID_PATTERN): without ":", which separates table keys.
_TENANT_ID = re.compile(TENANT_ID_PATTERN)


def _state_readable(rec: Inbound, tenant_id: str) -> bool:
    """May the state of the tenant a record names be read before its rules run? Only
    for a record keyed by its tenant (another's is refused `tenant_mismatch`) whose id
    is one (every table key is "<tenant>:<...>": "acme:x" with key "k" reads acme's
    "x:k"; refused `unknown_tenant`). Read for any other, the answer told what that
    tenant ran, or replayed its stored outcome (review findings)."""
    return tenant_id == key_str(rec.key) and _TENANT_ID.fullmatch(tenant_id) is not None


def _salt_source(id_salt: str | None) -> tuple[int, int] | None:
    """The [partition, offset] an id salt ("partition:offset") was made from."""
    partition, _, offset = (id_salt or "").partition(":")
    try:
        return int(partition), int(offset)
    except ValueError:
        return None


# Provider refusals that have a rejection reason of their own.
_PROVIDER_REJECTIONS = {
    ErrorCode.INVALID_REQUEST: RejectReason.VALIDATION_ERROR,
    ErrorCode.IDEMPOTENCY_ERROR: RejectReason.IDEMPOTENCY_CONFLICT,
}


# How far a provider's clock (that dates an invoice's period) and the one that stamped a
# command's record may disagree (Paddle's gateway looks for an earlier try from as long
# before: paddle.gateway.CLOCK_SKEW_SECONDS).
_CLOCK_SKEW_SECONDS = 120
# Park reason of a re-driven command older than `dlq replay` may re-send (see dlq.py).
STALE = "stale"
# A command let through once, refused by its provider as another request under its key
# (not a 409, a request still running under it, parked as idempotency_error).
PROVIDER_KEY_CONFLICT = "provider_key_conflict"
# A command let through to one provider account, re-driven after its tenant moved to
# another (see gateway_account).
PROVIDER_CHANGED = "provider_changed"


# Validation errors an outcome lists (the message says how many there were): a command
# with hundreds of unknown fields is answered in a few hundred bytes, and the rejection
# fits what is kept for its redeliveries (answers.py).
VALIDATION_ERRORS_SHOWN = 10
# Longest wait for a provider's answer to "did you take this request?" (K1: see
# _let_through_by_provider), an answer slower than which is a warning, and after a
# failed or slow one how long the provider is not asked about that tenant's commands
# (each would wait as long, one after another): the commands that needed an answer
# meanwhile are parked, to be asked again when re-driven.
PROVIDER_LOOKUP_SECONDS = 2.0
LOOKUP_SLOW_SECONDS = 0.5
LOOKUP_PAUSE_SECONDS = 30.0
# Tenants whose lookups a provider failed within the pause: past this, it is paused for all.
LOOKUP_TENANTS_FAILING = 3
# On a command parked unanswered while its tenant was suspended: re-driven, it is refused
# unless the provider took it. Its presence is what counts, whatever its value: a
# producer setting it gets its own command refused (or answered from a command of the
# same request already made), nothing more.
UNANSWERED_REFUSAL_HEADER = "paystream-unanswered-refusal"
SUSPENDED_STAMP = RejectReason.TENANT_SUSPENDED.value.encode()
# Parking reason of a command the provider could not be asked about.
UNANSWERED = "provider_unanswered"


# What an entity's published snapshot and table record leave out of its dump (the record
# gets its own copy back). Never changed: one set for every dump.
_APPLIED: set[str] = {"applied"}


# C0 and C1 controls (and DEL): not for a header, a log line or a terminal.
_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _header_text(text: str, limit: int = 500) -> bytes:
    """A provider's free text as a header value: card numbers redacted, controls made
    spaces, cut, and encodable whatever it holds (a lone surrogate from a JSON error
    body raised, and turned a park into internal_error; review h59e)."""
    shown = _CONTROLS.sub(" ", redact_card_numbers(text))[:limit]
    return shown.encode("utf-8", "replace")


# Commands whose limits data is read from their entities (pipeline._limits_data): the
# money commands, a subscription.update (a new price; charged now with
# always_invoice), and a subscription.resume (a new period charged at once, at Paddle).
_LIMITS_READ = dict.fromkeys((*MONEY_COMMANDS, "subscription.update", "subscription.resume"), True)


def _moved(command_type: str, outcome: StoredOutcome, ended_now: bool = False) -> int | None:
    """What a ``subscription.update`` charged now: its proration invoices (made by this
    command, with proration lines, billing from a change: not a renewal carrying them,
    which its provider billed first and the limits do not count) paid, summed; 0 for
    none (a credit, a decline, no always_invoice). One that ended a trial now
    (``ended_now``, no longer trialing): every invoice it made, paid (a trial has nothing
    to prorate: the only one is the first period's; matched by no trial_end, which
    Paddle names no more once active; review h82rr H1). A ``subscription.resume``'s: its
    invoices paid (_resume_paid). None for any other command: its outcome type tells."""
    if command_type == "subscription.resume":
        return _resume_paid(outcome)
    if command_type != "subscription.update":
        return None
    command = outcome.data.get("command_id")
    paid = 0
    first = _trial_ended_at(outcome.data)
    over = ended_now and _trial_over(outcome.data)
    for part in outcome.data.get("related") or ():
        obj = part.get("object") if isinstance(part, dict) else None
        if (
            isinstance(obj, dict)
            and part.get("entity_type") == "invoice"
            and obj.get("status") == "paid"
            and obj.get("created_by") == command
            and (
                over
                or (obj.get("proration_lines") and _from_a_change(obj))
                or (first is not None and _instant(obj.get("period_start")) == first)
            )
        ):
            paid += int(obj.get("amount") or 0)
    return paid


def _trial_over(data: dict[str, Any]) -> bool:
    """Does this outcome show the trial of a subscription an update found trialing over?"""
    sub = data.get("object")
    return (
        data.get("previous_status") == "trialing"
        and isinstance(sub, dict)
        and sub.get("status") != "trialing"
    )


def _trial_ended_at(data: dict[str, Any]) -> datetime | None:
    """When the trial of a subscription an update found trialing ended, if this outcome
    shows it ended (no longer trialing) and names the time (Paddle does not once active):
    the first period's invoice begins then, the one an update ending the trial now
    (``trial_end: "now"``) charged. (The limits count it only for such an update: only
    it is held as a charge, ProrationCharge.)"""
    sub = data.get("object")
    if not _trial_over(data) or not isinstance(sub, dict):
        return None
    return _instant(sub.get("trial_end"))


def _resume_paid(outcome: StoredOutcome) -> int:
    """What a ``subscription.resume`` charged now: the invoices it made (a new period's,
    at Paddle) paid or being collected, summed; 0 for none (Stripe's, the simulator's; a
    decline). Paddle makes the transaction ``billed`` and collects it moments later
    (``paid``, ``completed``): the answer mostly finds it open with no decline yet, and
    the refresh that reads it paid counts nothing (review h82re M3). Counted then: a
    decline after it over-counts the day's volume, never lets a charge past it."""
    command = outcome.data.get("command_id")
    return sum(
        int(obj.get("amount") or 0)
        for part in outcome.data.get("related") or ()
        if isinstance(part, dict)
        and part.get("entity_type") == "invoice"
        and isinstance(obj := part.get("object"), dict)
        and obj.get("created_by") == command
        and _paid_or_collecting(obj)
    )


def _paid_or_collecting(invoice: Mapping[str, Any]) -> bool:
    """Is this invoice paid, or open with no decline (being collected: Paddle's
    ``billed`` transaction, paid moments later)? What a resume's charge counts."""
    status = invoice.get("status")
    return status == "paid" or (status == "open" and not invoice.get("failure_code"))


def _begins_since(invoice: Mapping[str, Any], sent_since_ms: int | None) -> bool:
    """Does this invoice's period begin at or after its command's provider request can
    first have been sent (``sent_since_ms``, less the clocks' skew)? False if either
    time is not known."""
    begins = _instant(invoice.get("period_start"))
    if begins is None or sent_since_ms is None:
        return False
    return begins >= datetime.fromtimestamp(sent_since_ms / 1000 - _CLOCK_SKEW_SECONDS, UTC)


def _from_a_change(invoice: dict[str, Any]) -> bool:
    """Is this invoice with proration lines a price change's own (its period from the
    change: one of its lines' start), not a renewal carrying them (its period starts at
    the old period's end, which every line ends at, none starts at)? (review h79r_e M3)"""
    start = _instant(invoice.get("period_start"))
    return start is not None and any(
        _instant(line.get("period_start")) == start
        for line in invoice.get("proration_lines") or ()
        if isinstance(line, dict)
    )


def _instant(value: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(str(value)) if value is not None else None
    except ValueError:
        return None


def _stored_fields(entity: EntityRecord) -> dict[str, Any]:
    """``entity.model_dump(mode="json", exclude={"applied"})`` (less the fields added
    since that are None, below): its fields as they stand
    when each holds exactly its declared type (a ``str``, ``int``, ``bool`` or, where the
    field allows it, None), as nearly always. The JSON dump of such a value is the value
    itself, and the dump writes the fields in ``__dict__``'s order: the same dict,
    without the serialiser's pass over every field. Anything else is dumped (a dict, as
    a customer's metadata or a payment's next action; a str subclass; a bool written to
    an int field, which the dump would turn into 1)."""
    record = dict(entity.__dict__)
    del record["applied"]
    kinds = tuple(map(type, record.values()))
    if not (kinds in _PLAIN_KINDS.get(type(entity), ()) or _learn_plain(entity, record, kinds)):
        record = entity.model_dump(mode="json", exclude=_APPLIED)
    for name in _written_when_set(type(entity)):
        if record.get(name, True) is None:
            # Written only when known: a worker of a version before 2026-12-05, in a
            # rolling upgrade, refuses a record with a field it does not know (later ones
            # ignore it: README "docker-compose and Helm").
            del record[name]
    return record


# Fields added since records were first written (a payment's provider_charge_id, a
# refund's or a dispute's reason, a dispute's evidence_due_by), left out while None.
_WRITTEN_WHEN_SET = (
    "provider_charge_id",
    "reason",
    "evidence_due_by",
    # (tax: a payment's, an invoice's, a subscription's rates)
    "amount_tax",
    "tax_calculation_id",
    # (a destination charge's)
    "connected_account_id",
    "application_fee_amount",
    # (a destination charge's refund options)
    "reverse_transfer",
    "refund_application_fee",
    # (a payment some transfers took from)
    "amount_transferred",
    "subtotal",
    "tax",
    "total",
    "tax_rate_ids",
    # (a one-off invoice's, left out of a subscription's invoices while None)
    "line_items",
    "collection_method",
    "days_until_due",
    "due_date",
    # (a subscription's invoice with a price change's proration lines)
    "proration_lines",
    # (a subscription's proration lines still pending)
    "pending_proration_net",
    # (a paused subscription's resume time)
    "pause_resumes_at",
)


# Entity model → those of _WRITTEN_WHEN_SET it has (a payment's three, a refund's one:
# the others never looked up per record stored).
_WRITTEN_WHEN_SET_OF: dict[type[EntityRecord], tuple[str, ...]] = {}


def _written_when_set(model: type[EntityRecord]) -> tuple[str, ...]:
    names = _WRITTEN_WHEN_SET_OF.get(model)
    if names is None:
        names = tuple(n for n in _WRITTEN_WHEN_SET if n in model.model_fields)
        _WRITTEN_WHEN_SET_OF[model] = names
    return names


# Entity model → the tuples of its fields' value types (``applied`` left out, in field
# order) found to be exactly the declared scalar types: a few per model (which optional
# fields are None), learnt once each.
_PLAIN_KINDS: dict[type[EntityRecord], set[tuple[type, ...]]] = {}
_PLAIN_KINDS_MAX = 256  # per model (2 ** its optional fields at most; bounded anyway)
_SCALARS = frozenset({str, int, bool, type(None)})


def _plain_types(annotation: Any) -> frozenset[type]:
    """The value types a field so declared dumps as they are: its scalar types (None
    too for an optional one; nothing else, a dict's included)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return frozenset().union(*map(_plain_types, typing.get_args(annotation)))
    return frozenset({annotation}) & _SCALARS


def _learn_plain(entity: EntityRecord, record: dict[str, Any], kinds: tuple[type, ...]) -> bool:
    """Are ``kinds`` (the types of ``record``'s values) exactly the declared scalar types
    of ``entity``'s fields, field by field? Remembered when they are."""
    model = type(entity)
    fields = [(name, info) for name, info in model.model_fields.items() if name != "applied"]
    if [name for name, _ in fields] != list(record):
        return False
    for (_, info), kind in zip(fields, kinds, strict=True):
        if kind not in _plain_types(info.annotation):
            return False
    known = _PLAIN_KINDS.setdefault(model, set())
    if len(known) < _PLAIN_KINDS_MAX:
        known.add(kinds)
    return True


def _tenant_key_only(key: bytes | None, tenants: Mapping[str, Any]) -> bytes | None:
    """The record key of a dead letter kept without its bytes: kept only where it is a
    registered tenant's id holding no card data, so that `dlq list --tenant` finds the
    letter (review h70e: it showed as `tenant=?`); anything else may be part of what was
    not kept: a key shaped as a tenant id may still be a card number's first 15 digits
    (Luhn gives the last) or the security code the value held (review h70g)."""
    if key is None or len(key) > 63:
        return None
    try:
        text = key.decode("ascii")
    except UnicodeDecodeError:
        return None
    if _TENANT_ID.fullmatch(text) is None or safe_tenant(text) != text:
        return None
    return key if text in tenants else None


def _refused_while_others_hold(decision: Admission | LimitRejection | None) -> bool:
    """A first refusal by what payments not yet answered hold (the daily volume, or too
    many of them): one they may release once answered."""
    return (
        isinstance(decision, LimitRejection)
        and not decision.replay
        and decision.extra.get("limit") in HOLDING_LIMITS
    )


def _pay_requests(invoice: Mapping[str, Any]) -> tuple[str, ...]:
    """The request hashes of an invoice.pay of this one-off invoice (its outcome's
    object) naming no payment method or the invoice's own: what a hold placed before
    holds named their invoice is found by (limits._without_invoice_holds)."""
    iid = invoice.get("id")
    if not isinstance(iid, str) or invoice.get("subscription_id") is not None:
        return ()
    methods = {None, invoice.get("payment_method_id")}
    return tuple(
        _request_hash("invoice.pay", {"invoice_id": iid, "payment_method_id": m})
        for m in methods
        if m is None or isinstance(m, str)
    )


def _hold_key(cmd: CommandRef, data: Any, idem_table_key: str, entity_keys: bool) -> str:
    """What a payment's (or a subscription's first charge's) daily-volume hold is kept
    under: the same scope as its provider key, so a parked create sent again under a new
    command id is not held twice."""
    chosen_field = _CREATED_ENTITY.get(cmd.command_type, (None, None))[0]
    chosen = getattr(data, chosen_field, None) if chosen_field is not None else None
    if entity_keys and chosen_field is not None and chosen:
        # Idempotency table keys start with the tenant id, which starts with [a-z0-9]:
        # "@" keeps a client's idempotency key "payment:p1" from naming this hold.
        return f"@{chosen_field.removesuffix('_id')}:{chosen}"
    return idem_table_key


# The creates the limits admit as payments (or hold against a daily transfer or payout
# volume):
# the field naming the entity a producer may choose, and the table it lands in (its
# provider key is then the entity's: held once whatever key sends it, and one sent again
# once it exists answered by its handler, not refused a quota; review h80r F2).
_CREATED_ENTITY = {
    "payment.create": ("payment_id", "payments"),
    "subscription.create": ("subscription_id", "subscriptions"),
    "transfer.create": ("transfer_id", "transfers"),
    "payout.create": ("payout_id", "payouts"),
}


# The commands a provider's webhook brings (web/webhooks.py), sealed as paystream's own.
_WEBHOOK_REFRESHES = frozenset(
    {
        "payment.refresh",
        "refund.refresh",
        "subscription.refresh",
        "payout.refresh",
        "connected_account.refresh",
        "transfer.refresh",
        "invoice.refresh",
    }
)


def _validated_data(rec: Inbound, command_type: str) -> Any:
    """``rec``'s command data, validated as ``command_type``'s, or None if it is not
    (for the rare paths that have only the record)."""
    try:
        event = decode_record(rec.key, rec.value, rec.headers)
        return COMMANDS[command_type].model_validate(event.get_data() or {})
    except Exception:
        return None


def _former_hold_key(cmd: CommandRef, data: Any, entity_keys: bool) -> str | None:
    """What the previous version held a chosen payment id under (before the "@" space):
    a payment it parked is still held so, until re-driven."""
    payment_id = getattr(data, "payment_id", None)
    if entity_keys and cmd.command_type == "payment.create" and payment_id:
        return f"{cmd.tenant_id}:payment:{payment_id}"
    return None


def _name_its_customer(in_flight: dict[str, Any], cmd: CommandRef, data: Any) -> None:
    """Name a customer command's in-flight record by its customer: parked from this record
    by a bug of ours (_repark keeps it), its hash of their data meets their erasure as
    _park's does (review h68ad). Not the erasure's own: its scrub, before its _finish,
    found it and erased the hash of its command id's pointer, which then held the id no
    more; its hash is of the customer's id alone (review h68af)."""
    about = getattr(data, "customer_id", None)
    if (
        isinstance(about, str)
        and cmd.command_type.startswith("customer.")
        and cmd.command_type != "customer.erase"
    ):
        in_flight["customer_id"] = about


def _idempotency_dict(
    cmd: CommandRef,
    request_hash: str,
    state: IdempotencyState,
    expires: float,
    outcome: StoredOutcome | None = None,
    *,
    entity_keys: bool = True,
    digest_keys_apart: bool = True,
    counted: bool | None = None,
    gateway: str | None = None,
    first_attempt: int | None = None,
) -> dict[str, Any]:
    """An IdempotencyRecord in its stored (JSON) shape, built without a model round trip:
    this runs two or three times per command on the hot path."""
    record = {
        "entity_keys": entity_keys,
        "command_id": cmd.command_id,
        "command_type": cmd.command_type,
        "request_hash": request_hash,
        "state": state._value_,  # (its value: ``.value`` is a Python-level property)
        "expires_at": expires,
        "outcome": None if outcome is None else {"type": outcome.type, "data": outcome.data},
        "source": None if cmd.source is None else list(cmd.source),
        # for a replay of the outcome (only a finished record's is ever replayed)
        "time": None if outcome is None else time_text(cmd.time),
        # (the outcome's: the command span's, see outcome_traceparent)
        "traceparent": None if outcome is None else outcome_traceparent(cmd),
        "id_salt": None if outcome is None else cmd.id_salt,
    }
    if outcome is not None and cmd.tracestate and cmd.traceparent:
        record["tracestate"] = cmd.tracestate  # (only when there is one: records stay small)
    if digest_keys_apart and digest_shaped(cmd.idempotency_key):
        record["digest_keys_apart"] = True  # (only such keys: records stay small)
    if counted is not None:
        record["counted"] = counted
    if gateway is not None:
        record["gateway"] = gateway
    if first_attempt is not None and state is not IdempotencyState.DONE:
        record["first_attempt_ms"] = first_attempt
    return record


def _as_first_emitted(cmd: CommandRef, done: AlreadyApplied) -> CommandRef:
    """``cmd`` as its outcome was first emitted, by its entity's record of it: the ids
    (salt), and the time and trace context."""
    cmd = replace(cmd, id_salt=done.id_salt)
    if done.emitted is None:
        return cmd
    return replace(
        cmd,
        time=datetime.fromisoformat(str(done.emitted["time"])),
        traceparent=done.emitted.get("traceparent"),
        tracestate=done.emitted.get("tracestate"),
        traceparent_is_outcomes=True,
    )


def _emission(cmd: CommandRef, at: float) -> dict[str, Any]:
    """What an entity keeps of how a command's outcome was emitted (applied_entry): when,
    its time and trace context, as the idempotency record keeps them, and the command's
    type (a read is told from a change: handlers._changed_since_first_attempt)."""
    emitted: dict[str, Any] = {"at": at, "time": time_text(cmd.time)}
    if cmd.traceparent:
        emitted["traceparent"] = outcome_traceparent(cmd)
        if cmd.tracestate:
            emitted["tracestate"] = cmd.tracestate
    emitted["cmd"] = cmd.command_type
    return emitted


def gateway_account(tenant: Tenant) -> str:
    """The provider account a tenant's calls reach: its provider and connected account.
    Idempotency keys live per account (Stripe's per account, the simulator's in its
    store), so a request re-sent to another account is a new request there. (A rotated
    key of the same account is the same account; one of another account cannot be told
    without asking the provider.)"""
    return f"{tenant.gateway}/{tenant.connected_account or ''}"


def _post_images(outcome: StoredOutcome) -> list[tuple[str, dict[str, Any]]]:
    """(entity type, published snapshot) of every entity an outcome says was written."""
    data = outcome.data
    images: list[tuple[str, dict[str, Any]]] = []
    if data.get("entity_type") and isinstance(data.get("object"), dict):
        images.append((str(data["entity_type"]), data["object"]))
    for related in data.get("related") or []:
        if isinstance(related, dict) and isinstance(related.get("object"), dict):
            images.append((str(related["entity_type"]), related["object"]))
    return images


# Control characters refused in a command id or idempotency key (C0 and DEL).
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# (A tenant id holding anything no CloudEvents string may, C1 or a noncharacter too, is
# answered under no tenant's name: outcomes.NOT_CE_STRING.)

# Largest dead letter kept with its bytes: under Kafka's default 1 MB message size with
# our headers beside them.
DEAD_LETTER_KEEP_MAX_BYTES = 768 * 1024
# Largest park produced (and re-drive over the attribute limit that runs): under the
# broker's default message size (1,048,588 bytes) with room for the batch's own bytes. Not
# the dead letters' 768 KiB: a legitimate structured command written again as ASCII (a
# lone surrogate in its data, card-like trace context dropped) reached 786,132 bytes.
PARK_MAX_BYTES = 960 * 1024


def _without_security_code(cmd: CommandRef) -> CommandRef:
    """The command as its rejection for a card security code may name it: without its
    trace state (members are key=value pairs: ``cvc=737``) or a traceparent that is not
    trace context, and with an id, tenant or type whose text holds the code replaced (a
    digest, as an over-long id is; a tenant no tenant id can be)."""

    return replace(
        cmd,
        tenant_id=safe_tenant(cmd.tenant_id),
        command_id=_id_digest(safe_id(cmd.command_id)),
        command_type=safe_type(cmd.command_type),
        idempotency_key="",
        traceparent=cmd.traceparent if parse_traceparent(cmd.traceparent) else None,
        tracestate=None,
    )


def _redacted_ref(rec: Inbound, event: CloudEvent, when: datetime) -> CommandRef:
    """The command, as far as a rejection may name it when it held a card number."""
    tenant = str(event.get_extension("tenantid") or "") or key_str(rec.key)
    return CommandRef(
        tenant_id=safe_tenant(tenant),
        command_id=_id_digest(safe_id(str(event.get_id()))),
        command_type=safe_type(str(event.get_type()).removeprefix(COMMAND_PREFIX)),
        idempotency_key="",
        time=when,
    )


def _conflict_message(cmd: CommandRef, existing: IdempotencyRecord) -> str:
    """Why the key's record refuses this command: another request, or one about a
    customer erased since, whose data nothing can compare any more (only its own
    command id is answered again)."""
    if existing.request_hash == ERASED_HASH and existing.command_type == cmd.command_type:
        return (
            f"idempotency key {cmd.idempotency_key!r} was used by command "
            f"{existing.command_id!r}, about a customer erased since: its request cannot be "
            "compared with this one; send it again under that command id, or under a new key"
        )
    if cmd.idempotency_key == cmd.command_id:
        # No idempotencykey given: the key is the command id, which the sender did give
        # (review h77o F4: an "idempotency key" the sender never named).
        return (
            f"command id {cmd.command_id!r} was already used for a different request: "
            "send this one under a new id"
        )
    return f"idempotency key {cmd.idempotency_key!r} was used for a different request"


def _nameable(cmd: CommandRef) -> CommandRef:
    """The command as a rejection may name it in its headers, which no CloudEvents string
    with a control character may be: a tenant id holding one is no tenant's (answered
    under none), an id holding one it never took (C0, DEL) goes by its digest. Every
    rule refusing a command before its tenant and id are checked answers through here
    (a tenant mismatch, an unknown type, a dead letter; review finding)."""
    tenant_bad = NOT_CE_STRING.search(cmd.tenant_id) is not None
    id_bad = _CONTROL.search(cmd.command_id) is not None
    if not (tenant_bad or id_bad):
        return cmd
    return replace(
        cmd,
        tenant_id=UNNAMED_TENANT if tenant_bad else cmd.tenant_id,
        command_id=digest(cmd.command_id) if id_bad else cmd.command_id,
    )


def _id_digest(command_id: str) -> str:
    """A command id as outcomes may carry it: as it is, or hashed when too long."""
    return command_id if len(command_id) <= ID_MAX_CHARS else digest(command_id)


def _with_header(emit: Emit, name: str, value: bytes) -> Emit:
    """The record with one more transport header (not a CloudEvents attribute: the event
    stays the one stored and first emitted). ANSWERS_HEADER names the command a replayed
    outcome now answers (its causation id names the command that first used the key);
    REQUEST_HEADER echoes the sender's, so that two senders of one command id each tell
    their own outcome."""
    headers = tuple(sorted((*emit.record.headers, (name, value))))
    return replace(emit, record=replace(emit.record, headers=headers))

"""Pointers among idempotency records: a command id to the key its request was let
through or answered under, and a create of a chosen id to the key that made it.

A retry may come under a new key (its command id the same) or a new id (its key the
same); a create of a chosen entity id under neither. These pointers find the one
request they all are, so that it is answered, parked or refused as one.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from pydantic import ValidationError

from paystream.agents.idempotency_keeping import (
    LET_THROUGH,
    LET_THROUGH_VALUES,
    IdempotencyKeeping,
    request_hash,
)
from paystream.streams.commands import COMMANDS
from paystream.streams.outcomes import CommandRef
from paystream.tables.commands_view import command_id_key as _command_id_key
from paystream.tables.records import IdempotencyRecord
from paystream.tenancy.limits import UNREAD


class KeyPointers(IdempotencyKeeping):
    """Finds and writes the pointers; the pipeline builds on it."""

    def _under_its_first_key(self, cmd: CommandRef, raw: Any) -> CommandRef:
        """``cmd`` under the key its id was let through or answered under, if another
        than its own (see _same_command_keyed); else ``cmd``. For nearly every command
        one or two table reads and no validation: the id's pointer, and the record under
        the id when the command has a key of its own."""
        named = self.idempotency.get(_command_id_key(cmd.tenant_id, cmd.command_id))
        if not self._first_keys(cmd, named):
            return cmd  # no other key names the id
        now = time.time()
        if self._idempotency_record(f"{cmd.tenant_id}:{cmd.idempotency_key}", now) is not None:
            return cmd  # its key has a record of its own: the rules of the key apply
        try:
            data = COMMANDS[cmd.command_type].model_validate(raw or {})
        except ValidationError:
            return cmd  # refused as it stands
        same = self._same_command_keyed(cmd, request_hash(cmd.command_type, data), now, named)
        return cmd if same is None else same[0]

    def _pointer_holds(self, cmd: CommandRef, named: dict[str, Any], now: float) -> bool:
        """Does the id's pointer still claim the id? Kept as long as a parked record it
        names, it outlives the request once a retry under that key finished it: then it
        holds the id only while the key's record does (review finding: a reused id was
        refused for 540 days)."""
        key = named.get("key")
        if not isinstance(key, str):
            return True  # (written before pointers named keys: its own expiry decides)
        record = self._idempotency_record(f"{cmd.tenant_id}:{key}", now)
        # (The key's record of that request: the key reused since for another request,
        # the pointer bound again and refused the id for as long; review finding.)
        return record is not None and record.request_hash == named.get("request_hash")

    def _first_keys(self, cmd: CommandRef, named: Any) -> list[str]:
        """Other keys the command's id may have run under, each holding a record: its id
        (sent first without a key), and the key its id's pointer names (sent first with
        one; a pointer written before pointers named keys names none)."""
        keys = []
        if cmd.idempotency_key != cmd.command_id and (
            self.idempotency.get(f"{cmd.tenant_id}:{cmd.command_id}") is not None
        ):
            keys.append(cmd.command_id)
        named_key = self._named_key(cmd, named)
        if (
            named_key is not None
            and named_key not in (cmd.idempotency_key, *keys)
            and self.idempotency.get(f"{cmd.tenant_id}:{named_key}") is not None
        ):
            keys.append(named_key)
        return keys

    def _named_key(self, cmd: CommandRef, named: Any) -> str | None:
        """The key the id's pointer names; for a pointer written before pointers named
        keys, the key of the parked record the start-up scan found for the id."""
        if named is None:
            return None
        key = named.get("key")
        if isinstance(key, str):
            return key
        # (Scanned now if not yet: the first batch after a start or a rebalance comes
        # before the first purge, which would scan; review finding.)
        self._seed_expiry_once(cmd.tenant_id)
        parked = self._parked_ids.get(_command_id_key(cmd.tenant_id, cmd.command_id))
        return None if parked is None else parked.split(":", 1)[1]

    def _pointer_live(self, cmd: CommandRef, named: dict[str, Any], now: float) -> bool:
        """Within its window, or one written before pointers lasted whose request is
        still parked: the purge keeps that one (_kept_for_its_parked_record), and until
        it has, another request under the id ran while the first was parked (review
        finding)."""
        if float(named.get("expires_at", 0)) >= self._expiry_now(now):
            return True
        if isinstance(named.get("key"), str):
            return False  # kept as long as its park by _keep_id_pointer
        self._seed_expiry_once(cmd.tenant_id)
        key = _command_id_key(cmd.tenant_id, cmd.command_id)
        return self._parked_record_until(key, named) is not None

    def _same_command_keyed(
        self, cmd: CommandRef, request_hash: str, now: float, named: Any = UNREAD
    ) -> tuple[CommandRef, IdempotencyRecord] | None:
        """The command under the key its id was let through or answered under, if that
        is another key than its own and the same request; else None (see _first_keys).
        Under the key its pointer names, the key's record may name a retry under that
        key (a new command id) that finished the request: the same request all the same
        (review finding: the command, sent under a third key, charged again)."""
        if named is UNREAD:
            named = self.idempotency.get(_command_id_key(cmd.tenant_id, cmd.command_id))
        named_key = self._named_key(cmd, named)
        pointed = (
            named is not None
            and self._pointer_live(cmd, named, now)
            and named.get("command_id") == cmd.command_id
            and named.get("command_type") == cmd.command_type
            and named.get("request_hash") == request_hash
        )
        for key in self._first_keys(cmd, named):
            found = self._idempotency_record(f"{cmd.tenant_id}:{key}", now)
            if (
                found is not None
                and (found.command_id == cmd.command_id or (key == named_key and pointed))
                and found.command_type == cmd.command_type
                # (Not one whose customer was erased since: its hash is gone, and another
                # request under the id could not be told from it; refused as a conflict.)
                and found.request_hash == request_hash
                and (found.state in LET_THROUGH or found.outcome is not None)
            ):
                return replace(cmd, idempotency_key=key), found
        return None

    def _command_id_taken(
        self, cmd: CommandRef, request_hash: str, now: float, named: Any = UNREAD
    ) -> bool:
        """Did another request of the tenant run under this command id (within the
        idempotency window)? Found under the id itself (a command whose key was its id)
        or in the record of which request an id names (one sent with its own key;
        ``named``: that record, if read already)."""
        if named is UNREAD:
            named = self.idempotency.get(_command_id_key(cmd.tenant_id, cmd.command_id))
        this = (request_hash, cmd.command_type)
        if (
            named is not None
            and (named.get("request_hash"), named.get("command_type")) != this
            and self._pointer_live(cmd, named, now)
            and self._pointer_holds(cmd, named, now)
        ):
            return True
        if cmd.idempotency_key == cmd.command_id:
            return False  # its own record, looked up already, is under the id
        other = self._idempotency_record(f"{cmd.tenant_id}:{cmd.command_id}", now)
        return (
            other is not None
            and other.command_id == cmd.command_id
            and (other.request_hash, other.command_type) != this
        )

    def _id_unclaimed(self, cmd: CommandRef, now: float) -> bool:
        named = self.idempotency.get(_command_id_key(cmd.tenant_id, cmd.command_id))
        return named is None or not self._pointer_live(cmd, named, now)

    def _point_id(self, cmd: CommandRef, request_hash: str, expires: float) -> None:
        """Say which request (its key) the command's id names, under its own key: the
        same command sent again under another key is then known as the one it is."""
        self._remember(
            _command_id_key(cmd.tenant_id, cmd.command_id),
            {
                "command_id": cmd.command_id,
                "command_type": cmd.command_type,
                "request_hash": request_hash,
                "key": cmd.idempotency_key,
                "expires_at": expires,
            },
        )

    def _keep_id_pointer(self, cmd: CommandRef, until: float) -> None:
        """Keep the record of which key the id names for as long as the parked record
        it names: expiring after the idempotency window, it let the command, sent again
        under another key, run as new, a second charge (review finding)."""
        if cmd.idempotency_key == cmd.command_id:
            return  # the id is the key: its record is the pointer
        pointer_key = _command_id_key(cmd.tenant_id, cmd.command_id)
        pointer = self.idempotency.get(pointer_key)
        if (
            pointer is not None
            and pointer.get("key") in (cmd.idempotency_key, None)
            and float(pointer.get("expires_at", 0)) < until
        ):
            # (Naming its key: one written before pointers did names none.)
            kept = {**pointer, "key": cmd.idempotency_key, "expires_at": until}
            self._remember(pointer_key, kept)

    def _point_create_scope(
        self, scope: str | None, idem_key: str, first: int, expires: float
    ) -> None:
        """Name the parked create ``idem_key`` under its chosen id's ``scope``: its
        provider key is the id's and outlives this record's key, so a create of the id
        under another key is checked against it while it stays parked
        (_create_past_provider_window). A pointer to another create of the id, still
        let through and first attempted earlier, is kept: the id's oldest attempt is
        the one the provider may forget first. (The first attempt is the named
        record's: not copied.)"""
        if scope is None:
            return
        pointer = self.idempotency.get(scope)
        if pointer is not None and pointer.get("key") != idem_key:
            other = self.idempotency.get(str(pointer.get("key")))
            earlier = other is not None and other.get("state") in LET_THROUGH_VALUES
            other_first = other.get("first_attempt_ms") if other is not None else None
            if earlier and isinstance(other_first, int) and other_first <= first:
                return
        self._remember(scope, {"key": idem_key, "expires_at": expires})

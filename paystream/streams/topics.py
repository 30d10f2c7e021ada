"""Faust topic objects for the worker (records are raw bytes: the codec does CloudEvents)."""

from __future__ import annotations

from paystream.app import app, settings

__all__ = ["commands_topic", "events_topic"]

# acks=False: Faust neither acknowledges nor commits this topic; the command agent
# commits offsets itself once a batch's outcomes and state are durable. Faust acknowledges
# records it skips while flow control is suspended (shutdown, rebalance) and would then
# commit past commands that never got an outcome (agents/commands.py).
commands_topic = app.topic(
    settings.commands_topic,
    key_type=bytes,
    value_type=bytes,
    key_serializer="raw",
    value_serializer="raw",
    partitions=settings.partitions,
    acks=False,
)
# acks=False too: the ledger sink commits its own offsets once a batch is in the ledger.
events_topic = app.topic(
    settings.events_topic,
    key_type=bytes,
    value_type=bytes,
    key_serializer="raw",
    value_serializer="raw",
    partitions=settings.partitions,
    acks=False,
)

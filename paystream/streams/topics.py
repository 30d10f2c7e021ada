"""Faust topic objects for the worker (records are raw bytes: the codec does CloudEvents)."""

from __future__ import annotations

from paystream.app import app, settings

__all__ = ["commands_topic", "events_topic"]

commands_topic = app.topic(
    settings.commands_topic,
    key_type=bytes,
    value_type=bytes,
    key_serializer="raw",
    value_serializer="raw",
    partitions=settings.partitions,
)
events_topic = app.topic(
    settings.events_topic,
    key_type=bytes,
    value_type=bytes,
    key_serializer="raw",
    value_serializer="raw",
    partitions=settings.partitions,
)

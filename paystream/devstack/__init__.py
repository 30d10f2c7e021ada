"""Development services (Tansu broker, PostgreSQL, Redis) on free loopback ports.

``DevStack`` starts whichever of them the settings do not point at; the per-service
modules can also be used alone.
"""

from __future__ import annotations

from paystream.devstack._process import ServiceError
from paystream.devstack.kafka import TansuBroker, broker_answers
from paystream.devstack.postgres import EmbeddedPostgres
from paystream.devstack.redis import EmbeddedRedis, redis_answers
from paystream.devstack.stack import DevStack, StartupTimes, wipe_table_state

__all__ = [
    "DevStack",
    "EmbeddedPostgres",
    "EmbeddedRedis",
    "ServiceError",
    "StartupTimes",
    "TansuBroker",
    "broker_answers",
    "redis_answers",
    "wipe_table_state",
]

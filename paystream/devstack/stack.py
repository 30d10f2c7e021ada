"""``DevStack``: broker, database and cache for development and tests, started on demand.

A service whose URL is configured (``KAFKA_BROKER_URL``, ``DATABASE_URL``, ``REDIS_URL``)
is used as is; only the missing ones are started, each on a free loopback port. The
stack always cleans up after itself: ``stop()`` runs on context exit, on a failed start
and at interpreter exit, and each server runs in its own process group.
"""

from __future__ import annotations

import atexit
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from paystream.devstack.kafka import TansuBroker
from paystream.devstack.postgres import EmbeddedPostgres
from paystream.devstack.redis import EmbeddedRedis
from paystream.settings import BrokerFlavor, Settings

__all__ = ["DevStack", "StartupTimes", "wipe_table_state"]

log = logging.getLogger(__name__)


def wipe_table_state(data_dir: Path) -> bool:
    """Delete Faust's local table state under ``data_dir``; True if something was removed.

    Tansu keeps data in memory only, so a fresh broker has empty changelogs while
    RocksDB stores on disk still remember offsets from the old one: Faust then crashes
    (persisted offset > highwater) or serves stale rows. The app keeps its Faust
    ``datadir`` at ``data_dir / "faust" / app_id`` (see ``paystream/app.py``), so the whole
    ``faust`` folder goes; the embedded servers' own folders are left alone.
    """
    target = data_dir / "faust"
    if not target.exists():
        return False
    shutil.rmtree(target)
    return True


@dataclass
class StartupTimes:
    """Seconds each started service took to become healthy (None: not started by us)."""

    kafka: float | None = None
    postgres: float | None = None
    redis: float | None = None


class DevStack:
    """Start what ``settings`` does not point at; expose URLs and a child-process env."""

    def __init__(self, base_dir: Path, settings: Settings) -> None:
        self.base_dir = base_dir
        self.settings = settings
        self.broker: TansuBroker | None = None
        self.postgres: EmbeddedPostgres | None = None
        self.redis: EmbeddedRedis | None = None
        self.times = StartupTimes()
        self._started = False

    # --- lifecycle ---------------------------------------------------------------------

    def start(self) -> DevStack:
        """Start the missing services; on any failure stop what was started and re-raise."""
        if self._started:
            return self
        self._started = True
        # Registered before the first process exists, so an exit at any point cleans up.
        atexit.register(self.stop)
        self.base_dir.mkdir(parents=True, exist_ok=True)
        try:
            if self.settings.kafka_broker_url is None:
                broker = TansuBroker(self.base_dir / "tansu.log")
                self.broker = broker
                broker.start()
                self.times.kafka = broker.startup_seconds
                # A fresh in-memory broker means every changelog is empty: local table
                # state from an earlier broker would be stale or crash RocksDB recovery.
                if wipe_table_state(self.settings.data_dir):
                    log.info("wiped stale Faust table state under %s", self.settings.data_dir)
            if self.settings.redis_url is None:
                cache = EmbeddedRedis(self.base_dir / "redis")
                self.redis = cache
                cache.start()
                self.times.redis = cache.startup_seconds
            if self.settings.database_url is None:
                database = EmbeddedPostgres(self.base_dir / "postgres")
                self.postgres = database
                database.start()
                self.times.postgres = database.startup_seconds
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every service this stack started; idempotent, never raises for cleanup."""
        for name in ("broker", "redis", "postgres"):
            service = getattr(self, name)
            if service is None:
                continue
            try:
                service.stop()
            except Exception:  # keep going: the other servers must still be stopped
                log.exception("stopping embedded %s failed", name)
        if self._started:
            self._started = False
            atexit.unregister(self.stop)

    def __enter__(self) -> DevStack:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # --- what clients need -----------------------------------------------------------

    @property
    def kafka_url(self) -> str:
        if self.broker is not None:
            return self.broker.url
        return self._configured("kafka_broker_url")

    @property
    def database_url(self) -> str:
        if self.postgres is not None:
            return self.postgres.url
        return self._configured("database_url")

    @property
    def redis_url(self) -> str:
        if self.redis is not None:
            return self.redis.url
        return self._configured("redis_url")

    @property
    def flavor(self) -> BrokerFlavor:
        """``tansu`` when we started the broker; otherwise what settings say."""
        return BrokerFlavor.TANSU if self.broker is not None else self.settings.broker_flavor

    def _configured(self, name: str) -> str:
        value = getattr(self.settings, name)
        if value is None:
            raise RuntimeError(f"DevStack not started: no {name} yet")
        return str(value)

    def env(self) -> dict[str, str]:
        """Environment for child worker processes so they use exactly these servers."""
        return {
            "KAFKA_BROKER_URL": self.kafka_url,
            "DATABASE_URL": self.database_url,
            "REDIS_URL": self.redis_url,
            "PAYSTREAM_BROKER_FLAVOR": self.flavor.value,
        }

    def stack_settings(self) -> Settings:
        """``settings`` with this stack's URLs and broker flavor filled in."""
        return self.settings.model_copy(
            update={
                "kafka_broker_url": self.kafka_url,
                "database_url": self.database_url,
                "redis_url": self.redis_url,
                "broker_flavor": self.flavor,
            }
        )

    def died(self) -> str | None:
        """Which embedded server has exited, and where its log is (None: all running)."""
        for name, service in (("broker", self.broker), ("redis", self.redis),
                              ("postgresql", self.postgres)):  # fmt: skip
            why = service._died() if service is not None else None
            if why is not None:
                return f"embedded {name} {why}"
        return None

    def pids(self) -> list[int]:
        """Process ids of the servers this stack runs (for leak checks)."""
        return [
            pid
            for service in (self.broker, self.redis, self.postgres)
            if service is not None and (pid := service.pid) is not None
        ]

    def describe(self) -> str:
        """One line per service: URL and startup time, for ``paystream dev`` output."""
        rows = [
            ("kafka", self.kafka_url, self.times.kafka),
            ("postgres", self.database_url, self.times.postgres),
            ("redis", self.redis_url, self.times.redis),
        ]
        lines = [
            f"{name:<9}{url}  "
            + (f"(started in {secs:.2f} s)" if secs is not None else "(configured)")
            for name, url, secs in rows
        ]
        return "\n".join(lines)

"""DevStack: services start, answer on TCP, and leave no process behind."""

from __future__ import annotations

import time
from pathlib import Path

import asyncpg
import psutil
import pytest
from sqlalchemy.engine import make_url

from paystream.devstack import DevStack, broker_answers, redis_answers, wipe_table_state
from paystream.settings import Settings, load_settings
from tests.fixtures.services import devstack_dir


def _gone(pids: list[int], deadline_s: float = 10.0) -> list[int]:
    """Pids still alive (zombies count as gone) once the deadline passes."""
    deadline = time.monotonic() + deadline_s
    while True:
        alive = [
            pid
            for pid in pids
            if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        ]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.05)


def _processes_under(path: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if str(path) in cmdline and proc.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(proc)
    return found


def _configured(stack: DevStack, base: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "kafka_broker_url": stack.kafka_url,
        "database_url": stack.database_url,
        "redis_url": stack.redis_url,
        "data_dir": base / "var",
    }
    values.update(overrides)
    return load_settings(**values)


async def test_session_stack_answers(stack: DevStack) -> None:
    assert broker_answers(stack.kafka_url)
    assert redis_answers(stack.redis_url)
    dsn = make_url(stack.database_url).set(drivername="postgresql")
    conn = await asyncpg.connect(dsn.render_as_string(hide_password=False))
    try:
        assert await conn.fetchval("select 1") == 1
        assert await conn.fetchval("select current_database()") == "paystream"
    finally:
        await conn.close()


def test_env_for_workers(stack: DevStack, monkeypatch: pytest.MonkeyPatch) -> None:
    env = stack.env()
    assert env["KAFKA_BROKER_URL"] == stack.kafka_url
    assert env["DATABASE_URL"].startswith("postgresql+asyncpg://")
    assert env["REDIS_URL"].startswith("redis://")
    expected = "tansu" if stack.broker is not None else stack.settings.broker_flavor.value
    assert env["PAYSTREAM_BROKER_FLAVOR"] == expected
    # A worker started with this env reads exactly these servers back.
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    child = load_settings()
    assert child.kafka_broker_url == stack.kafka_url
    assert child.database_url == stack.database_url
    assert child.redis_url == stack.redis_url
    assert child.broker_flavor.value == env["PAYSTREAM_BROKER_FLAVOR"]


def test_full_stack_starts_and_stops_without_leftovers() -> None:
    with devstack_dir() as base:
        _full_stack_round_trip(base)


def _full_stack_round_trip(tmp_path: Path) -> None:
    settings = load_settings(
        kafka_broker_url=None, database_url=None, redis_url=None, data_dir=tmp_path / "var"
    )
    with DevStack(tmp_path / "stack", settings) as stack:
        pids = stack.pids()
        assert len(pids) == 3
        assert broker_answers(stack.kafka_url)
        assert redis_answers(stack.redis_url)
        assert stack.env()["PAYSTREAM_BROKER_FLAVOR"] == "tansu"
        times = stack.times
        assert times.kafka is not None and times.postgres is not None and times.redis is not None
        children = [c.pid for pid in pids for c in psutil.Process(pid).children(recursive=True)]
    assert _gone(pids + children) == []
    assert _processes_under(tmp_path) == []
    stack.stop()  # idempotent


def test_exception_inside_context_still_stops(tmp_path: Path, stack: DevStack) -> None:
    # Only the broker is started here; database and cache come from the session stack.
    settings = _configured(stack, tmp_path, kafka_broker_url=None)
    pids: list[int] = []
    with pytest.raises(RuntimeError, match="boom"), DevStack(tmp_path, settings) as dev:
        pids = dev.pids()
        raise RuntimeError("boom")
    assert len(pids) == 1
    assert _gone(pids) == []


def test_configured_services_are_not_started(tmp_path: Path, stack: DevStack) -> None:
    settings = _configured(stack, tmp_path)
    with DevStack(tmp_path, settings) as dev:
        assert dev.pids() == []
        assert dev.env() == {
            "KAFKA_BROKER_URL": stack.kafka_url,
            "DATABASE_URL": stack.database_url,
            "REDIS_URL": stack.redis_url,
            "PAYSTREAM_BROKER_FLAVOR": settings.broker_flavor.value,
        }


def test_fresh_broker_wipes_stale_table_state(tmp_path: Path, stack: DevStack) -> None:
    settings = _configured(stack, tmp_path, kafka_broker_url=None)
    stale = settings.data_dir / "faust" / settings.app_id / "v1" / "tables" / "t-0.db"
    stale.mkdir(parents=True)
    keep = settings.data_dir / "other.txt"
    keep.write_text("not faust state")
    with DevStack(tmp_path / "stack", settings):
        assert not (settings.data_dir / "faust").exists()
        assert keep.exists()


def test_wipe_table_state_without_state(tmp_path: Path) -> None:
    assert wipe_table_state(tmp_path) is False
    (tmp_path / "faust").mkdir()
    assert wipe_table_state(tmp_path) is True
    assert not (tmp_path / "faust").exists()


async def test_the_stacks_servers_take_no_login_without_their_password(stack: DevStack) -> None:
    """Review finding: PostgreSQL trusted every local login (its superuser runs shell
    commands: COPY ... TO PROGRAM) and Redis took any client (CONFIG SET dir and SAVE
    write files anywhere): any user of the machine could act as the stack's."""
    import redis

    url = make_url(stack.database_url).set(drivername="postgresql")
    bare_pg = f"postgresql://{url.username}@{url.host}:{url.port}/{url.database}"
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(bare_pg)
    bare = make_url(stack.redis_url)
    client = redis.Redis(host=bare.host or "", port=bare.port or 0)
    try:
        with pytest.raises(redis.AuthenticationError):
            client.ping()
    finally:
        client.close()
    assert redis_answers(stack.redis_url)


@pytest.mark.parametrize(
    ("bound", "reached"),
    [(None, "127.0.0.1"), ("0.0.0.0", "127.0.0.1"), ("::1", "[::1]"), ("10.1.2.3", "10.1.2.3")],
)
def test_a_worker_is_reached_where_it_binds(
    tmp_path: Path, bound: str | None, reached: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from paystream.devstack.worker import WorkerProcess

    monkeypatch.delenv("PAYSTREAM_WEB_HOST", raising=False)
    env = {} if bound is None else {"PAYSTREAM_WEB_HOST": bound}
    assert WorkerProcess(env, tmp_path / "w.log", 6099).base_url == f"http://{reached}:6099"

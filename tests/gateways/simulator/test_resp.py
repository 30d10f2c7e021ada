"""hiredis packing sends exactly the bytes redis-py's own packer would."""

from __future__ import annotations

from typing import Any

import pytest
from redis.asyncio.connection import Connection

from paystream.gateways.simulator.resp import _pack_command, _pack_commands, use_hiredis_packing


@pytest.mark.parametrize(
    "args",
    [
        ("SET", "k", "v"),
        ("EVALSHA", "0123abcd", 2, "sim:{t}:idem:k", b"sim:{t}:effects", "é ü", 86_400, -1),
        ("SCRIPT LOAD", "return 1"),  # literal arguments in the command name
        (b"GET", "x"),
        ("SET", "k", 1.5),  # not native to hiredis: redis-py's encoder
        ("SET", "k", b""),
    ],
)
def test_same_wire_bytes_as_redis_py(args: tuple[Any, ...]) -> None:
    conn = Connection()
    assert b"".join(_pack_command(conn, *args)) == b"".join(conn.pack_command(*args))


def test_a_pipeline_is_packed_into_the_same_wire_bytes() -> None:
    commands = [
        ("EVALSHA", "0123abcd", 1, "k", b"\x00absent", "é" * 5000, 7),
        ("GET", "x"),
        ("SCRIPT LOAD", "return 1"),
        ("SET", "k", b"v" * 7000),  # redis-py writes this one apart (over 6 kB)
        ("SET", "k", 1.5),
    ]
    ours = Connection()
    ours.pack_command = lambda *args: _pack_command(ours, *args)  # type: ignore[method-assign]
    theirs = Connection()
    assert b"".join(_pack_commands(ours, commands)) == b"".join(theirs.pack_commands(commands))


@pytest.mark.parametrize("name", ["", " GET", "GET\t", "SCRIPT\nLOAD"])
def test_command_names_split_as_redis_py_splits_them(name: str) -> None:
    conn = Connection()
    args = (name, "x")
    assert b"".join(_pack_command(conn, *args)) == b"".join(conn.pack_command(*args))


def test_bools_are_still_refused() -> None:
    from redis.exceptions import DataError

    with pytest.raises(DataError):
        _pack_command(Connection(), "SET", "k", True)


async def test_a_client_packing_with_hiredis_talks_to_redis(redis_url: str) -> None:
    import redis.asyncio as aioredis

    client = use_hiredis_packing(aioredis.from_url(redis_url))
    try:
        script = client.register_script("return ARGV[1]")
        pipe = client.pipeline(transaction=False)
        pipe.set("resp-test", 7)
        pipe.get("resp-test")
        assert await pipe.execute() == [True, b"7"]
        assert await script(keys=[], args=["z"]) == b"z"
    finally:
        await client.aclose()

"""hiredis packing sends exactly the bytes redis-py's own packer would."""

from __future__ import annotations

from typing import Any

import pytest
from redis.asyncio.connection import Connection

from paystream.gateways.simulator.resp import _pack_command, use_hiredis_packing


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

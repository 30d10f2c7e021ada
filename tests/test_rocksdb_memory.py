"""RocksDB table partitions get bounded memtables and block cache (rocksdb://).

Faust's own defaults (64 MB memtables, three, and a 2 GB block cache, per partition of
every table) let a worker grow by ~6 KB a command for as long as its idempotency window
lasts (README: docker-compose and Helm, the measurement). Opened for real here.
"""

from __future__ import annotations

from pathlib import Path

from faust.stores.rocksdb import RocksDBOptions

from paystream.settings import load_settings
from paystream.tables import definitions


def test_every_table_is_made_with_the_bounds() -> None:
    mib = 1024 * 1024
    s = load_settings()
    expected = {
        "write_buffer_size": s.rocksdb_write_buffer_mb * mib,
        "max_write_buffer_number": 2,
        "block_cache_size": s.rocksdb_block_cache_mb * mib,
    }
    assert definitions.rocksdb_options() == expected
    tables = [
        definitions.customers, definitions.payment_methods, definitions.payments,
        definitions.refunds, definitions.disputes, definitions.idempotency, definitions.limits,
    ]  # fmt: skip
    for table in tables:
        # (Faust's RocksDB store pops what it reads: whatever is left is ours.)
        assert set(table.options or {}) <= set(expected), table.name
        assert table.options is not definitions.rocksdb_options()


def test_a_partition_store_opens_with_them(tmp_path: Path) -> None:
    opts = RocksDBOptions(**definitions.rocksdb_options(), use_rocksdict=True)
    assert (opts.write_buffer_size, opts.max_write_buffer_number, opts.block_cache_size) == (
        4 * 1024 * 1024,
        2,
        4 * 1024 * 1024,
    )
    db = opts.open(tmp_path / "p0")
    db[b"k"] = b"v"
    assert db[b"k"] == b"v"
    db.close()


def test_a_rocksdb_table_is_sized_by_its_partitions_estimates(tmp_path: Path) -> None:
    """/metrics' paystream_table_keys: RocksDB's own estimate per partition database,
    never a read of every key (a scrape every 15 s of millions of keys)."""
    from types import SimpleNamespace

    from paystream.tables.observed import table_keys

    opts = RocksDBOptions(**definitions.rocksdb_options(), use_rocksdict=True)
    dbs = {p: opts.open(tmp_path / f"p{p}") for p in (0, 3)}
    try:
        for p, n in ((0, 300), (3, 200)):
            for i in range(n):
                dbs[p][b"tenant:%d" % i] = b"{}"
        table = SimpleNamespace(_data=SimpleNamespace(_dbs=dbs))
        assert table_keys(table) == 500
        assert table_keys(SimpleNamespace(_data=SimpleNamespace(data={"a": 1}))) == 1  # memory
        # A store not opened yet is not opened by a scrape (it would bind an event loop).
        assert table_keys(SimpleNamespace(_data=None)) is None
    finally:
        for db in dbs.values():
            db.close()

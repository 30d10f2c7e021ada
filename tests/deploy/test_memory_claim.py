"""The README's partitions-a-worker figure against the chart's memory limit and the
tables' RocksDB bound (review h59n: it said 20, whose tables alone were over the limit)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from paystream.tables.definitions import rocksdb_options
from tests.deploy.tools import CHART

README = Path(__file__).resolve().parents[2] / "README.md"
HEAP_MIB = 256  # at least this left for the Python heap


def test_the_memory_limit_covers_the_table_bound_the_readme_claims() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    limit_mib = int(values["resources"]["limits"]["memory"].removesuffix("Gi")) * 1024
    o = rocksdb_options()
    per_partition_mib = (
        o["write_buffer_size"] * o["max_write_buffer_number"] + o["block_cache_size"]
    ) // (1024 * 1024)
    text = " ".join(README.read_text().split())
    found = re.search(
        r"covers the bound for about (\d+) partitions a worker \(9 tables, at (\d+) MiB a "
        r"table partition; (\d+) with `commands,ledger` only\)",
        text,
    )
    assert found, "the README's memory sentence moved"
    with_insights, per_table, without = map(int, found.groups())
    assert per_table == per_partition_mib
    assert 9 * with_insights * per_partition_mib + HEAP_MIB <= limit_mib
    assert 7 * without * per_partition_mib + HEAP_MIB <= limit_mib

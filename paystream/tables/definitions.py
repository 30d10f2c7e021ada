"""The changelog-backed tables. Changed only by the command agent (Faust's rule).

Keys are ``"{tenant}:{id}"``; values are JSON dicts of the records in records.py.
The changelog partition is that of the command being processed, so all of a tenant's
state lives on the tenant's partition (the agent sets the current event per command).
"""

from __future__ import annotations

from typing import Any

from paystream.app import app, settings
from paystream.streams.admin import changelog_configs
from paystream.tables.changelog import BatchedChangelogTable

__all__ = [
    "batched_table",
    "connected_accounts",
    "customers",
    "disputes",
    "idempotency",
    "invoices",
    "limits",
    "payment_methods",
    "payments",
    "payouts",
    "refunds",
    "subscriptions",
    "tax_calculations",
    "tax_rates",
    "transfers",
]


def batched_table(name: str, help_: str) -> Any:
    """A tenant-partitioned table whose changes an agent produces with its batch.

    Changes made while an agent collects a batch are produced by the agent and awaited
    before the batch is acknowledged (see tables/changelog.py)."""
    return app.tables.add(
        BatchedChangelogTable(
            app,
            name=name,
            default=None,
            key_type=str,
            beacon=app.tables.beacon,
            partitions=settings.partitions,
            help=help_,
            # (A dict of its own: Faust's RocksDB store pops keys from it.)
            options=rocksdb_options(),
            # Its changelog is the table's durable copy: as safe as the topics' writes,
            # its tombstones kept past the age of a store that is caught up.
            extra_topic_configs=changelog_configs(settings),
        )
    )


def rocksdb_options() -> dict[str, Any]:
    """Memory bounds for each table partition's RocksDB (rocksdb://; the memory store
    ignores them). Faust's defaults, 64 MB memtables (three) and a 2 GB block cache per
    partition of every table, let a worker grow by ~6 KB per command for as long as its
    idempotency window lasts: writes sat in memtables that never filled enough to flush."""
    mib = 1024 * 1024
    return {
        "write_buffer_size": settings.rocksdb_write_buffer_mb * mib,
        "max_write_buffer_number": 2,
        "block_cache_size": settings.rocksdb_block_cache_mb * mib,
    }


customers = batched_table("customers", "tenant:customer id → customer record")
payment_methods = batched_table("payment_methods", "tenant:pm id → payment method (token only)")
payments = batched_table("payments", "tenant:payment id → payment record")
refunds = batched_table("refunds", "tenant:refund id → refund record")
disputes = batched_table("disputes", "tenant:dispute id → dispute record")
subscriptions = batched_table("subscriptions", "tenant:subscription id → subscription record")
invoices = batched_table("invoices", "tenant:invoice id → invoice record")
payouts = batched_table("payouts", "tenant:payout id → payout record")
tax_rates = batched_table("tax_rates", "tenant:tax rate id → tax rate record")
tax_calculations = batched_table(
    "tax_calculations", "tenant:tax calculation id → tax calculation record"
)
connected_accounts = batched_table(
    "connected_accounts", "tenant:connected account id → connected account record"
)
transfers = batched_table("transfers", "tenant:transfer id → transfer record")
idempotency = batched_table("idempotency", "tenant:idempotency key → in-flight/done record")
limits = batched_table("limits", "tenant:limits → rate-limit bucket, daily volumes, rejections")

"""Migration 0010 sets only the two audit functions' plan_cache_mode, and its downgrade
leaves every function's settings as 0009 left them (review h63c)."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.pool import NullPool

from paystream.ledger import create_engine
from paystream.ledger.migrate import current, downgrade, upgrade


async def _configs(url: str) -> dict[str, list[str] | None]:
    engine = create_engine(url, poolclass=NullPool)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(
                text(
                    "SELECT proname, proconfig FROM pg_proc "
                    "WHERE pronamespace = 'public'::regnamespace ORDER BY proname"
                )
            )
            return {r[0]: r[1] for r in rows}
    finally:
        await engine.dispose()


async def test_0010_sets_the_audit_functions_only_and_its_downgrade_undoes_it(
    module_database_url: str,
) -> None:
    await upgrade(module_database_url, "0009")
    at_0009 = await _configs(module_database_url)
    await upgrade(module_database_url, "0010")
    at_0010 = await _configs(module_database_url)
    changed = {k for k in at_0009 if at_0009[k] != at_0010[k]}
    assert changed == {"audit_heads_name_a_row", "audit_log_linked"}, changed
    for name in changed:
        assert at_0010[name] == (at_0009[name] or []) + ["plan_cache_mode=force_custom_plan"]
    assert "plan_cache_mode=force_custom_plan" not in (at_0010["ledger_entity_forward_only"] or [])
    await downgrade(module_database_url, "0009")
    assert await current(module_database_url) == "0009"
    assert await _configs(module_database_url) == at_0009
    await upgrade(module_database_url, "head")
    assert await _as_at(module_database_url, at_0010) == at_0010
    await downgrade(module_database_url, "base")
    await upgrade(module_database_url, "head")
    assert await _as_at(module_database_url, at_0010) == at_0010


async def _as_at(url: str, then: dict[str, list[str] | None]) -> dict[str, list[str] | None]:
    """The settings of the functions there were then (later revisions add their own)."""
    now = await _configs(url)
    return {name: now.get(name) for name in then}

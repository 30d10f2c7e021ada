"""The audit chain's trigger functions plan their lookups for each call.

PL/pgSQL caches a function's query plans per connection, and after five calls keeps a
generic plan where it costs no more than the custom ones did. On a table without
statistics (a new ledger, until autovacuum's first ANALYZE) the planner costs
``audit_log``'s primary key and ``ix_audit_log_tenant_id_entity_type_entity_id`` alike
for 0009's ``tenant_id = ... AND seq = ...`` lookups, and the generic plan it kept used
the latter: each row inserted read the tenant's rows until it came to its predecessor
(about 1,900 rows a link, appending 2,000 rows to a chain of 3,000), for as long as the
connection lived or until an ANALYZE. One batch's 35,500 audit rows of one tenant took
53 s on the development host; planned per call, 1.5 s (a custom plan sees the table's
real size, and past a few thousand rows takes the primary key). Planning costs
something where the plan was right: appending 5,000 rows to an analyzed chain took
0.38-0.44 s against 0.26 s (review h63b). 0006's function, whose lookup of ``events``
by its key was never planned otherwise, is left as it was.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The trigger functions that look rows of audit_log up (0009).
FUNCTIONS = ("audit_heads_name_a_row()", "audit_log_linked()")


def upgrade() -> None:
    for function in FUNCTIONS:
        op.execute(f"ALTER FUNCTION {function} SET plan_cache_mode = force_custom_plan")


def downgrade() -> None:
    for function in FUNCTIONS:
        op.execute(f"ALTER FUNCTION {function} RESET plan_cache_mode")

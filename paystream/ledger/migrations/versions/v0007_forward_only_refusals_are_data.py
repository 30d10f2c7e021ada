"""The entity rows' forward-only trigger (0006) refuses with a SQLSTATE of its own.

It raised ``insufficient_privilege`` (42501), the code of a missing grant, which the
ledger sink treats as a configuration problem: it retries the batch until an operator
fixes the grants. A refused write is not that: the same event is refused the same way
every time, so one ever refused (none of the writer's is, as designed) stalled its
partition for good instead of being dead-lettered. The trigger now raises ``PSR01``
(class ``PS``: paystream's refusals), which the sink treats as data that cannot be
stored, as it does an integrity violation: the event goes to the ledger dead-letter
topic and the partition goes on. The function is otherwise 0006's, word for word.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

from paystream.ledger.migrations.versions import v0006_entity_rows_forward_only as v0006

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

REFUSED_SQLSTATE = "PSR01"
_OLD = "USING ERRCODE = 'insufficient_privilege'"
_NEW = f"USING ERRCODE = '{REFUSED_SQLSTATE}'"
_RAISES = 4  # (each of the function's refusals)


def _function(errcode_clause: str) -> str:
    body = v0006._FUNCTION.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1)
    assert body.count(_OLD) == _RAISES, "0006's function is not as this revision expects"
    return body.replace(_OLD, errcode_clause)


def upgrade() -> None:
    op.execute(_function(_NEW))


def downgrade() -> None:
    op.execute(_function(_OLD))

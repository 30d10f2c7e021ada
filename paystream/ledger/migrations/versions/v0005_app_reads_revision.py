"""The application role may read the schema revision.

Workers may be given ``paystream_app``'s own URL and nothing of the owner's (least
privilege: a compromised worker then holds no credential that can switch row-level
security off). ``paystream doctor`` then checks, as that role, that the schema is at this
version's revision before the sink's first batch would stall on it: it needs to read
``alembic_version``, which holds no tenant's data.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

APP_ROLE = "paystream_app"


def upgrade() -> None:
    op.execute(f"GRANT SELECT ON alembic_version TO {APP_ROLE}")


def downgrade() -> None:
    op.execute(f"REVOKE SELECT ON alembic_version FROM {APP_ROLE}")  # noqa: S608 - a constant

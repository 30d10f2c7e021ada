"""Nobody but the owner creates objects in the ledger's schema (review h67l).

PostgreSQL 14 and older grant CREATE on schema ``public`` to PUBLIC (clusters upgraded
from them keep it). A function or operator the application role made there, a closer
match than pg_catalog's, ran inside the forward-only trigger and, with the owner's
rights, in the owner's own sessions (`paystream migrate`, `keys rotate`, `doctor`).
Revoking takes the schema's owner; run by another role, PostgreSQL only warns, and
`assert_rls_enforced` refuses an application role that can still create there. What the
application role made there while it could stays and still wins name resolution: the
migration refuses while it owns anything in ``public``, naming it (review h67n), for an
operator to look at and drop; it drops nothing itself (``DROP OWNED BY`` would take the
role's grants too).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from paystream.ledger.migrations.versions.v0002_security import APP_ROLE

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# What the application role owns in ``public`` (none of paystream's own objects: the
# migrations make them as the owner), an extension's members left out.
_APP_OBJECTS = """
SELECT kind || ' ' || name FROM (
    SELECT 'function' AS kind, p.oid::regprocedure::text AS name, p.proowner AS owner, p.oid,
           'pg_proc'::regclass AS catalog
    FROM pg_proc p WHERE p.pronamespace = 'public'::regnamespace
    UNION ALL
    SELECT 'operator', o.oid::regoperator::text, o.oprowner, o.oid, 'pg_operator'::regclass
    FROM pg_operator o WHERE o.oprnamespace = 'public'::regnamespace
    UNION ALL
    SELECT 'type', t.oid::regtype::text, t.typowner, t.oid, 'pg_type'::regclass
    FROM pg_type t WHERE t.typnamespace = 'public'::regnamespace
    UNION ALL
    SELECT 'relation', c.oid::regclass::text, c.relowner, c.oid, 'pg_class'::regclass
    FROM pg_class c WHERE c.relnamespace = 'public'::regnamespace
) AS found
WHERE owner = (SELECT oid FROM pg_roles WHERE rolname = :role)
AND NOT EXISTS (
    SELECT 1 FROM pg_depend d
    WHERE d.classid = found.catalog AND d.objid = found.oid AND d.deptype = 'e'
)
ORDER BY 1
"""


def upgrade() -> None:
    op.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
    op.execute(f"REVOKE CREATE ON SCHEMA public FROM {APP_ROLE}")
    found = op.get_bind().execute(sa.text(_APP_OBJECTS), {"role": APP_ROLE})
    planted = [row[0] for row in found]
    if planted:
        raise RuntimeError(
            f"{APP_ROLE} owns objects in schema public, which it may have made while it "
            "could (PostgreSQL 14's default grant) and which would still run in the "
            "ledger's trigger functions and the owner's sessions: "
            + ", ".join(planted)
            + f". Look at them, drop them (and change {APP_ROLE}'s password: its "
            "credential made them), then run `paystream migrate` again"
        )


def downgrade() -> None:
    pass  # (what the cluster granted before is not known: left revoked)

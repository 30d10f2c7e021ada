"""Entity rows only move forward, as the audit heads do (0004).

The application role upserts entity rows (a newer version's image) and erasure blanks a
customer's personal data; nothing else of a row ever changes. The role's UPDATE grant
allowed more: rewrite a payment's amount at the same version, or move its version back
so that a replayed event applied again, with no audit entry and `audit verify` passing
(review finding). A trigger now refuses, for the owner too, any update of an entity row
but:

* a higher version that a stored event of the entity, named by ``last_event_id``, has
  (the writer's upsert, after storing the event; audited);
* at the same version, ``created_at`` moved back (an earlier event arrived later);
* at the same version, a customer's erasure: ``erased_at`` set once, its personal-data
  columns emptied.

The key columns never change, and an erased customer stays erased. Tampering then takes
a forged event row as well, or a deliberate ``DISABLE TRIGGER`` by the owner, as for the
audit log.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# table → (its id column, its events' entity type, the columns erasure empties)
ENTITY_TABLES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "customers": (
        "customer_id",
        "customer",
        ("email_ciphertext", "name_ciphertext", "address_ciphertext"),
    ),
    "payment_methods": ("payment_method_id", "payment_method", ()),
    "payments": ("payment_id", "payment", ()),
    "refunds": ("refund_id", "refund", ()),
    "disputes": ("dispute_id", "dispute", ()),
}

# TG_ARGV: the id column, the entity type, then the columns erasure empties. (jsonb, so
# one function serves tables with and without ``erased_at``.)
_FUNCTION = """
CREATE FUNCTION ledger_entity_forward_only() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  n jsonb := to_jsonb(NEW);
  o jsonb := to_jsonb(OLD);
  erasable text[] := coalesce(TG_ARGV[2:TG_NARGS - 1], ARRAY[]::text[]);
  rest text[] := ARRAY['created_at', 'erased_at'] || erasable;
BEGIN
  IF NEW.tenant_id IS DISTINCT FROM OLD.tenant_id
     OR n -> TG_ARGV[0] IS DISTINCT FROM o -> TG_ARGV[0] THEN
    RAISE EXCEPTION '% rows keep their keys', TG_TABLE_NAME
      USING ERRCODE = 'insufficient_privilege';
  END IF;
  IF o ->> 'erased_at' IS NOT NULL AND (n ->> 'erased_at' IS NULL
     OR EXISTS (SELECT 1 FROM unnest(erasable) AS c WHERE n ->> c IS NOT NULL)) THEN
    RAISE EXCEPTION '% rows stay erased', TG_TABLE_NAME
      USING ERRCODE = 'insufficient_privilege';
  END IF;
  IF NEW.version > OLD.version THEN
    -- The writer's image of an event stored in the same transaction, first.
    IF EXISTS (SELECT 1 FROM events e
               WHERE e.tenant_id = NEW.tenant_id AND e.event_id = NEW.last_event_id
                 AND e.entity_type = TG_ARGV[1] AND e.entity_id = n ->> TG_ARGV[0]
                 AND e.entity_version = NEW.version) THEN
      RETURN NEW;
    END IF;
    RAISE EXCEPTION '% rows move forward by an event of theirs only', TG_TABLE_NAME
      USING ERRCODE = 'insufficient_privilege';
  END IF;
  IF NEW.version = OLD.version AND (n - rest) = (o - rest)
     AND NEW.created_at <= OLD.created_at
     AND ((n - 'created_at') = (o - 'created_at')
          OR (o ->> 'erased_at' IS NULL AND n ->> 'erased_at' IS NOT NULL
              AND NOT EXISTS (SELECT 1 FROM unnest(erasable) AS c
                              WHERE n ->> c IS NOT NULL))) THEN
    RETURN NEW;
  END IF;
  RAISE EXCEPTION '% rows only move forward: version % to %', TG_TABLE_NAME,
    OLD.version, NEW.version USING ERRCODE = 'insufficient_privilege';
END $$
"""


def upgrade() -> None:
    op.execute(_FUNCTION)
    for table, (id_column, entity_type, erasable) in ENTITY_TABLES.items():
        args = ", ".join(f"'{name}'" for name in (id_column, entity_type, *erasable))
        op.execute(
            f"CREATE TRIGGER {table}_forward_only BEFORE UPDATE ON {table} "
            f"FOR EACH ROW EXECUTE FUNCTION ledger_entity_forward_only({args})"
        )


def downgrade() -> None:
    for table in ENTITY_TABLES:
        op.execute(f"DROP TRIGGER {table}_forward_only ON {table}")
    op.execute("DROP FUNCTION ledger_entity_forward_only()")

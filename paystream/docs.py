"""The interface documents, built from the code so that they cannot drift from it.

``docs/asyncapi.yaml`` (AsyncAPI 3.0) describes the Kafka interface: the command models'
JSON schemas (``streams/commands.py``), the outcomes, the rejection reasons
(``RejectReason``) and the topics' default names (``settings.py``). ``docs/openapi.yaml``
(OpenAPI 3.1) describes the worker's HTTP views (``web/views.py``). ``paystream docs``
writes both; ``paystream docs --check`` fails when the committed files differ.

YAML is written here (a small emitter for the documents' JSON-like values) so that the
command needs nothing beyond paystream's own dependencies.
"""

from __future__ import annotations

import json
import re
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode

from paystream import __version__
from paystream.agents import handlers, pipeline
from paystream.gateways.base import (
    ConnectedAccountStatus,
    DisputeStatus,
    InvoiceStatus,
    PaymentStatus,
    PayoutStatus,
    RefundStatus,
    SubscriptionStatus,
    TransferStatus,
)
from paystream.gateways.paddle import webhooks as paddle_webhooks
from paystream.gateways.square import webhooks as square_webhooks
from paystream.gateways.stripe import webhooks as stripe_webhooks
from paystream.gateways.stripe.webhooks import BODY_READ_SECONDS as WEBHOOK_BODY_SECONDS
from paystream.gateways.stripe.webhooks import MAX_BODY_BYTES as WEBHOOK_MAX_BODY_BYTES
from paystream.insights.events import ALERT_TYPE, WINDOW_TYPE
from paystream.ledger.sink import DEAD_LETTER_REDACTIONS
from paystream.money import CURRENCY_EXPONENTS
from paystream.settings import ATTRIBUTES_MAX_BYTES, Settings
from paystream.streams.codec import STRUCTURED_CONTENT_TYPE
from paystream.streams.commands import COMMAND_PREFIX, COMMANDS
from paystream.streams.outcomes import (
    ANSWERS_HEADER,
    OUTCOME_PREFIX,
    REQUEST_HEADER,
    RejectReason,
)
from paystream.tables import records
from paystream.tables.views import TENANT_RECENT_KEPT, TENANTS_RECENT_MAX
from paystream.tenancy.ingress_keys import COMMAND_SCOPE_PATTERN
from paystream.tenancy.limits import LIMIT_NAMES
from paystream.tenancy.models import TENANT_ID_PATTERN, Tenant
from paystream.web import ingress

__all__ = [
    "COMMAND_SUMMARIES",
    "OUTCOMES",
    "REJECT_REASONS",
    "asyncapi",
    "documents",
    "openapi",
    "stale",
    "to_yaml",
    "write",
]

Doc = dict[str, Any]
_REFS = "#/components/schemas/{model}"

# ---- what the code cannot say -------------------------------------------------------

COMMAND_SUMMARIES: dict[str, str] = {
    "customer.create": "Create a customer (at the provider and here).",
    "customer.update": "Update a customer; `metadata` is merged key by key, as Stripe does "
    '(`""` removes a key).',
    "customer.delete": "Delete a customer at the provider (which cancels their subscriptions "
    "there: `subscription.refresh` reads it).",
    "customer.erase": "Right to erasure: delete at the provider (which cancels their "
    "subscriptions there), blank the personal data in the tables and stored outcomes, "
    "crypto-shred the ledger's copies.",
    "customer.export": "Right of access: everything held on the customer (payment methods, "
    "payments with their refunds and disputes, subscriptions with their invoices), as one "
    "outcome.",
    "payment_method.attach": "Attach a provider token (never card data) to a customer.",
    "payment_method.detach": "Detach a payment method.",
    "payment.create": "Create (and by default capture) a payment.",
    "payment.capture": "Capture an authorised payment, in full or in part.",
    "payment.cancel": "Cancel an uncaptured payment.",
    "payment.refresh": (
        "Read a payment back from its provider (after its customer's 3-D Secure step, or "
        "a bank debit settled; a succeeded one, for a dispute opened since or its "
        "decision): answered with the payment's status there now "
        "(`data.previous_status`: what paystream held before; a dispute not recorded "
        "before, or moved on, in `related`). One `canceled`, or `failed` and not open at "
        "the provider, is final: answered `payment.canceled` / `payment.failed` from its "
        "record, the provider not asked (a Stripe webhook's refresh queued behind the "
        "tenant's own cancel is answered so, not refused)."
    ),
    "refund.create": "Refund a payment, in full (no `amount`) or in part.",
    "refund.refresh": (
        "Read a refund back from its provider (one left pending, or one the provider "
        "reports failed since: Stripe's `refund.failed`): answered with the refund's status "
        "there now (`data.previous_status`: what paystream held before); a refund that "
        "failed is taken off its payment's `amount_refunded` (`related`: the payment; none "
        "when the payment has left the tables, or its id names a new payment since). One "
        "`failed` is final: answered `refund.failed` from its record (`previous_status` "
        "`failed`, nothing taken off again), the provider not asked (a Stripe webhook's "
        "refresh queued behind another's for the same failure is answered so, not refused)."
    ),
    "dispute.submit_evidence": "Submit (or, with `submit: false`, stage) evidence for a dispute.",
    "dispute.accept": "Accept a dispute (the money stays with the cardholder).",
    "subscription.create": (
        "Bill a customer's saved payment method `amount` every `interval_count` "
        "`interval`s (at most a year): the first invoice charged now, or after a free "
        "trial of `trial_days` (`related`: the invoice)."
    ),
    "subscription.cancel": (
        "Cancel a subscription now (its open invoices voided), or at the end of the "
        "period paid for (`at_period_end`: `subscription.updated`, then canceled when a "
        "`subscription.refresh` finds the period ended). A `paused` one is canceled "
        "now (at period end: `invalid_state`); at Square, either is `unsupported` (Square "
        "cancels an active subscription only): resume it in Square's dashboard, then "
        "cancel at period end, or cancel it there."
    ),
    "subscription.update": (
        "Change a live subscription (`active`, `trialing` or `past_due`; others are "
        "refused `invalid_state`) without canceling it: `amount` (its price per period, "
        "in its own currency: neither currency nor interval changes), `payment_method_id` "
        "(another attached payment method of its customer, billed from the next charge "
        "on: a `past_due` subscription's open invoice is not paid now, nor retried by "
        "paystream; one of another customer's is `not_found`, a detached one "
        "`invalid_state`), "
        "`cancel_at_period_end` (`false` resumes one scheduled to cancel, `true` "
        "schedules it). A new amount is billed from the next period on (during a trial, "
        "the first invoice is at it); `proration` (with an `amount` only; Stripe's "
        "`proration_behavior`) settles the period under way: `none` (the default) not at "
        "all, `create_prorations` by a credit for its unused time at the old price and a "
        "charge for its remaining time at the new one on the next invoice "
        "(`data.pending_prorations`), `always_invoice` by the same lines (and any still "
        "pending from an earlier `create_prorations`) invoiced and "
        "charged now (the invoice in `related`, with its `proration_lines`; declined: "
        "`open`, the subscription `past_due`). Square and Paddle refuse it `unsupported`. "
        "At least one field "
        "(else `validation_error`); an `amount` or `cancel_at_period_end` equal to the "
        "current one is not sent, a `payment_method_id` always is (the provider may "
        "bill a card set outside paystream); with nothing to send, nothing is asked of "
        "the provider. A new `amount` is held to the tenant's `max_payment_amount` (and "
        "`only_listed_currencies`) as a `subscription.create` of it is (`quota_exceeded`), "
        "nothing counted toward the day's volume unless `always_invoice` (then held "
        "against it at that charge, and counted at what its invoice was paid). Parked "
        "and re-driven after another command changed the subscription, it is read back "
        "rather than sent again: "
        "`subscription.updated` if all it asked is in effect, else `invalid_state` naming "
        "the fields not in effect (send it again under a new id to apply them). "
        "A tenant whose `capabilities` leave out subscriptions may still schedule or "
        "resume a cancel at period end; a new amount or payment method is `unsupported` "
        "for it. Answered `subscription.updated` (`related`: "
        "renewals the provider billed before the change)."
    ),
    "subscription.pause": (
        "Pause an `active` subscription's billing now (others are refused "
        "`invalid_state`, as is one to cancel at period end: undo that cancel first, "
        "or cancel now): `subscription.paused`, its status `paused`; nothing is billed "
        "while it is paused, and nothing is charged by the pause. `resumes_at` (optional, "
        "RFC 3339 with its time zone, ahead and at most 366 days ahead of the provider's "
        "clock (the simulator's own, moved by `paystream simulator advance`), else "
        "`validation_error`): when its provider resumes it by itself (`pause_resumes_at`; "
        "read back `active` by `subscription.refresh`). Stripe: `pause_collection` with "
        "`behavior: void` (Stripe keeps its billing cycle, and voids the invoices of the "
        "periods that begin while it is paused); Paddle: paused `immediately`. Square "
        "pauses only from its next billing cycle: `unsupported`. A paused subscription is "
        "resumed, canceled now, or read back: `subscription.update` and a cancel at period "
        "end are refused `invalid_state`. Parked and re-driven after another command "
        "changed the subscription (a resume since), it is read back rather than sent "
        "again: `subscription.paused` if it is paused, else `invalid_state`. Re-driven "
        "once its `resumes_at` has passed, its pause is over: read back, never sent "
        "again nor refused, answered as the subscription is (`subscription.updated`, "
        "`active`; `subscription.paused` if not yet resumed)."
    ),
    "subscription.resume": (
        "Resume a `paused` subscription's billing now (others are refused "
        "`invalid_state`): `subscription.resumed`, its status `active` again (`trialing` "
        "for a trial paused in Stripe's dashboard). Stripe "
        "(`pause_collection` cleared) and the simulator keep the billing cycle: nothing "
        "is charged at the resume, the next period is billed as it begins (the one under "
        "way, begun while paused, is not). Paddle starts a new billing period at the "
        "resume and charges it at once (`start_new_billing_period`; the invoice in "
        "`related`): held to the tenant's limits as a `subscription.create` of its amount "
        "is, and counted at that invoice's amount, paid or still being collected (not "
        "once declined). Square: `unsupported`. Re-driven "
        "after another command changed the subscription, read back as a pause is."
    ),
    "subscription.refresh": (
        "Read a subscription back from its provider with the invoices it made since "
        "(renewals paid, or declined: `past_due`; `related`: invoices new or moved on; "
        "`data.previous_status`: what paystream held before). One canceled is final: "
        "answered `subscription.updated` from its record, the provider not asked (a "
        "Stripe webhook's refresh queued behind the tenant's own cancel is answered so, "
        "not refused)."
    ),
    "payout.create": (
        "Pay `amount` of the tenant's available balance in `currency` out to its bank "
        "account (`standard`: arrives after the provider's delay; `instant`: at once); "
        "more than is available is refused `balance_insufficient`. Over the tenant's "
        "`daily_payout_volume` (if set): `quota_exceeded` before any call; a payout "
        "canceled or failed after it was made gives the day's volume nothing back."
    ),
    "payout.cancel": (
        "Cancel a `pending` payout (its amount available again). One `canceled` or "
        "`failed` is refused `invalid_state`, a parked cancel re-driven after a refresh "
        "recorded it too, so its `payout.canceled` is emitted once."
    ),
    "payout.refresh": (
        "Read a payout back from its provider: in transit, paid, or failed since "
        "(`data.previous_status`: what paystream held before). One `canceled` or "
        "`failed` is final: answered `payout.updated` from its record, the provider not "
        "asked, so its `payout.canceled` or `payout.failed` is emitted once (a Stripe "
        "webhook's refresh queued behind the tenant's own cancel is answered so, not "
        "refused); one `paid` is read again (a bank may still return it: `payout.paid` "
        "again, or `payout.failed`)."
    ),
    "balance.retrieve": (
        "Read the tenant's balance at its provider, per currency: `available` and "
        "`pending` (captured, not yet settled)."
    ),
    "invoice.create": (
        "Make a draft one-off invoice to `customer_id` of `line_items` (`description`, "
        "`amount` per unit in minor units, `quantity`) in `currency`, taxed by "
        "`tax_rate_ids` on every line (exclusive ones added, inclusive ones contained): "
        "nothing is charged. `collection_method` `charge_automatically` (the default) "
        "needs `payment_method_id` (a saved payment method of the customer's, attached), "
        "`send_invoice` needs `days_until_due` (the customer pays it on the provider's "
        "page). A tenant whose provider lacks invoices (Square, Paddle), or whose "
        "`capabilities` leave them out, is refused `unsupported` before anything is asked."
    ),
    "invoice.update": (
        "Change a `draft` invoice before it is finalized: `line_items` replace its lines "
        "as a whole (as `invoice.create` takes them; sent again, the same lines are set, "
        "none added twice), `description`, `days_until_due` (a `send_invoice` one's), "
        '`metadata` (merged key by key, a key given "" removed): `invoice.updated` with '
        "its new total. New lines are held to the tenant's `max_payment_amount` and "
        "`only_listed_currencies` at the new total with exclusive tax, as a create's. An "
        "`open`, `uncollectible`, `paid` or `void` one is refused `invalid_state` before "
        "the provider is asked. Square and Paddle: `unsupported`."
    ),
    "invoice.finalize": (
        "Finalize a `draft` invoice: `open`, its total fixed (a sent one's `due_date` "
        "counted from now): `invoice.finalized`; or `invoice.paid` when nothing is left "
        "to charge (its customer's credit balance at the provider covers it: paid as it "
        "is finalized, nothing charged). Any other status is refused `invalid_state`."
    ),
    "invoice.pay": (
        "Charge an `open` invoice's total to its saved payment method, or to "
        "`payment_method_id` (another of the same customer's), off session: "
        "`invoice.paid`, or `invoice.payment_failed` (the decline in `error`, as a "
        "`payment.failed`'s; the invoice stays `open`: pay it again under a new command "
        "id). An `uncollectible` one may be paid too. A `draft` is refused `invalid_state` "
        "(finalize it first), a `paid` or `void` one too. Sent under the command's key: "
        "redelivered or re-driven, it charges once."
    ),
    "invoice.void": (
        "Void a `draft`, `open` or `uncollectible` invoice: never to be paid. A `paid` one "
        "is refused `invalid_state` (refund its payment instead: `refund.create`)."
    ),
    "invoice.mark_uncollectible": (
        "Write an `open` invoice off: `uncollectible` (`invoice.marked_uncollectible`), "
        "no longer expected to be paid, yet still payable (`invoice.pay`, or its customer "
        "on the provider's page) or voidable; its parked pays keep their holds. A "
        "`draft`, `paid`, `void` or `uncollectible` one is refused `invalid_state`."
    ),
    "invoice.refresh": (
        "Read a one-off invoice back from its provider (a sent invoice paid by its "
        "customer, or one voided there since; `data.previous_status`: what paystream held "
        "before). One `paid` or `void` is final: answered `invoice.updated` from its "
        "record, the provider not asked, so its `invoice.paid` or `invoice.voided` is "
        "emitted once (a Stripe webhook's refresh queued behind the tenant's own pay or "
        "void is answered so, not refused). A "
        "subscription's invoices are read back by `subscription.refresh`: these commands "
        "refuse them `invalid_state`."
    ),
    "tax_rate.create": (
        "Make a tax rate at the tenant's provider (Stripe's TaxRate): `percentage` a "
        "decimal string (0 to 100, at most 4 decimal places; a JSON number is refused), "
        "`inclusive` (contained in prices) or exclusive (added on top), `country`."
    ),
    "tax_rate.archive": (
        "Archive a tax rate (it is never changed or deleted): applied to nothing new."
    ),
    "connected_account.create": (
        "Make a merchant's connected account under the tenant's platform account (Stripe "
        "Connect: `express` by default, or `custom`; `country`, `email`, `business_type`, "
        "the `capabilities` requested: `card_payments`, `transfers`). It starts `pending`, "
        "its requirements due (`currently_due`: names only) until its holder onboards. "
        "Refused `unsupported` for Square and Paddle, and for a Stripe (or simulator) "
        "tenant acting for a connected account (`--connected-account`): accounts are made "
        "on the platform's own key."
    ),
    "connected_account.onboarding_link": (
        "A short-lived onboarding link (`url`, until `expires_at`) for the account's "
        "holder; `refresh_url` and `return_url` are https (http to localhost only). The "
        "URL is a bearer credential: in this command's outcome only, never stored or "
        "logged; a replay of the command (a redelivery, its id sent again, or a new id "
        "under the same idempotency key) answers `url` null: send a new command id and "
        "a new idempotency key (or none: it defaults to the id) for a new link. An HTTP "
        "sender answered 202 (its `Prefer: wait` ran out) finds the link made in the "
        "command lookup, without its URL: it sends a new command the same way."
    ),
    "connected_account.refresh": (
        "Read a connected account back from its provider: `enabled` (charges and payouts), "
        "`restricted` (something due or under review) or `rejected` since, and what is "
        "due (`data.previous_status`: what paystream held before). One `rejected` is "
        "final: answered `connected_account.updated` from its record, the provider not "
        "asked (a Stripe webhook's refresh queued behind another is answered so, not "
        "refused)."
    ),
    "transfer.create": (
        "Move `amount` in `currency` from the tenant's platform balance to one of its "
        "connected accounts (Stripe Connect's separate charges and transfers: the "
        "platform charges, then pays the accounts their shares, e.g. of a marketplace "
        "order, tied by `transfer_group`). The account must be the tenant's (another's, "
        "or none: `not_found`) and `enabled`, made with the `transfers` capability if it "
        "named capabilities (`invalid_state` naming its status). With `payment_id` "
        "(Stripe's `source_transaction`) the funds are that payment's: the tenant's, "
        "`succeeded`, no destination charge (`invalid_state`), in the same currency, and "
        "at most what is left of it: captured, less refunded, less transferred from it "
        "already (`validation_error`). Without it, more than the available balance is "
        "refused `balance_insufficient`. Square, Paddle and a tenant acting for a "
        "connected account (`--connected-account`): `unsupported`. Not held to the payment "
        "limits (a transfer moves the platform's own balance, as a payout does): to the "
        "rate limit, and to the tenant's `daily_transfer_volume` if set (`quota_exceeded` "
        "before any call)."
    ),
    "transfer.reverse": (
        "Take back all (`amount` left out) or part of a transfer from its connected "
        "account to the platform's balance; more than is left is refused "
        "`validation_error`, a transfer reversed entirely `invalid_state`. What comes back "
        "of a transfer from a payment may be transferred from that payment again."
    ),
    "transfer.refresh": (
        "Read a transfer back from its provider: reversed since outside paystream too "
        "(in Stripe's Dashboard, or by Stripe recovering a connected account's negative "
        "balance). What was reversed since is `transfer.reversed`, as a "
        "`transfer.reverse`'s (its payment's `amount_transferred` lowered: refundable, "
        "and transferable again), emitted once however often it is read; nothing, "
        "`transfer.updated`. One `reversed` is final: answered `transfer.updated` from its "
        "record, the provider not asked (a Stripe webhook's refresh queued behind the "
        "tenant's own reverse of all of it is answered so, not refused). Stripe's "
        "`transfer.reversed` and `transfer.updated` webhooks send it. Another tenant's "
        "transfer, or none: `not_found`."
    ),
    "tax.calculate": (
        "The tax on `line_items` by the tenant's tax rates, computed by paystream as Stripe "
        "Billing computes it (per line and rate, rounded half up; no provider asked): a "
        "calculation (`taxcalc_...`) a `payment.create` may name until its `expires_at`."
    ),
}

REJECT_REASONS: dict[RejectReason, str] = {
    RejectReason.VALIDATION_ERROR: "the command or its data is invalid (`errors` lists the "
    "first ten errors; the message says how many there were)",
    RejectReason.CARD_DATA_FORBIDDEN: "something that looks like a card number or a card "
    "security code was found anywhere in the command; nothing of it is echoed",
    RejectReason.PAYLOAD_TOO_LARGE: "value over PAYSTREAM_COMMAND_MAX_BYTES or key and "
    f"CloudEvents headers over {ATTRIBUTES_MAX_BYTES // 1024} KiB (the record is also "
    "dead-lettered)",
    RejectReason.UNKNOWN_COMMAND: f"`type` starts with `{COMMAND_PREFIX}` but names no command",
    RejectReason.UNKNOWN_TENANT: "the tenant is not in the registry",
    RejectReason.TENANT_SUSPENDED: "the tenant is suspended",
    RejectReason.TENANT_MISMATCH: "the record key is not the `tenantid` extension",
    RejectReason.IDEMPOTENCY_CONFLICT: "the command id or idempotency key was used for "
    "another request",
    RejectReason.INVALID_STATE: "the entity's state forbids the command",
    RejectReason.UNSUPPORTED: f"`type` is not a paystream command (no `{COMMAND_PREFIX}` "
    "prefix), or the tenant's provider cannot do it",
    RejectReason.NOT_FOUND: "no such entity for this tenant",
    RejectReason.RATE_LIMITED: "over the tenant's `commands_per_second`/`burst` "
    "(`limit`, `retry_after_ms`)",
    RejectReason.QUOTA_EXCEEDED: "over a tenant payment limit (`limit`, `currency`, `allowed`; "
    "daily volume also `used`, `held`, `day`)",
    RejectReason.GATEWAY_NOT_CONFIGURED: "missing, unopenable or refused credentials; not "
    "remembered under the idempotency key, so a retry works once fixed",
    RejectReason.PROVIDER_REJECTED: "the provider refused the request; `error` carries its "
    "code and request id",
    RejectReason.INTERNAL_ERROR: "a failure of ours before the command was let through to the "
    "provider: the command is dead-lettered, marked `paystream-dlq-answered: internal_error`, "
    "and `dlq replay` never runs it (that could charge a second time): its sender re-sends it "
    "under a new id",
    RejectReason.PAST_RETENTION: "the command record, or the command's `time`, is older than "
    "PAYSTREAM_ENTITY_RETENTION_SECONDS less a day: the entities it may name may have left "
    "the tables (a consumer group reset to records that old, an outbox sent again), so it "
    "is not run (unless the provider may have acted on it: then it goes on as any would)",
    RejectReason.BALANCE_INSUFFICIENT: "a `payout.create` (or a `transfer.create` without "
    "`payment_id`) above the tenant's available balance in its currency (nothing moved; "
    "the provider keeps this answer under the payout's or transfer's key: send a new "
    "`payout_id` or `transfer_id` once funds have settled)",
}

# Outcome type → (entity type of `object`, or None; summary; properties of its own).
# A payment outcome answering `payment.refresh` says what paystream held before it.
_REFRESHED: Doc = {
    "previous_status": {
        "type": "string",
        "description": "answering `payment.refresh`: the payment's status before it was "
        "read back (equal to the status now when nothing changed at the provider); on a "
        "capture or cancel re-driven after a refresh recorded its effect: that status",
    },
    "previous_failure_code": {
        "type": ["string", "null"],
        "description": "answering `payment.refresh` of a failed payment: its "
        "`failure_code` before (another one now, and no `previous_charge_id` to compare: "
        "another card was declined)",
    },
    "previous_charge_id": {
        "type": "string",
        "description": "answering `payment.refresh` of a failed payment whose provider names "
        "its charges: the declined charge's id before (`object.provider_charge_id` another "
        "now: another card was declined, whatever the failure codes)",
    },
}

# A refund outcome answering `refund.refresh` says what paystream held before it.
_REFUND_REFRESHED: Doc = {
    "previous_status": {
        "type": "string",
        "description": "answering `refund.refresh`: the refund's status before it was read "
        "back (equal to the status now when nothing changed at the provider)",
    },
}

# A subscription outcome answering a cancel or a refresh says what paystream held before.
_SUB_PREVIOUS: Doc = {
    "previous_status": {
        "type": "string",
        "description": "answering `subscription.cancel`, `subscription.update`, "
        "`subscription.pause`, `subscription.resume` or `subscription.refresh`: the "
        "subscription's status before",
    },
    "pending_prorations": {
        "type": "array",
        "description": "a price change's proration lines made with `create_prorations`, "
        "not invoiced yet: on the next invoice (`description`, `amount`: negative for "
        "the unused time's credit, `period_start`: the change, `period_end`)",
        "items": {"type": "object"},
    },
    "trial_end_charge": {
        "type": "string",
        "enum": ["paid", "declined"],
        "description": 'answering a `subscription.update` with `trial_end: "now"` of a '
        "trialing subscription: its first period's charge, made now, `paid` or `declined` "
        "(the decline in `error`; Paddle leaves a declined one `trialing`): a payment "
        "attempt of the fraud rules, as a `subscription.create`'s first charge",
    },
}

# A payout outcome answering a cancel or a refresh says what paystream held before.
_PAYOUT_PREVIOUS: Doc = {
    "previous_status": {
        "type": "string",
        "description": "answering `payout.cancel` or `payout.refresh`: the payout's status before",
    },
}

# An invoice outcome answering a finalize, a pay, a void or a refresh says what
# paystream held before.
_INVOICE_PREVIOUS: Doc = {
    "previous_status": {
        "type": "string",
        "description": "answering `invoice.update`, `invoice.finalize`, `invoice.pay`, "
        "`invoice.void`, "
        "`invoice.mark_uncollectible` or `invoice.refresh`: the invoice's status before",
    },
}

OUTCOMES: dict[str, tuple[str | None, str, Doc]] = {
    "customer.created": ("customer", "The customer was created.", {}),
    "customer.updated": ("customer", "The customer was updated.", {}),
    "customer.deleted": (
        "customer",
        "The customer was deleted.",
        {"provider_deletion": {"$ref": "#/components/schemas/ProviderDeletion"}},
    ),
    "customer.erased": (
        "customer",
        "The customer's personal data was erased (absent `provider_deletion`: it had been "
        "deleted before).",
        {"provider_deletion": {"$ref": "#/components/schemas/ProviderDeletion"}},
    ),
    "customer.exported": (
        None,
        f"Everything held on the customer (at most {handlers.EXPORT_MAX_BYTES // 1024} KiB of "
        "rows; `truncated` gives the full counts when there are more).",
        {
            "customer_id": {"type": "string"},
            "export": {
                "description": 'what was held; `{"erased": true}` when the export is '
                "answered again after the customer's erasure (its rows scrubbed)",
                "oneOf": [
                    {"$ref": "#/components/schemas/Export"},
                    {"$ref": "#/components/schemas/ErasedExport"},
                ],
            },
        },
    ),
    "payment_method.attached": ("payment_method", "The payment method was attached.", {}),
    "payment_method.attach_failed": (
        None,
        "The provider declined the card; `id` is the payment method id the command named or "
        "would have made, `customer_id` the customer it was to be saved to.",
        {"id": {"type": "string"}, "customer_id": {"type": "string"}},
    ),
    "payment_method.detached": ("payment_method", "The payment method was detached.", {}),
    "payment.authorized": ("payment", "Authorised, awaiting `payment.capture`.", _REFRESHED),
    "payment.succeeded": ("payment", "The payment succeeded (captured).", _REFRESHED),
    "payment.requires_action": ("payment", "Needs 3-D Secure (`object.next_action`).", _REFRESHED),
    "payment.processing": ("payment", "Accepted; the provider settles it later.", _REFRESHED),
    "payment.canceled": ("payment", "The payment was cancelled.", _REFRESHED),
    "payment.failed": (
        "payment",
        "Declined: `object.failure_code` is the decline code, `error` the provider's error.",
        _REFRESHED,
    ),
    "refund.pending": ("refund", "The refund is pending at the provider.", _REFUND_REFRESHED),
    "refund.succeeded": (
        "refund",
        "The refund succeeded (`related`: the payment; none when `refund.refresh` read "
        "it back as it was).",
        _REFUND_REFRESHED,
    ),
    "refund.failed": (
        "refund",
        "The refund failed: refused when made (`error`), or read back failed by "
        "`refund.refresh` (`object.failure_code`: the provider's reason; `related`: the "
        "payment, its amount refundable again, unless it has left the tables or its id "
        "names a new payment since); or a refresh of one failed already, answered from "
        "its record (`previous_status` `failed`, no `related`).",
        _REFUND_REFRESHED,
    ),
    "dispute.evidence_submitted": ("dispute", "Evidence was submitted (or staged).", {}),
    "dispute.closed": (
        "dispute",
        "The dispute was accepted: `lost` (a chargeback conceded), or `inquiry_closed` for "
        "a Stripe inquiry (closed without a chargeback, no money moved).",
        {
            "previous_status": {
                "type": "string",
                "description": "the dispute's status here before the accept (`lost` "
                "already when an accept re-driven after its answer was lost finds a "
                "`payment.refresh` recorded the loss meanwhile)",
            }
        },
    ),
    "subscription.created": (
        "subscription",
        "The subscription is `active` (its first invoice paid, in `related`) or "
        "`trialing` (nothing charged until the trial ends).",
        {},
    ),
    "subscription.requires_action": (
        "subscription",
        "The subscription is recorded `requires_action`: its customer pays the first "
        "period at the provider's checkout (Paddle's; `next_action` the checkout URL, as "
        "a payment's). Nothing is billed until then; `subscription.refresh` (or the "
        "checkout's webhook) reads it back `active` once paid.",
        {
            "next_action": {
                "type": "object",
                "description": "where the customer pays: `redirect_to_url.url`, and "
                "`paddle_transaction_id` (Paddle.js opens the checkout with it)",
            }
        },
    ),
    "subscription.failed": (
        "subscription",
        "The first invoice's payment was declined: the subscription is recorded "
        "`incomplete` (never active, nothing more billed; it may be canceled), `error` the "
        "provider's error as on `payment.failed`, the `open` invoice in `related`.",
        {},
    ),
    "subscription.updated": (
        "subscription",
        "A cancel at period end was scheduled, `subscription.update` changed it (its "
        "`amount`, `payment_method_id` or `cancel_at_period_end` as they are now), or "
        "`subscription.refresh` read the "
        "subscription back (renewed: new `paid` invoices in `related`; `past_due`: an "
        "invoice `open`, its decline in `error`; a paused one resumed at its "
        "`pause_resumes_at`, or paused in the provider's dashboard; or unchanged; or one "
        "canceled, final, answered from its record).",
        {
            **_SUB_PREVIOUS,
            "next_action": {
                "type": "object",
                "description": "a refresh of one still `requires_action` (Paddle's, its first "
                "period to be paid at checkout): where its customer pays, as "
                "`subscription.requires_action`'s",
            },
        },
    ),
    "subscription.paused": (
        "subscription",
        "The subscription's billing is paused (`status` `paused`): nothing is billed until "
        "`subscription.resume`, or its `pause_resumes_at` if set. Nothing was charged.",
        _SUB_PREVIOUS,
    ),
    "subscription.resumed": (
        "subscription",
        "The subscription bills again (`status` `active`; `past_due` if an invoice from "
        "before the pause is still open; `trialing` for a trial paused in Stripe's "
        "dashboard): its period as its provider restarts it (Paddle: "
        "a new period from now, its invoice charged at once, in `related`; Stripe: the "
        "cycle it kept, nothing charged now).",
        _SUB_PREVIOUS,
    ),
    "subscription.canceled": (
        "subscription",
        "The subscription was canceled (now, or its period ended after a cancel at "
        "period end); open invoices voided, in `related`.",
        _SUB_PREVIOUS,
    ),
    "payout.created": (
        "payout",
        "The payout was made: `pending` (standard) or `in_transit` (instant), with its "
        "expected `arrival_date`; its amount left the available balance.",
        {},
    ),
    "payout.updated": (
        "payout",
        "`payout.refresh` read the payout back not yet paid: `in_transit` since, or "
        "unchanged; or one `canceled` or `failed`, final, answered from its record.",
        _PAYOUT_PREVIOUS,
    ),
    "payout.paid": ("payout", "The payout arrived at the bank.", _PAYOUT_PREVIOUS),
    "payout.failed": (
        "payout",
        "The bank returned the payout (`object.failure_code`: the provider's payout "
        "failure code, e.g. `account_closed`, `no_account`, `insufficient_funds`; "
        "`error` its reason); its amount is available again. Emitted once per payout: a "
        "`payout.refresh` of a failed payout is answered `payout.updated` from its record.",
        _PAYOUT_PREVIOUS,
    ),
    "payout.canceled": (
        "payout",
        "The pending payout was canceled; its amount is available again. Emitted once "
        "per payout: a `payout.refresh` of a canceled payout is answered `payout.updated` "
        "from its record.",
        _PAYOUT_PREVIOUS,
    ),
    "balance.retrieved": (
        None,
        "The tenant's balance at its provider now, one entry per currency it holds any "
        "in (integer minor units; either may be below zero).",
        {
            "balances": {
                "type": "array",
                "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["currency", "available", "pending"],
                    "properties": {
                        "currency": {"type": "string", "pattern": "^[A-Z]{3}$"},
                        "available": {
                            "type": "integer",
                            "description": "settled: may be paid out",
                        },
                        "pending": {
                            "type": "integer",
                            "description": "captured, not yet settled",
                        },
                    },
                },
            }
        },
    ),
    "invoice.created": (
        "invoice",
        "The one-off invoice was made, `draft` (nothing charged): its `amount` due, "
        "with `subtotal`, `tax` and `total` when taxed.",
        {},
    ),
    "invoice.finalized": (
        "invoice",
        "The invoice is `open`: its total fixed, to be paid (`invoice.pay`, or by the "
        "customer: a sent invoice, `due_date`).",
        _INVOICE_PREVIOUS,
    ),
    "invoice.paid": (
        "invoice",
        "The invoice was paid (`provider_payment_id`: the provider's payment; none, and "
        "`amount` 0, for one its customer's credit balance covered as it was finalized). "
        "Emitted once per invoice: a pay or a refresh of a paid invoice is refused "
        "`invalid_state`.",
        _INVOICE_PREVIOUS,
    ),
    "invoice.payment_failed": (
        "invoice",
        "`invoice.pay`'s charge was declined: `error` the provider's error as on "
        "`payment.failed` (`object.failure_code` its decline); the invoice stays `open`.",
        {},
    ),
    "invoice.voided": (
        "invoice",
        "The invoice was voided: never to be paid. Emitted once per invoice.",
        _INVOICE_PREVIOUS,
    ),
    "invoice.marked_uncollectible": (
        "invoice",
        "The invoice was written off, `uncollectible` (`invoice.mark_uncollectible`, or "
        "read back so by `invoice.refresh`): it may still be paid (`invoice.paid`) or "
        "voided (`invoice.voided`).",
        _INVOICE_PREVIOUS,
    ),
    "invoice.updated": (
        "invoice",
        "`invoice.update` changed a `draft` (its lines, total, description, "
        "`days_until_due` or metadata as they are now), or `invoice.refresh` read the "
        "invoice back with no move that has an outcome of its own: unchanged (`draft`, "
        "`open` or `uncollectible`; one `paid` or `void`, final, answered from its "
        "record), or a draft finalized at the provider since (`previous_status` `draft`, "
        "status `open`; no `invoice.finalized` is emitted for it). The status it has is "
        "`object.status`.",
        _INVOICE_PREVIOUS,
    ),
    "tax_rate.created": ("tax_rate", "The tax rate was made (`active`).", {}),
    "tax_rate.archived": (
        "tax_rate",
        "The tax rate was archived: applied to no new calculation or subscription.",
        {},
    ),
    "tax.calculated": (
        "tax_calculation",
        "The tax on each line and rate, and `amount_subtotal`, `amount_tax`, `amount_total` "
        "(exclusive tax added, inclusive contained); a payment of `amount_total` may name "
        "it (`tax_calculation_id`) until `expires_at`.",
        {},
    ),
    "connected_account.created": (
        "connected_account",
        "The connected account was made (`pending` until its holder onboards, or as its "
        "provider already has it): `charges_enabled`, `payouts_enabled`, "
        "`details_submitted`, `currently_due` (requirement names only), `disabled_reason`.",
        {},
    ),
    "connected_account.onboarding_link_created": (
        None,
        "An onboarding link for the account's holder. Never stored: a replay of the "
        "command is answered with `url` null.",
        {
            "connected_account_id": {"type": "string"},
            "url": {
                "type": ["string", "null"],
                "description": "the onboarding URL, a bearer credential for one visit "
                "until `expires_at` (never log or store it); null in a replay (the same "
                "command id or idempotency key again): send a new command id and a new "
                "idempotency key (or none) for a new link",
            },
            "expires_at": {"type": "string", "format": "date-time"},
        },
    ),
    "connected_account.updated": (
        "connected_account",
        "`connected_account.refresh` read the account back: its status (`enabled`, "
        "`restricted`, `rejected`, or still `pending`) and requirements as they are now "
        "(one `rejected`, final, answered from its record).",
        {
            "previous_status": {
                "type": "string",
                "description": "the account's status before the refresh",
            },
        },
    ),
    "transfer.created": (
        "transfer",
        "The transfer was made: `amount` moved to `connected_account_id` (from `payment_id`'s "
        "funds when named: `related` holds the payment, its `amount_transferred` grown).",
        {},
    ),
    "transfer.reversed": (
        "transfer",
        "All or part of the transfer came back from its connected account: "
        "`amount_reversed` in all, `reversed` once nothing is left (`related`: its "
        "payment, `amount_transferred` less what came back).",
        {
            "previous_status": {
                "type": "string",
                "description": "the transfer's status before the reversal",
            },
            "amount_reversed_now": {
                "type": "integer",
                "description": "minor units reversed beyond what paystream had "
                "recorded: this reversal's, plus any reversal of a parked "
                "`transfer.reverse` it was the first to learn (a `transfer.refresh`: "
                "what was reversed since paystream last read it); sum it, never count "
                "`transfer.reversed` outcomes",
            },
        },
    ),
    "transfer.updated": (
        "transfer",
        "`transfer.refresh` read the transfer back with nothing reversed since (one "
        "`reversed`, final, answered from its record).",
        {
            "previous_status": {
                "type": "string",
                "description": "the transfer's status before the refresh (unchanged)",
            },
        },
    ),
    "command.rejected": (
        None,
        "The command was refused; `reason` is machine-readable, `message` for people.",
        {},
    ),
}

_ENTITIES: dict[str, type[records.EntityRecord]] = {
    "customer": records.CustomerRecord,
    "payment_method": records.PaymentMethodRecord,
    "payment": records.PaymentRecord,
    "refund": records.RefundRecord,
    "dispute": records.DisputeRecord,
    "subscription": records.SubscriptionRecord,
    "invoice": records.InvoiceRecord,
    "payout": records.PayoutRecord,
    "tax_rate": records.TaxRateRecord,
    "tax_calculation": records.TaxCalculationRecord,
    "connected_account": records.ConnectedAccountRecord,
    "transfer": records.TransferRecord,
}
_STATUSES: dict[str, type[StrEnum]] = {
    "payment": PaymentStatus,
    "refund": RefundStatus,
    "dispute": DisputeStatus,
    "subscription": SubscriptionStatus,
    "invoice": InvoiceStatus,
    "payout": PayoutStatus,
    "connected_account": ConnectedAccountStatus,
    "transfer": TransferStatus,
}
# The views' path segment per entity type.
ENTITY_KINDS = {f"{name}s": name for name in _ENTITIES}


def _defaults() -> Settings:
    """Settings as documented: the defaults, whatever this environment sets."""
    return Settings.model_construct()


# ---- JSON schemas -------------------------------------------------------------------


def _strip_titles(schema: Any) -> Any:
    """Pydantic's per-property titles repeat the property names."""
    if isinstance(schema, list):
        return [_strip_titles(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key == "properties":
            out[key] = {name: _strip_titles(sub) for name, sub in value.items()}
        elif key != "title":
            out[key] = _strip_titles(value)
    return out


def _model_schema(
    model: type[BaseModel], components: Doc, mode: JsonSchemaMode = "validation"
) -> Doc:
    """``model``'s JSON schema; shared definitions go to ``components`` (refs point there)."""
    schema = model.model_json_schema(ref_template=_REFS, mode=mode)
    for name, sub in schema.pop("$defs", {}).items():
        components[name] = _strip_titles(sub)
    return {"title": schema.pop("title"), **_strip_titles(schema)}


# The white space str.strip() (normalise_currency) takes off, spelled out: Python's
# str.isspace() characters, not ECMA-262's `\s` (JSON Schema patterns' dialect), another
# set (tests/test_docs.py checks it against str.isspace()).
_STRIPPED = (
    "[\\u0009-\\u000d\\u001c-\\u0020\\u0085\\u00a0\\u1680\\u2000-\\u200a"
    "\\u2028\\u2029\\u202f\\u205f\\u3000]*"
)
# What a command's `currency` takes (money.normalise_currency): an accepted code in any
# letter case, white space around it ignored. Not an enum: mixed case and the white space
# make too many spellings.
_CURRENCY_PATTERN = (
    f"^{_STRIPPED}(?:"
    + "|".join("".join(f"[{c}{c.lower()}]" for c in code) for code in sorted(CURRENCY_EXPONENTS))
    + f"){_STRIPPED}$"
)


def _command_schema(kind: str, components: Doc) -> Doc:
    schema = _model_schema(COMMANDS[kind], components)
    props = schema["properties"]
    if kind == "payment.create":
        # The model's validator: exactly one of the two, not null.
        schema["oneOf"] = [
            {"required": [name], "properties": {name: {"type": "string"}}}
            for name in ("payment_method_id", "payment_method_token")
        ]
    if "amount" in props:
        # JSON Schema's `integer` takes any number whose fraction is zero; the model
        # (StrictInt) takes integer literals only, and a schema cannot tell them apart.
        props["amount"]["description"] = (
            "minor units of the currency, as a JSON integer literal: no fraction or "
            "exponent (`100.0` and `1e2` are refused, `validation_error`, though JSON "
            "Schema's `integer` takes them)"
        )
    if kind == "payout.create":
        # The model's validator (stripe_rules.payout_descriptor_problem): what the
        # pattern cannot say.
        props["statement_descriptor"]["description"] = (
            "at most 22 characters, none of `<>\\'\"` (the pattern), at least one letter "
            "A-Z, and no control or format characters (line breaks, NUL, bidirectional "
            "overrides, zero-width characters): `validation_error`"
        )
    if "currency" in props:
        props["currency"] = {
            "type": "string",
            "pattern": _CURRENCY_PATTERN,
            "description": "ISO 4217 code, in any letter case (`USD`, `usd`, `Usd`), white "
            "space around it ignored; the pattern takes exactly those. Accepted, each with "
            "the decimals `amount` counts in (Stripe's: MGA has none, unlike ISO 4217): "
            + ", ".join(
                f"{code} {CURRENCY_EXPONENTS[code]}" for code in sorted(CURRENCY_EXPONENTS)
            ),
        }
    return schema


def _entity_schema(entity_type: str, components: Doc, *, tagged: bool) -> Doc:
    """An entity as published (``object`` of an outcome) or, ``tagged``, as the entity
    view answers it (with ``entity_type``); never its ``applied`` bookkeeping."""
    schema = _model_schema(_ENTITIES[entity_type], components, mode="serialization")
    props = schema["properties"]
    props.pop("applied")
    statuses = _STATUSES.get(entity_type)
    if statuses is not None:
        # A plain str in the record (kept as stored); only the gateways' statuses are
        # ever written to it.
        props["status"] = {"enum": [s.value for s in statuses]}
    if tagged:
        props["entity_type"] = {"const": entity_type}
    else:
        props.pop("entity_type")
    required = [p for p in schema.get("required", []) if p in props]
    schema["required"] = ["entity_type", *required] if tagged else required
    return schema


def _ref(name: str) -> Doc:
    return {"$ref": f"#/components/schemas/{name}"}


_STR = {"type": "string"}
_ID_MAX = pipeline.ID_MAX_CHARS
_INT = {"type": "integer"}
_COUNTS = {"type": "object", "additionalProperties": _INT}


def _gateway_error() -> Doc:
    return {
        "type": "object",
        "description": "A provider's error as outcomes carry it (no secrets, no card data).",
        "required": ["code", "message", "retryable", "provider"],
        "properties": {
            "code": {
                "type": "string",
                "description": "provider-neutral code (`paystream/gateways/errors.py`)",
            },
            "message": _STR,
            "retryable": {
                "type": "boolean",
                "description": "the same request may succeed later with nothing changed; "
                "on `payout.failed`, true only for the bank failure codes "
                "`could_not_process` and `insufficient_funds` (any other needs the bank "
                "account changed first)",
            },
            "provider": _STR,
            "decline_code": _STR,
            "provider_request_id": _STR,
            "provider_payment_id": _STR,
        },
    }


def _outcome_schemas(components: Doc) -> None:
    for entity_type in _ENTITIES:
        components[_pascal(entity_type)] = _entity_schema(entity_type, components, tagged=False)
    components["GatewayError"] = _gateway_error()
    components["RelatedEntity"] = {
        "type": "object",
        "description": "Another entity the command wrote (a refund's payment, a charge's "
        "dispute), with its post-image.",
        "required": ["entity_type", "entity_id", "version", "object"],
        "properties": {
            "entity_type": {"enum": list(_ENTITIES)},
            "entity_id": _STR,
            "version": _INT,
            "object": {"oneOf": [_ref(_pascal(e)) for e in _ENTITIES]},
        },
    }
    components["ProviderDeletion"] = {
        "description": "What the provider did: `deleted`; `not_found` (it no longer had the "
        "customer: deleted there before, or the tenant's credentials now reach another "
        "account, so check there); or, for an erasure only, `other_provider` (the customer "
        "was made through a provider the tenant has since left: delete it there).",
        "enum": [handlers.DELETED_THERE, handlers.NOT_FOUND_THERE, handlers.OTHER_PROVIDER],
    }
    components["Export"] = {
        "type": "object",
        "description": "Every list sorted by id. `disputes`, `subscriptions` and `invoices` "
        "are absent from an export a version before them made, answered again from its "
        "stored copy (a resend within the id's window).",
        "required": ["customer", "payment_methods", "payments", "refunds"],
        "properties": {
            "customer": _ref("Customer"),
            "payment_methods": {"type": "array", "items": _ref("PaymentMethod")},
            "payments": {"type": "array", "items": _ref("Payment")},
            "refunds": {"type": "array", "items": _ref("Refund")},
            "disputes": {
                "type": "array",
                "items": _ref("Dispute"),
                "description": "the disputes of the customer's payments",
            },
            "subscriptions": {"type": "array", "items": _ref("Subscription")},
            "invoices": {
                "type": "array",
                "items": _ref("Invoice"),
                "description": "the invoices of the customer's subscriptions",
            },
            "truncated": {
                "description": "full counts of the lists cut short (the lists share the "
                "byte budget in the order above: one is cut only when those before it are "
                "whole)",
                **_COUNTS,
            },
        },
    }
    components["ErasedExport"] = {
        "type": "object",
        "description": "An export answered again after its customer's erasure "
        "(tables/records.py scrubs the stored answer).",
        "required": ["erased"],
        "properties": {"erased": {"const": True}},
        "additionalProperties": False,
    }
    components["OutcomeData"] = {
        "type": "object",
        "description": "`data` of every outcome but `command.rejected`.",
        "required": ["tenant_id", "command_id"],
        "properties": {
            "tenant_id": _STR,
            "command_id": {"type": "string", "description": "the command's `id`"},
            "entity_type": {"enum": list(_ENTITIES)},
            "entity_id": _STR,
            "version": {"type": "integer", "description": "the entity's version after it"},
            "object": {"description": "the entity after the command (its post-image)"},
            "related": {"type": "array", "items": _ref("RelatedEntity")},
            "error": _ref("GatewayError"),
            "answered_by": {
                "type": "string",
                "description": "a create let through once whose entity another command of "
                "the same request made: that command's id (this answer is its answer)",
            },
        },
    }
    components["RejectReason"] = {
        "type": "string",
        "description": "Why a command was rejected:\n"
        + "\n".join(f"- `{r.value}`: {REJECT_REASONS[r]}" for r in RejectReason),
        "enum": [r.value for r in RejectReason],
    }
    components["CommandRejected"] = {
        "type": "object",
        "description": "`data` of `command.rejected`.",
        "required": ["command_type", "reason", "message"],
        "properties": {
            "command_type": {"type": "string", "description": "the type after the prefix"},
            "reason": _ref("RejectReason"),
            "message": _STR,
            "command_id": {
                "type": "string",
                "description": "with `answered_by`: this command's `id` (the rejection is "
                "the other command's answer, given again under this one)",
            },
            "answered_by": {
                "type": "string",
                "description": "a create let through once whose request another command "
                "made: that command's id (its rejection is this command's answer)",
            },
            "errors": {
                "type": "array",
                "maxItems": pipeline.VALIDATION_ERRORS_SHOWN,
                "items": {
                    "type": "object",
                    "required": ["loc", "msg", "type"],
                    "properties": {"loc": _STR, "msg": _STR, "type": _STR},
                },
            },
            "error": _ref("GatewayError"),
            "limit": {
                "description": "the tenant limit that refused it",
                "enum": list(LIMIT_NAMES),
            },
            "retry_after_ms": _INT,
            "currency": _STR,
            "allowed": {
                "description": "the limit's amount or count; for `currencies`, those allowed",
                "oneOf": [_INT, {"type": "array", "items": _STR}],
            },
            "used": _INT,
            "held": {
                "type": "integer",
                "description": "held by those the limit counts (payments, transfers or payouts) "
                "not yet answered",
            },
            "day": {"type": "string", "format": "date"},
        },
    }


def _pascal(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


def _outcome_payload(outcome: str) -> Doc:
    if outcome == "command.rejected":
        return _ref("CommandRejected")
    entity_type, _summary, extra = OUTCOMES[outcome]
    own: Doc = {"properties": dict(extra), "required": list(_REQUIRED.get(outcome, ()))}
    if entity_type is not None:
        own["properties"] |= {"entity_type": {"const": entity_type}}
        own["properties"] |= {"object": _ref(_pascal(entity_type))}
        own["required"] = ["entity_type", "entity_id", "version", "object", *own["required"]]
    if not own["required"]:
        del own["required"]
    return {"allOf": [_ref("OutcomeData"), own]}


# Outcome data fields an outcome type always has, beyond its entity's.
_REQUIRED: dict[str, tuple[str, ...]] = {
    "customer.deleted": ("provider_deletion",),
    "customer.exported": ("customer_id", "export"),
    "payment_method.attach_failed": ("id", "error"),
}


# ---- AsyncAPI -----------------------------------------------------------------------


def _header(description: str, **schema: Any) -> Doc:
    return {"type": "string", "description": description, **schema}


def _command_headers() -> Doc:
    return {
        "type": "object",
        "description": "Binary content mode: the CloudEvents attributes as `ce_*` Kafka headers "
        "(structured mode: `content-type: application/cloudevents+json` and the attributes in "
        "the value). Headers other than `ce_*`, `content-type` and paystream's own `paystream-*` "
        "(tracing ids and the like) are neither read nor kept.",
        "required": ["ce_specversion", "ce_id", "ce_source", "ce_type", "ce_tenantid"],
        "properties": {
            "ce_specversion": {"const": "1.0"},
            "ce_id": _header(
                f"the command id (required; at most {_ID_MAX} characters). One id names one "
                "request for the idempotency window: another request under an id the tenant "
                "used is an `idempotency_conflict`, whatever its `idempotencykey`",
                maxLength=_ID_MAX,
            ),
            "ce_source": _header("the producer (CloudEvents `source`)"),
            "ce_type": _header(f"`{COMMAND_PREFIX}<domain>.<verb>`", maxLength=_ID_MAX),
            "ce_tenantid": _header("the tenant (must equal the record key)", maxLength=_ID_MAX),
            "ce_idempotencykey": _header(
                f"optional, at most {_ID_MAX} characters, no control characters; defaults to `id` "
                "(in structured mode a JSON number or boolean is read as its string, `0`, "
                "`true`, as binary mode carries it); "
                "remembered 24 h (PAYSTREAM_IDEMPOTENCY_TTL_SECONDS). A command under a key "
                "already answered (same request) gets the first command's event again",
                maxLength=_ID_MAX,
            ),
            "ce_traceparent": _header(
                "optional (W3C trace context): the worker's span for the command is its "
                "child, and the outcome carries that span's context (same trace)"
            ),
            "ce_tracestate": _header("optional (W3C trace context), with `traceparent`"),
            "ce_time": _header(
                "optional; when absent, the record's timestamp stands in (outcomes of a "
                "redelivered command stay byte-identical)",
                format="date-time",
            ),
            "ce_datacontenttype": _header("`application/json` when given"),
            "content-type": _header("`application/json` (binary mode)"),
            "paystream-first-attempt-ms": _header(
                "set by `paystream dlq replay`: when the command was first run (ms since the "
                "epoch), believed only under the seal"
            ),
            "paystream-first-attempt-seal": _header(
                "set by `paystream dlq replay`: `<master key id>.<hex HMAC>` over the time "
                "and the command as sent"
            ),
            "paystream-reconciled": _header(
                "set by `paystream dlq replay --include-stale-as-of`: a stale command an operator "
                "checked with the provider"
            ),
            "paystream-request": _header(
                "optional, set by `paystream.client` (16 to 64 lower-case letters): echoed on "
                "this record's outcome, so that a sender tells its own send's answer from another's"
            ),
            "paystream-unanswered-refusal": _header(
                "set by the worker on a command parked unanswered while its tenant was "
                "suspended: re-driven, it is refused unless the provider took it"
            ),
        },
    }


def _outcome_headers() -> Doc:
    return {
        "type": "object",
        "description": "Binary content mode (the default, PAYSTREAM_CLOUDEVENTS_MODE): the "
        "CloudEvents attributes as `ce_*` headers; structured mode puts them in the value.",
        "required": [
            "ce_specversion",
            "ce_id",
            "ce_source",
            "ce_type",
            "ce_time",
            "ce_tenantid",
            "ce_causationid",
            "ce_partitionkey",
            "content-type",
        ],
        "properties": {
            "ce_specversion": {"const": "1.0"},
            "ce_id": _header(
                "derived from (tenant, command id, outcome type, and the command record that "
                "first produced it): a redelivered command yields a byte-identical event",
                format="uuid",
            ),
            "ce_source": _header("`/paystream/tenants/{tenant}/{domain}`"),
            "ce_type": _header(f"`{OUTCOME_PREFIX}<domain>.<event>`"),
            "ce_time": _header("the command's time", format="date-time"),
            "ce_subject": _header("the entity id, when the outcome names one"),
            "ce_tenantid": _header("the tenant"),
            "ce_causationid": _header(
                "the command's `id` (an over-long id, or one holding a control character or "
                "a Unicode noncharacter: `sha256:<hex digest of the id>`)"
            ),
            "ce_partitionkey": _header("the tenant (the record key)"),
            "ce_traceparent": _header(
                "when the command had one: the worker's span for the command (the "
                "command's trace id and flags, a span id derived from the command, the "
                "same on every emission); none when the command's `traceparent` is not "
                "W3C trace context"
            ),
            "ce_tracestate": _header(
                "the command's `tracestate`, as it came, when it is valid W3C trace state "
                "beside a valid `traceparent` (a replay: the first emission's)"
            ),
            "content-type": {"const": "application/json"},
            ANSWERS_HEADER: _header(
                "on an outcome sent again for another command under an idempotency key "
                "already answered (same request): that command's id"
            ),
            REQUEST_HEADER: _header(
                "the `paystream-request` header of the command record this outcome answers, "
                "when it had one of 16-64 lower-case letters (paystream.client sets one per "
                "send): two senders of one command id each find their own outcome"
            ),
        },
    }


def _dead_letter_headers(reasons: list[str], redacted: list[str], what: str) -> Doc:
    return {
        "type": "object",
        "description": f"paystream's headers beside the {what}'s own `ce_*` and `content-type` "
        "(none when its bytes are not kept).",
        "required": ["paystream-dlq-reason", "paystream-dlq-detail", "paystream-source"],
        "properties": {
            "paystream-dlq-reason": {"enum": reasons},
            "paystream-dlq-detail": _header(
                "the worker's detail (at most 500 characters, card numbers redacted)"
            ),
            "paystream-source": _header(f"`<topic>/<partition>/<offset>` of the {what}"),
            "paystream-dlq-redacted": {
                "enum": redacted,
                "description": "why the bytes were not kept (card data; an outcome's also "
                "a next action or personal data); `dlq replay` passes it over",
            },
            "paystream-dlq-answered": _header(
                "the rejection reason its sender was given (a final answer): `dlq replay` "
                "never re-sends it"
            ),
            "paystream-dlq-dropped": {
                "enum": ["too_large_to_keep", "not_scanned"],
                "description": f"not kept (`paystream-source` says where it is): over "
                f"{pipeline.DEAD_LETTER_KEEP_MAX_BYTES // 1024} KiB, or not_scanned: the worker "
                "failed to dead-letter it as usual (see its log)",
            },
            "paystream-first-attempt-ms": _header("when it was first run, ms since the epoch"),
        },
    }


def _key(description: str) -> Doc:
    return {
        "kafka": {"key": {"type": "string", "description": description}, "bindingVersion": "0.5.0"}
    }


def _channel(address: str, description: str, messages: Doc, **config: Any) -> Doc:
    binding: Doc = {"topic": address, "partitions": _defaults().partitions}
    if config:
        binding["topicConfiguration"] = config
    return {
        "address": address,
        "description": description,
        "messages": messages,
        "bindings": {"kafka": {**binding, "bindingVersion": "0.5.0"}},
    }


def asyncapi() -> Doc:
    """The AsyncAPI 3.0 document of the Kafka interface."""
    s = _defaults()
    schemas: Doc = {}
    messages: Doc = {}
    for kind in COMMANDS:
        name = COMMANDS[kind].__name__
        schemas[name] = _command_schema(kind, schemas)
        messages[f"command.{kind}"] = {
            "name": kind,
            "title": COMMAND_PREFIX + kind,
            "summary": COMMAND_SUMMARIES.get(kind, COMMANDS[kind].__doc__ or kind),
            "contentType": "application/json",
            "headers": {
                "allOf": [
                    _ref("CommandHeaders"),
                    {"properties": {"ce_type": {"const": COMMAND_PREFIX + kind}}},
                ]
            },
            "payload": _ref(name),
            "correlationId": {"$ref": "#/components/correlationIds/command"},
            "bindings": _key("the tenant id"),
        }
    _outcome_schemas(schemas)
    for outcome, (_entity, summary, _extra) in OUTCOMES.items():
        messages[f"outcome.{outcome}"] = {
            "name": outcome,
            "title": OUTCOME_PREFIX + outcome,
            "summary": summary,
            "contentType": "application/json",
            "headers": {
                "allOf": [
                    _ref("OutcomeHeaders"),
                    {"properties": {"ce_type": {"const": OUTCOME_PREFIX + outcome}}},
                ]
            },
            "payload": _outcome_payload(outcome),
            "correlationId": {"$ref": "#/components/correlationIds/outcome"},
            "bindings": _key("the tenant id"),
        }
    schemas["CommandHeaders"] = _command_headers()
    schemas["OutcomeHeaders"] = _outcome_headers()
    schemas["StructuredCloudEvent"] = {
        "type": "object",
        "description": f"Structured content mode (`content-type: {STRUCTURED_CONTENT_TYPE}`): "
        "the record value is the whole event; its attributes are those of the `ce_*` headers "
        "without the prefix, and `data`, a JSON object, is the message's payload (a command "
        "whose data comes as `data_base64` is refused `validation_error`).",
        "required": ["specversion", "id", "source", "type"],
        "properties": {
            "specversion": {"const": "1.0"},
            "id": _STR,
            "source": _STR,
            "type": _STR,
            "data": {"type": "object"},
        },
    }
    schemas["DeadLetterHeaders"] = _dead_letter_headers(
        [
            "payload_too_large",
            "redrive_too_large",
            "not_a_cloudevent",
            "unreadable_batch",
            "internal_error",
        ],
        ["card_number", "card_security_code"],
        "command",
    )
    schemas["LedgerDeadLetterHeaders"] = _dead_letter_headers(
        [
            "ledger_invalid_event",
            "ledger_forbidden_data",
            "ledger_event_id_conflict",
            "ledger_data_key_unreadable",
            "ledger_database_rejected",
            "ledger_undecodable",
        ],
        list(DEAD_LETTER_REDACTIONS),
        "outcome",
    )
    schemas["ParkedHeaders"] = {
        "type": "object",
        "description": "paystream's headers beside the command's own `ce_*` and `content-type`.",
        "required": ["paystream-park-reason", "paystream-source", "paystream-first-attempt-ms"],
        "properties": {
            "paystream-park-reason": _header(
                "the provider error code that exhausted the retries (`timeout`, "
                "`provider_unavailable`, `rate_limited`, `processing_error`), `stale` (older "
                "than the providers keep idempotency keys), `provider_unanswered` (the provider "
                "could not be asked whether it took the request; asked again when re-driven), "
                "`provider_changed` (let through to one provider account, re-driven after its "
                "tenant moved to another, where its key would be a new request), "
                "`provider_key_conflict` (let through once, then refused by the provider as "
                "another request under its key: the first attempt ran; reconcile it there), "
                "or the rejection reason of a command let through once that cannot run now "
                "(`unknown_tenant`, `internal_error`, ...)"
            ),
            "paystream-source": _header("`<topic>/<partition>/<offset>` of the command"),
            "paystream-first-attempt-ms": _header("the broker's time of the command's first run"),
            "paystream-park-detail": _header(
                "what the provider or its circuit breaker said, for a park after retries "
                "(at most 500 characters, card numbers redacted; `dlq list` shows it)"
            ),
        },
    }
    tenant = _model_schema(Tenant, schemas)
    schemas["Tenant"] = tenant
    command_refs = {
        m: {"$ref": f"#/components/messages/{m}"} for m in messages if m.startswith("command.")
    }
    outcome_refs = {
        m: {"$ref": f"#/components/messages/{m}"} for m in messages if m.startswith("outcome.")
    }
    messages["deadLetter"] = {
        "name": "dead-letter",
        "summary": "A record that could not be run, with the reason in headers.",
        "contentType": "application/octet-stream",
        "headers": _ref("DeadLetterHeaders"),
        "payload": {"description": "the record's value as it came (empty when not kept)"},
    }
    messages["parkedCommand"] = {
        "name": "parked-command",
        "summary": "A command parked for `paystream dlq replay`, as it came.",
        "headers": _ref("ParkedHeaders"),
        "payload": {"description": "the command record's value as it came"},
        "bindings": _key("the tenant id"),
    }
    messages["tenant"] = {
        "name": "tenant",
        "summary": "A tenant's registry record; an empty value (or a tombstone) removes it.",
        "contentType": "application/json",
        "payload": {"oneOf": [_ref("Tenant"), {"type": "null"}]},
        "bindings": _key("the tenant id as a JSON string"),
    }
    messages["ledgerDeadLetter"] = {
        "name": "ledger-dead-letter",
        "summary": "An outcome the ledger refused (listed by `paystream dlq list --topic "
        "ledger`, never replayed).",
        "headers": _ref("LedgerDeadLetterHeaders"),
        "payload": {
            "description": "the outcome record's value; empty when "
            "`paystream-dlq-redacted` names why (card data, a payment's next action, which "
            "holds the customer's credential, or a customer's personal data: the outcome "
            "itself stays on the events topic)"
        },
    }
    schemas.update(_insights_schemas())
    for name, kind, schema, summary in (
        ("analyticsWindow", WINDOW_TYPE, "AnalyticsWindow",
         "One tenant's outcomes in one window; published again, with more `events`, if an "
         "outcome arrives for it later: keep the publication with the most."),
        ("fraudAlert", ALERT_TYPE, "FraudAlert",
         "A fraud rule fired: once per rule, subject and fraud window."),
    ):  # fmt: skip
        messages[name] = {
            "name": name,
            "title": kind,
            "summary": summary,
            "contentType": "application/json",
            "headers": {
                "allOf": [_ref("InsightHeaders"), {"properties": {"ce_type": {"const": kind}}}]
            },
            "payload": _ref(schema),
            "bindings": _key("the tenant id"),
        }
    channels = {
        "commands": _channel(
            s.commands_topic,
            "Commands are CloudEvents 1.0, Kafka key = tenant id, in binary (`ce_*` headers) or "
            "structured content mode, detected per record. A value may be at most "
            f"{s.command_max_bytes // 1024} KiB (PAYSTREAM_COMMAND_MAX_BYTES), key and CloudEvents "
            f"headers together {ATTRIBUTES_MAX_BYTES // 1024} KiB: larger "
            "ones are dead-lettered. Created with `message.timestamp.type=LogAppendTime` "
            "(tenant limits count by the broker's time).",
            command_refs,
        ),
        "events": _channel(
            s.events_topic,
            "One CloudEvent outcome per command, key = tenant id, binary mode by default "
            "(PAYSTREAM_CLOUDEVENTS_MODE).",
            outcome_refs,
        ),
        "deadLetters": _channel(
            s.dlq_topic,
            "Bytes that are not CloudEvents (or are oversized, or met a failure of ours), with "
            "the reason in headers; `paystream dlq list|replay`.",
            {"deadLetter": {"$ref": "#/components/messages/deadLetter"}},
        ),
        "retry": _channel(
            s.retry_topic,
            "Commands whose transient provider failures outlasted the retries (or that cannot "
            "run now), parked for `paystream dlq replay`, which re-sends each to the "
            "commands-topic partition it came from.",
            {"parkedCommand": {"$ref": "#/components/messages/parkedCommand"}},
        ),
        "tenants": _channel(
            s.tenants_topic,
            "The tenant registry (compacted): every worker follows the whole topic and runs no "
            "command before it has read it to its end. Never add partitions to it.",
            {"tenant": {"$ref": "#/components/messages/tenant"}},
            **{"cleanup.policy": ["compact"]},
        ),
        "ledgerDeadLetters": _channel(
            s.ledger_dlq_topic,
            "Outcomes the ledger sink refused.",
            {"ledgerDeadLetter": {"$ref": "#/components/messages/ledgerDeadLetter"}},
        ),
        "analytics": _channel(
            s.analytics_topic,
            "Analytics windows of registered tenants' outcomes (workers running `insights`), "
            f"per PAYSTREAM_INSIGHTS_WINDOW_SECONDS ({s.insights_window_seconds} s) by the "
            "command's time.",
            {"analyticsWindow": {"$ref": "#/components/messages/analyticsWindow"}},
        ),
        "fraud": _channel(
            s.fraud_topic,
            "Fraud alerts raised from registered tenants' outcomes (workers running `insights`).",
            {"fraudAlert": {"$ref": "#/components/messages/fraudAlert"}},
        ),
    }
    operations = {
        "runCommands": {
            "action": "receive",
            "channel": {"$ref": "#/channels/commands"},
            "summary": "Workers run each command against the tenant's payment gateway.",
            "bindings": {
                "kafka": {
                    "groupId": {"type": "string", "description": "PAYSTREAM_APP_ID"},
                    "bindingVersion": "0.5.0",
                }
            },
            "reply": {"channel": {"$ref": "#/channels/events"}},
        },
        "emitOutcomes": _operation("send", "events", "One outcome per command."),
        "storeOutcomes": _operation(
            "receive", "events", "The ledger sink writes every outcome to PostgreSQL."
        ),
        "deadLetter": _operation("send", "deadLetters", "Records that cannot be run."),
        "park": _operation("send", "retry", "Commands parked after their retries."),
        "followRegistry": _operation(
            "receive", "tenants", "Every worker reads the whole registry."
        ),
        "registerTenants": _operation(
            "send", "tenants", "`paystream tenants add|limits|suspend|activate`."
        ),
        "parkOutcomes": _operation("send", "ledgerDeadLetters", "Outcomes the ledger refused."),
        "publishWindows": _operation(
            "send",
            "analytics",
            "Each closed window, once, and again when a late outcome changes it.",
        ),
        "publishAlerts": _operation("send", "fraud", "Each fraud rule that fires."),
    }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "paystream Kafka interface",
            "version": __version__,
            "description": "Upstream services send payment *commands* as CloudEvents to Kafka; "
            "workers run them against the tenant's payment gateway and emit one CloudEvent "
            "*outcome* per command. Generated by `paystream docs` from the code: do not edit.",
        },
        "defaultContentType": "application/json",
        "servers": {
            "kafka": {
                "host": "{broker}",
                "protocol": "kafka",
                "description": "KAFKA_BROKER_URL (`kafka://host:9092[;host2:9092]`)",
                "variables": {"broker": {"default": "localhost:9092"}},
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {
            "schemas": dict(sorted(schemas.items())),
            "messages": messages,
            "correlationIds": {
                "command": {"location": "$message.header#/ce_id"},
                "outcome": {"location": "$message.header#/ce_causationid"},
            },
        },
    }


# The window's keys present only in windows that have any (insights/events.py).
_WINDOW_OPTIONAL = (
    "payments_succeeded", "disputes", "subscriptions", "invoice_declines",
    "payouts", "payout_failures", "tax_collected", "application_fees", "transfers",
)  # fmt: skip


def _insights_schemas() -> Doc:
    """The insights' events (paystream/insights/events.py)."""
    count = {"type": "integer", "minimum": 0}
    counts = {"type": "object", "additionalProperties": count}
    money = _object(
        {
            name: {**count, "description": f"{what}, in minor units"}
            for name, what in (
                ("authorized", "held on cards (payment.authorized)"),
                ("captured", "taken (payment.succeeded: what each payment captured)"),
                ("refunded", "given back (refund.succeeded or refund.pending)"),
                ("declined", "asked for and refused by the cards' issuers (payment.failed)"),
                (
                    "refunds_failed",
                    "refunds counted given back when made, read back failed since "
                    "(refund.failed answering refund.refresh; present only when non-zero)",
                ),
            )
        },
    )
    money["required"] = [name for name in money["required"] if name != "refunds_failed"]
    window = _object(
        {
            "tenant_id": _STR,
            "window_start": {"type": "string", "format": "date-time"},
            "window_end": {"type": "string", "format": "date-time"},
            "events": {**count, "description": "outcomes counted (the most wins)"},
            "outcomes": {**counts, "description": "outcomes by type (`payment.succeeded`, ...)"},
            "money": {
                "type": "object",
                "description": "per ISO 4217 currency",
                "additionalProperties": money,
            },
            "declines": {**counts, "description": "failed payments by decline or error code"},
            "rejections": {**counts, "description": "`command.rejected` by reason"},
            "payments_succeeded": {
                "type": "object",
                "description": "per ISO 4217 currency, payments that succeeded in the window "
                "(money captured: at creation, at capture, or read back succeeded; not a "
                "payment read back as it was): the dispute rate's basis. Present only when "
                "there are any",
                "additionalProperties": count,
            },
            "disputes": {
                "type": "object",
                "description": "per ISO 4217 currency, disputes (chargebacks and inquiries) "
                "opened in the window (by the outcome whose command recorded each first: "
                "once per dispute) and lost (the network's decision read back, or accepted "
                "with `dispute.accept`; one reopened and lost again counts again). Present "
                "only when there are any",
                "additionalProperties": _object(
                    {
                        "opened": {**count, "description": "disputes opened"},
                        "opened_amount": {
                            **count,
                            "description": "their disputed amounts, in minor units",
                        },
                        "lost": {**count, "description": "disputes lost"},
                        "lost_amount": {**count, "description": "their amounts, in minor units"},
                    }
                ),
            },
            "subscriptions": {
                "type": "object",
                "description": "per ISO 4217 currency, subscriptions and their invoices "
                "(recurring revenue, apart from `money`, which is payments'): invoices paid "
                "in the window (new and paid, a first invoice or a renewal read back, or an "
                "open one found paid since: once per invoice), invoice payments declined "
                "(an invoice new and open, or voided with a failure: once per invoice), "
                "subscriptions created (active or trialing, or an incomplete or "
                "`requires_action` one read back live) and canceled (live ones only). "
                "One-off invoices count as invoices too: paid by `invoice.paid`, declined by "
                "each `invoice.payment_failed`. "
                "Present only when there are any",
                "additionalProperties": _object(
                    {
                        "created": {**count, "description": "subscriptions started"},
                        "canceled": {**count, "description": "live subscriptions canceled"},
                        "invoices_paid": {**count, "description": "invoices paid"},
                        "invoices_paid_amount": {
                            **count,
                            "description": "their amounts, in minor units",
                        },
                        "invoices_declined": {
                            **count,
                            "description": "invoices whose payment was declined",
                        },
                    }
                ),
            },
            "invoice_declines": {
                **counts,
                "description": "invoice payments declined, by decline or error code (as "
                "`declines` names a payment's; apart from it). Present only when there "
                "are any",
            },
            "payouts": {
                "type": "object",
                "description": "per ISO 4217 currency, payouts (the tenant's money sent to "
                "its bank: not revenue, not payment attempts): created in the window (in "
                "flight, or already paid, failed or canceled when made), paid, failed "
                "(returned by the bank, before or after paid) and canceled, each once per "
                "payout and status (a refresh repeating a status counts nothing again); "
                "`returned`: of the failed, those failed after they were paid (counted "
                "paid in their own window). Payouts in flight change by created less paid, "
                "canceled and failed not returned. Present only when there are any",
                "additionalProperties": _object(
                    {
                        name: {**count, "description": what}
                        for move, doing in (
                            ("created", "made"),
                            ("paid", "paid (arrived at the bank)"),
                            ("failed", "failed"),
                            ("returned", "failed after they were paid"),
                            ("canceled", "canceled"),
                        )
                        for name, what in (
                            (move, f"payouts {doing}"),
                            (f"{move}_amount", "their amounts, in minor units"),
                        )
                    }
                ),
            },
            "payout_failures": {
                **counts,
                "description": "payouts failed, by failure code (the bank's, as the payout "
                "names it: `account_closed`, `no_account`, `insufficient_funds`...; "
                "`unknown` for none). Present only when there are any",
            },
            "tax_collected": {
                "type": "object",
                "description": "per ISO 4217 currency, tax collected in the window, in "
                "minor units: `payments`, the `amount_tax` of payments that succeeded "
                "(their share of what a partial capture took, rounded half up), and "
                "`invoices`, the `tax` of invoices paid (subscriptions' and one-off); "
                "each once, as the "
                "payments and invoices are counted (contained in `money`'s `captured` and "
                "`subscriptions`' `invoices_paid_amount`; refunds take none back). Present "
                "only when there is any",
                "additionalProperties": _object(
                    {
                        "payments": {
                            **count,
                            "description": "tax of payments that succeeded, in minor units",
                        },
                        "invoices": {
                            **count,
                            "description": "tax of invoices paid, in minor units",
                        },
                    }
                ),
            },
            "application_fees": {
                "type": "object",
                "description": "per ISO 4217 currency, destination charges (payments on "
                "behalf of a connected account) that succeeded in the window and the "
                "application fees the tenant kept of them (at most what a partial capture "
                "took), each once, as the payments are counted (contained in `money`'s "
                "`captured`; refunds take none back). Present only when there are any",
                "additionalProperties": _object(
                    {
                        "payments": {
                            **count,
                            "description": "destination charges that succeeded",
                        },
                        "amount": {
                            **count,
                            "description": "application fees kept, in minor units",
                        },
                    }
                ),
            },
            "transfers": {
                "type": "object",
                "description": "per ISO 4217 currency, transfers to connected accounts "
                "(separate charges and transfers: the platform's balance moved out, not "
                "revenue) made in the window and reversals (money taken back), each "
                "outcome once (a redelivery or replay counts nothing again). Present only "
                "when there are any",
                "additionalProperties": _object(
                    {
                        "created": {**count, "description": "transfers made"},
                        "created_amount": {
                            **count,
                            "description": "what they moved, in minor units",
                        },
                        "reversed": {
                            **count,
                            "description": "reversals that took money back (in part or all)",
                        },
                        "reversed_amount": {
                            **count,
                            "description": "what they took back, in minor units",
                        },
                    }
                ),
            },
        },
        "One tenant's outcomes in one analytics window.",
    )
    window["required"] = [name for name in window["required"] if name not in _WINDOW_OPTIONAL]
    alert = _object(
        {
            "tenant_id": _STR,
            "rule": {
                "enum": ["subject_declines", "decline_burst"],
                "description": "`subject_declines`: one customer or saved payment method reached "
                "PAYSTREAM_FRAUD_SUBJECT_DECLINES card declines in the window; `decline_burst`: "
                "the tenant reached PAYSTREAM_FRAUD_BURST_DECLINES, at least half its payment "
                "attempts, or PAYSTREAM_FRAUD_FLOOD_DECLINES at least a fifth of the "
                "payment attempts its issuers answered and an eighth of all (card testing)",
            },
            "subject_type": {"enum": ["customer", "payment_method", "tenant"]},
            "subject": _STR,
            "window_start": {"type": "string", "format": "date-time"},
            "window_end": {"type": "string", "format": "date-time"},
            "threshold": count,
            "observed": count,
        },
        "A fraud rule that fired.",
    )
    headers = _object(
        {
            "ce_id": _header("derived from what the event is about: republished, the same id"),
            "ce_source": _header("`/paystream/tenants/{tenant}/analytics` or `.../fraud`"),
            "ce_type": _header("the event type"),
            "ce_specversion": {"const": "1.0"},
            "ce_time": _header("the window's end (analytics) or start (fraud), RFC 3339"),
            "ce_tenantid": _header("the tenant id"),
            "ce_partitionkey": _header("the tenant id"),
            "content-type": {"const": "application/json"},
        },
        "Binary content mode (structured with PAYSTREAM_CLOUDEVENTS_MODE=structured).",
    )
    return {"AnalyticsWindow": window, "FraudAlert": alert, "InsightHeaders": headers}


def _operation(action: str, channel: str, summary: str) -> Doc:
    return {"action": action, "channel": {"$ref": f"#/channels/{channel}"}, "summary": summary}


# ---- OpenAPI ------------------------------------------------------------------------

_GUARDED: list[Doc] = [{"bearerAuth": []}, {"tokenCookie": []}]
_NO_STORE = {
    "Cache-Control": {
        "description": "`no-store`: personal data and the fleet's figures are not cached",
        "schema": {"const": "no-store"},
    }
}
_RETRY_AFTER = {"Retry-After": {"description": "seconds", "schema": {"const": "1"}}}


def _json(schema: str, description: str, headers: Doc | None = None) -> Doc:
    response: Doc = {
        "description": description,
        "content": {"application/json": {"schema": _ref(schema)}},
    }
    if headers:
        response["headers"] = headers
    return response


def _either_json(schema: str, other: str, description: str) -> Doc:
    """A worker's answer, or (the same route) a `paystream ingress`'s."""
    return {
        "description": description,
        "content": {"application/json": {"schema": {"oneOf": [_ref(schema), _ref(other)]}}},
    }


_UNAUTHORIZED = _json("Error", "PAYSTREAM_WEB_TOKEN is set and the request does not bear it")
_HOST_REFUSED = _json(
    "Error",
    "PAYSTREAM_WEB_TOKEN is unset and the Host header is a name an outside web page could "
    "own (not an address, `localhost`, a name without a dot, the worker's own or "
    "PAYSTREAM_WEB_ALLOWED_HOSTS): DNS rebinding",
)
_BAD_HOST = _json("Error", "the Host header is not a host[:port] (`bad_host`)")


def _object(properties: Doc, description: str = "") -> Doc:
    """A closed object: every property present, no other (as the views answer)."""
    schema: Doc = {"type": "object"}
    if description:
        schema["description"] = description
    return {
        **schema,
        "required": list(properties),
        "properties": properties,
        "additionalProperties": False,
    }


def _nullable(schema: Doc) -> Doc:
    return {"oneOf": [schema, {"type": "null"}]}


def _command_status_schema() -> Doc:
    """`/v1/tenants/{tenant}/commands/{key}` (tables/commands_view.py)."""
    time = {"type": "string", "format": "date-time"}
    outcome = {
        "type": "object",
        "description": "the outcome event the command was answered with (and a retry under "
        "its key is): look its entity up for the details; a rejection's reason and "
        "message; an onboarding link's `message` that it was made, its URL kept nowhere "
        "(in its outcome event only), and how to ask for another",
        "required": ["id", "type"],
        "properties": {
            "id": _STR,
            "type": {"type": "string", "pattern": "^com\\.paystream\\."},
            "time": time,
            "entity": _object({"kind": {"enum": list(ENTITY_KINDS)}, "id": _STR}),
            "reason": _STR,
            "message": _STR,
        },
        "additionalProperties": False,
    }
    return {
        "type": "object",
        "description": "What became of one command of the idempotency window, found by its "
        "idempotency key or, sent under another key, its id. `outcome` once it is `done`; "
        "`in_flight` (running, or let through before a crash) and `parked` (waiting on the "
        "retry topic for a replay) have none yet.",
        "required": [
            "tenant_id",
            "idempotency_key",
            "command_id",
            "command_type",
            "state",
            "expires_at",
        ],
        "properties": {
            "tenant_id": _STR,
            "idempotency_key": _STR,
            "command_id": {
                "description": "the command whose outcome the key holds (a retry under the "
                "key that finished one let through before names itself)",
                **_STR,
            },
            "command_type": _STR,
            "state": {"enum": ["in_flight", "parked", "done"]},
            "expires_at": {"description": "when the key is free again", **time},
            "outcome": outcome,
        },
        "additionalProperties": False,
    }


def _view_schemas() -> Doc:
    components: Doc = {}
    for entity_type in _ENTITIES:
        components[_pascal(entity_type)] = _entity_schema(entity_type, components, tagged=True)
    number = {"type": "number"}
    components |= {
        "Error": _object(
            {
                "error": {
                    "enum": [
                        "bad_host",
                        "unauthorized",
                        "host_not_allowed",
                        "not_found",
                        "bad_gateway",
                        "unavailable",
                        "bad_signature",
                        "payload_too_large",
                        "unsupported_media_type",
                        "request_timeout",
                        "bad_request",
                        "method_not_allowed",
                    ]
                },
                "message": _STR,
            }
        ),
        **_ingress_schemas(components),
        "CommandStatus": _command_status_schema(),
        "WebhookAnswer": {
            "description": "What came of a verified webhook (a 2xx: the provider does not "
            "send it again).",
            "oneOf": [
                _object(
                    {
                        "received": {"const": True},
                        "action": {"const": "refresh"},
                        "command_id": {
                            **_STR,
                            "description": "the `payment.refresh` (`refund.refresh`) "
                            "command's id, derived from the event's (an event sent again is "
                            "the same command)",
                        },
                    },
                    "a `payment.refresh` command was sent for the payment (a "
                    "`refund.refresh` for the refund)",
                ),
                _object(
                    {
                        "received": {"const": True},
                        "action": {"const": "ignored"},
                        "why": _STR,
                    },
                    "nothing paystream has not read: not a followed event, not a payment "
                    "paystream made (or one whose id no command may carry), another "
                    "tenant's or connected account's, one paystream has finished, or the "
                    "state paystream holds "
                    "(`requires_action`, `processing`, `authorized`)",
                ),
            ],
        },
        "Health": _object(
            {
                "ok": {"type": "boolean"},
                "uptime_s": {**number, "minimum": 0},
                "failing": {
                    "type": "array",
                    "items": _STR,
                    "description": "why the worker should be restarted: its command agent "
                    "wedged (behind, no progress for PAYSTREAM_LIVENESS_STALL_SECONDS), or a "
                    "rebalance that has not ended in PAYSTREAM_LIVENESS_SETTLING_SECONDS",
                },
                "excused": {
                    "type": "array",
                    "items": _STR,
                    "description": "the broker refusing the command agent's writes, when it "
                    "does: a stall meanwhile is not counted (a restart would not mend it)",
                },
            },
            "The worker answers, and its command agent is not wedged (a liveness probe).",
        ),
        "Ready": _object(
            {
                "ready": {"type": "boolean"},
                "waiting_for": {
                    "type": "array",
                    "items": _STR,
                    "description": "`tenant registry`, `partition assignment`, `rebalance`, "
                    "`table recovery`, or the worker's own stalled agent",
                },
                "stalled": {
                    "type": "array",
                    "description": "every agent behind with no progress for "
                    "PAYSTREAM_STALL_SECONDS",
                    "items": _object({"agent": _STR, "behind": _INT, "seconds": number}),
                },
                "publish_failing": {
                    **_nullable(_STR),
                    "description": "producing the command agent's batches failing now, for "
                    "how long and with what error (each attempt retried)",
                },
            }
        ),
        "IngressHealth": _object(
            {"alive": {"const": True}},
            "`paystream ingress` answers (it holds no state: a broker outage is no reason "
            "to restart it).",
        ),
        "IngressReady": {
            "type": "object",
            "description": "`paystream ingress`: ready once the tenant registry is read "
            "(and still followed), its producer connected and the brokers answer now, and "
            "not while it stops; when not, what it lacks.",
            "required": ["ready"],
            "properties": {
                "ready": {"type": "boolean"},
                "registry_loaded": {"type": "boolean"},
                "producer_connected": {"type": "boolean"},
            },
            "additionalProperties": False,
        },
        "ActivityEntry": _object(
            {
                "time": {"type": "string", "format": "date-time"},
                "tenant": _STR,
                "registered": {"type": "boolean"},
                "command": _STR,
                "outcome": _STR,
                "entity_id": _nullable(_STR),
                "amount": _nullable(_INT),
                "currency": _nullable(_STR),
                "reason": _nullable(_STR),
                "resent": {
                    "type": "boolean",
                    "description": "a repeated command's stored outcome, sent again (the "
                    "same event; no new effect)",
                },
            },
            "One recent outcome; `reason`: the rejection reason or the provider error code.",
        ),
        "Stats": _object(
            {
                "worker": _object(
                    {
                        "app_id": _STR,
                        "uptime_s": number,
                        "partitions": {
                            "type": "array",
                            "items": _INT,
                            "description": "the partitions this worker owns of its source topic",
                        },
                        "processed": _INT,
                        "ledger_processed": _INT,
                        "tables_recovering": {
                            "type": "boolean",
                            "description": "the tables are still replaying their changelogs: "
                            "the summaries count what was replayed so far",
                        },
                    }
                ),
                "activity": _object(
                    {
                        "recent": {"type": "array", "maxItems": 50, "items": _ref("ActivityEntry")},
                        "by_outcome": _COUNTS,
                        "by_tenant": _COUNTS,
                        "dead_letters": _INT,
                        "parked": _INT,
                        "total": _INT,
                    },
                    "This worker's outcomes since it started.",
                ),
                "parked_backlog": _nullable(
                    _object(
                        {
                            "waiting": _INT,
                            "oldest_s": _nullable(number),
                            "topics": {
                                "type": "object",
                                "description": "by topic (`retry`, `dlq`, as `paystream dlq "
                                "list --topic` names them)",
                                "additionalProperties": _object(
                                    {"waiting": _INT, "oldest_s": _nullable(number)}
                                ),
                            },
                            "measured_s_ago": number,
                        },
                        "Records on the retry and dead-letter topics no `paystream dlq replay` "
                        "has replayed or passed over yet (the fleet's topics, measured every "
                        "PAYSTREAM_PARKED_MEASURE_SECONDS), and how long the oldest has "
                        "waited (null: none, or not read in time); null before the first "
                        "measurement and while the broker cannot be asked.",
                    )
                ),
                "insights": _nullable(
                    _object(
                        {
                            "alerts": {
                                "type": "array",
                                "maxItems": 50,
                                "items": _insights_schemas()["FraudAlert"],
                                "description": "the latest fraud alerts, newest first",
                            },
                            "windows": {
                                "type": "object",
                                "description": "per tenant, the latest analytics window",
                                "additionalProperties": _insights_schemas()["AnalyticsWindow"],
                            },
                        },
                        "What this worker's insights published (null: it does not run them).",
                    )
                ),
                "tenants": {
                    "type": "object",
                    "description": "registered tenants: status, gateway and limits; at most "
                    "1,000, those this worker served first, then by id",
                    "additionalProperties": {
                        "type": "object",
                        "required": ["status", "gateway"],
                        "properties": {
                            "status": {"enum": ["active", "suspended"]},
                            "gateway": _STR,
                            "limits": _STR,
                        },
                        "additionalProperties": False,
                    },
                },
                "tenants_omitted": {
                    "type": "integer",
                    "minimum": 0,
                    "description": "registered tenants left out of `tenants`",
                },
                "summaries": {
                    "type": "object",
                    "description": "per tenant of this worker's partitions: payments by status, "
                    "captured and refunded amounts per currency (minor units)",
                    "additionalProperties": _object(
                        {"payments": _COUNTS, "captured": _COUNTS, "refunded": _COUNTS}
                    ),
                },
                "minor_units": {
                    "description": "each currency shown, with its ISO 4217 minor-unit digits",
                    **_COUNTS,
                },
            },
            "Counts, recent outcomes, per-tenant summaries and this worker's partitions.",
        ),
        "TenantOutcomes": _object(
            {
                "tenant": _STR,
                "recent": {
                    "type": "array",
                    "maxItems": TENANT_RECENT_KEPT,
                    "items": _ref("ActivityEntry"),
                    "description": "newest first",
                },
                "kept": {"const": TENANT_RECENT_KEPT},
                "minor_units": {
                    "description": "each currency shown, with its ISO 4217 minor-unit digits",
                    **_COUNTS,
                },
            },
            f"A tenant's latest outcomes (at most {TENANT_RECENT_KEPT}), kept by the worker "
            "that ran them since it took the tenant over (dropped when the tenant's "
            "partition moves to another worker), for the most recently served "
            f"{TENANTS_RECENT_MAX:,} tenants.",
        ),
    }
    return components


def _followed(events: frozenset[str]) -> str:
    """A provider's followed webhook events, as the API docs list them (its webhooks
    module's EVERY_FOLLOWED_EVENT: the list the code follows)."""
    return ", ".join(f"`{e}`" for e in sorted(events))


def openapi() -> Doc:
    """The OpenAPI 3.1 document of the worker's HTTP views."""
    s = _defaults()
    entity = {"oneOf": [_ref(_pascal(e)) for e in _ENTITIES]}
    paths = {
        "/": {
            "get": {
                "summary": "The operator dashboard (a static page polling /v1/stats).",
                "security": [*_GUARDED, {}],
                "parameters": [
                    {
                        "name": "token",
                        "in": "query",
                        "required": False,
                        "description": "PAYSTREAM_WEB_TOKEN: a browser opens `/?token=…` once "
                        "and gets it as an HttpOnly cookie (ignored when PAYSTREAM_WEB_TOKEN is "
                        "unset)",
                        "schema": _STR,
                    }
                ],
                "responses": {
                    "200": {
                        "description": "the dashboard",
                        "content": {"text/html": {"schema": _STR}},
                    },
                    "303": {
                        "description": "`?token=` given while PAYSTREAM_WEB_TOKEN is set: to "
                        "`/`, with the `paystream_token` cookie (HttpOnly, SameSite=Strict, "
                        "Secure over HTTPS) when it is right (without PAYSTREAM_WEB_TOKEN, "
                        "`?token=` is ignored and the dashboard answered)",
                        "headers": {
                            "Location": {"schema": {"const": "/"}},
                            "Set-Cookie": {"schema": _STR},
                        },
                    },
                    "400": _BAD_HOST,
                    "401": {
                        "description": "without the token",
                        "content": {"text/plain": {"schema": _STR}},
                    },
                    "403": _HOST_REFUSED,
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics (a worker's; `paystream ingress` serves its "
                "own request counts here, and with PAYSTREAM_METRICS_TOKEN set only to it).",
                "security": [*_GUARDED, {"metricsToken": []}],
                "responses": {
                    "200": {
                        "description": "Prometheus text exposition format",
                        "headers": _NO_STORE,
                        "content": {"text/plain": {"schema": _STR}},
                    },
                    "400": _BAD_HOST,
                    "401": _UNAUTHORIZED,
                    "403": _HOST_REFUSED,
                },
            }
        },
        "/healthz": {
            "get": {
                "summary": "Alive: 503 while the command agent is wedged, behind with no "
                "progress for PAYSTREAM_LIVENESS_STALL_SECONDS, or the worker has been "
                "rebalancing for PAYSTREAM_LIVENESS_SETTLING_SECONDS; a stall while the broker "
                "refuses the agent's writes is not counted (open without the token).",
                "security": [],
                "responses": {
                    "200": _either_json(
                        "Health", "IngressHealth", "alive (a `paystream ingress`: IngressHealth)"
                    ),
                    "503": _json("Health", "wedged: restart it (`failing` says why)"),
                },
            }
        },
        "/readyz": {
            "get": {
                "summary": "Ready: 503 until the registry is read and partitions are assigned, "
                "and while the worker's own agent is stalled; lists every stalled agent "
                "(open without the token).",
                "security": [],
                "responses": {
                    "200": _either_json(
                        "Ready", "IngressReady", "ready (a `paystream ingress`: IngressReady)"
                    ),
                    "503": _either_json(
                        "Ready",
                        "IngressReady",
                        "not ready: `waiting_for` says for what (a `paystream ingress`: "
                        "what it lacks)",
                    ),
                },
            }
        },
        "/v1/stats": {
            "get": {
                "summary": "This worker's counts, recent outcomes and per-tenant summaries.",
                "security": _GUARDED,
                "responses": {
                    "200": _json("Stats", "the figures", _NO_STORE),
                    "400": _BAD_HOST,
                    "401": _UNAUTHORIZED,
                    "403": _HOST_REFUSED,
                },
            }
        },
        "/v1/tenants/{tenant}/outcomes": {
            "get": {
                "summary": "One tenant's latest outcomes (the dashboard's \"Recent outcomes\" "
                "filtered to it): any worker of a fleet answers, fetching from the tenant's "
                "owner.",
                "security": _GUARDED,
                "parameters": [{"name": "tenant", "in": "path", "required": True, "schema": _STR}],
                "responses": {
                    "200": _json("TenantOutcomes", "its latest outcomes", _NO_STORE),
                    "400": _BAD_HOST,
                    "401": _UNAUTHORIZED,
                    "403": _HOST_REFUSED,
                    "404": _json("Error", "no tenant can have this id"),
                    "502": _json(
                        "Error",
                        "the worker owning the tenant answered something other than JSON: retry",
                        _RETRY_AFTER,
                    ),
                    "503": _json(
                        "Error",
                        "no worker owns the tenant yet (partitions being assigned), or the "
                        "tenant's owner is unreachable: retry",
                        _RETRY_AFTER,
                    ),
                },
            }
        },
        "/v1/tenants/{tenant}/{kind}/{entity_id}": {
            "get": {
                "summary": "One entity of one tenant: any worker of a fleet answers, fetching "
                "from the tenant's owner.",
                "description": "Entity lookups return customers' personal data.",
                "security": _GUARDED,
                "parameters": [
                    {"name": "tenant", "in": "path", "required": True, "schema": _STR},
                    {
                        "name": "kind",
                        "in": "path",
                        "required": True,
                        "description": "an entity kind, or `commands`: what became of a "
                        "command (`entity_id` its idempotency key or id); another kind is a 404",
                        "schema": {"enum": [*ENTITY_KINDS, "commands"]},
                    },
                    {"name": "entity_id", "in": "path", "required": True, "schema": _STR},
                ],
                "responses": {
                    "200": {
                        "description": "the entity, without its bookkeeping (`commands`: the "
                        "command's status)",
                        "headers": _NO_STORE,
                        "content": {
                            "application/json": {
                                "schema": {"oneOf": [*entity["oneOf"], _ref("CommandStatus")]}
                            }
                        },
                    },
                    "400": _BAD_HOST,
                    "401": _UNAUTHORIZED,
                    "403": _HOST_REFUSED,
                    "404": _json("Error", "no such entity of this tenant, or an unknown kind"),
                    "502": _json(
                        "Error",
                        "the worker owning the tenant answered something other than JSON (no "
                        "paystream worker: a stale assignment's address reused): retry",
                        _RETRY_AFTER,
                    ),
                    "503": _json(
                        "Error",
                        "tables are being recovered, no worker owns the tenant yet (partitions "
                        "being assigned), or the tenant's owner is unreachable (answered within "
                        "5 s): retry",
                        _RETRY_AFTER,
                    ),
                },
            }
        },
        "/v1/commands": _ingress_path(),
        "/webhooks/{provider}/{tenant}": {
            "post": {
                "summary": "A provider's signed webhook event (Stripe: its `Stripe-Signature` "
                "under the tenant's `webhook_secret`, within 5 minutes; Square: its "
                "`x-square-hmacsha256-signature` under the tenant's `webhook_signature_key` "
                "over its configured notification URL and the body; Paddle: its "
                "`Paddle-Signature` under the tenant's `webhook_secret_key`, within 5 "
                "minutes): an event about a "
                "payment paystream made that may have moved on becomes a `payment.refresh` "
                "command on the tenant's partition (one about a refund, a `refund.refresh`).",
                "description": "Open without the operators' token: the signature is the "
                "authentication. Followed Stripe events: "
                + _followed(stripe_webhooks.EVERY_FOLLOWED_EVENT)
                + ". A payment is found from its `paystream_payment` metadata "
                "(`<tenant>:<payment id>`), a refund from its `paystream_refund`, which "
                "paystream sets on the payments and refunds it creates "
                "(unless the producer's metadata already holds 50 keys); a subscription, "
                "payout, connected account or transfer from its own metadata, a dispute "
                "from its "
                "PaymentIntent's (docs/stripe.md, Webhooks). The refresh is "
                "sealed as paystream's own: it is neither checked against the tenant's "
                "rate limit nor spends its tokens. Followed Square events: "
                + _followed(square_webhooks.EVERY_FOLLOWED_EVENT)
                + ". A Square payment is found from its `reference_id` (`<tenant tag>:"
                "<payment id>`), a refund from the end of its `reason`, a dispute from its "
                "disputed payment's `reference_id`, a subscription from its `source.name` "
                "(an invoice's from its subscription's); another location's events are "
                "ignored (docs/square.md, Webhooks). Followed Paddle events: "
                + _followed(paddle_webhooks.EVERY_FOLLOWED_EVENT)
                + ". A Paddle transaction is found from its `custom_data` "
                "(`paystream_payment`; a subscription's, `paystream_subscription`), an "
                "adjustment (a refund) from the end of its `reason`; a chargeback is not "
                "followed (docs/paddle.md, Webhooks).",
                "security": [],
                "parameters": [
                    {
                        "name": "provider",
                        "in": "path",
                        "required": True,
                        "description": "another provider is a 404",
                        "schema": {"enum": ["paddle", "square", "stripe"]},
                    },
                    {"name": "tenant", "in": "path", "required": True, "schema": _STR},
                    {
                        "name": "Stripe-Signature",
                        "in": "header",
                        "required": False,
                        "description": "Stripe's events",
                        "schema": _STR,
                    },
                    {
                        "name": "x-square-hmacsha256-signature",
                        "in": "header",
                        "required": False,
                        "description": "Square's events",
                        "schema": _STR,
                    },
                    {
                        "name": "Paddle-Signature",
                        "in": "header",
                        "required": False,
                        "description": "Paddle's events",
                        "schema": _STR,
                    },
                ],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": {"type": "object"}}},
                },
                "responses": {
                    "200": _json("WebhookAnswer", "received"),
                    "400": _json(
                        "Error",
                        "`bad_signature`: not signed with the tenant's endpoint secret "
                        "(Square: or over another notification URL than the one configured), "
                        "signed too long ago or dated ahead (Square: its created_at over 73 "
                        "hours old), not UTF-8, or not a JSON "
                        "object; `bad_request`: a body that does not decode as its "
                        "Content-Encoding says",
                    ),
                    "408": _json(
                        "Error",
                        f"`request_timeout`: the body not in within {WEBHOOK_BODY_SECONDS:g} s",
                    ),
                    "404": _json(
                        "Error",
                        "no endpoint: an unknown tenant, another provider's, one without a "
                        "`webhook_secret` (Square: `webhook_signature_key`; Paddle: "
                        "`webhook_secret_key`), or a worker "
                        "without a master key (one answer for all)",
                    ),
                    "413": _json("Error", f"a body over {WEBHOOK_MAX_BODY_BYTES} bytes"),
                    "503": _json(
                        "Error",
                        "not now (the registry loading, tables moving, the tenant's worker "
                        "unreachable, the broker not taking the command, the endpoint secret "
                        "not opening, a Square tenant's notification URL not configured, "
                        "the payment or refund not recorded here yet (within an "
                        "hour of the event), the tenant suspended, or its webhooks over "
                        "PAYSTREAM_WEBHOOK_REFRESHES_PER_SECOND refreshes, or four times "
                        "that many lookups): the provider sends it again",
                        _RETRY_AFTER,
                    ),
                },
            }
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "paystream worker HTTP views",
            "version": __version__,
            "description": "Served by every worker on PAYSTREAM_WEB_HOST:PAYSTREAM_WEB_PORT. "
            "Generated by `paystream docs` from the code: do not edit.",
        },
        "servers": [{"url": f"http://{s.web_host}:{s.web_port}", "description": "the defaults"}],
        "paths": paths,
        "components": {
            "schemas": dict(sorted(_view_schemas().items())),
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "PAYSTREAM_WEB_TOKEN (`Authorization: Bearer …`). When it is "
                    "unset every view is open; when set, the dashboard, `/v1/*` and `/metrics` "
                    "answer only requests bearing it; `/healthz`, `/readyz` and the "
                    "webhooks (authenticated by their signature) stay open.",
                },
                "ingressKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "`POST /v1/commands` only: one of the command's tenant's "
                    "keys (`paystream tenants api-key create <tenant>`: `psk_…`, sending only "
                    "that tenant's commands) or the platform's PAYSTREAM_INGRESS_TOKEN (any "
                    "tenant's). Not PAYSTREAM_WEB_TOKEN: the operators' token reads data, "
                    "it does not send commands.",
                },
                "metricsToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "`/metrics` only: PAYSTREAM_METRICS_TOKEN, a scraper's "
                    "token that opens nothing else. A worker's `/metrics` answers it or "
                    "PAYSTREAM_WEB_TOKEN; the ingress's, when it is set, answers it alone.",
                },
                "tokenCookie": {
                    "type": "apiKey",
                    "in": "cookie",
                    "name": "paystream_token",
                    "description": "PAYSTREAM_WEB_TOKEN as the cookie `GET /?token=…` sets",
                },
            },
        },
    }


def _any_case(word: str) -> str:
    """``word`` matched in any case, as ECMA-262 patterns (JSON Schema's) have no inline
    flag."""
    return "".join(f"[{c.upper()}{c.lower()}]" if c.isalpha() else c for c in word)


# The media types the ingress takes as JSON, as a worker reads them (streams/codec.py
# is_json_media: the CloudEvents SDK's pattern), any case.
_JSON_MEDIA_PATTERN = (
    rf"^({_any_case('application')}|{_any_case('text')})/([a-zA-Z0-9\-.]+\+)?"
    rf"{_any_case('json')}(;.*)?$"
)


def _ingress_schemas(components: Doc) -> Doc:
    """The HTTP ingress's command, its answers and (by name, as in asyncapi.yaml) each
    command type's data."""
    for kind in COMMANDS:
        components[COMMANDS[kind].__name__] = _command_schema(kind, components)
    # anyOf, not oneOf: one object can be valid data of several types (`{"payment_id":
    # …}` is a capture's, a cancel's, a refresh's and a refund's); the type picks the
    # schema, which `Command` says per type (review finding: oneOf refused 8 types).
    data = {"anyOf": [_ref(COMMANDS[kind].__name__) for kind in COMMANDS]}
    by_type = [
        {
            "if": {"properties": {"type": {"const": COMMAND_PREFIX + kind}}},
            "then": {"properties": {"data": _ref(COMMANDS[kind].__name__)}},
        }
        for kind in COMMANDS
    ]
    bounded = {**_STR, "minLength": 1, "maxLength": _ID_MAX}
    return {
        "CommandData": {
            **data,
            "description": "the command's data: the schema named after its type (`type`'s "
            "suffix: `customer.create` is CreateCustomer, as in asyncapi.yaml); in binary "
            "mode the `ce-type` header picks it",
        },
        "Command": {
            "type": "object",
            "description": "A command as a structured CloudEvent 1.0 (the attributes of "
            "asyncapi.yaml's CommandHeaders, without `ce_`); `data` is the schema its "
            "`type` names.",
            "allOf": by_type,
            "required": ["specversion", "id", "source", "type", "tenantid"],
            "properties": {
                "specversion": {"const": "1.0"},
                "id": {**bounded, "description": "the command id"},
                "source": _STR,
                "type": {"enum": [COMMAND_PREFIX + kind for kind in COMMANDS]},
                "tenantid": {**bounded, "pattern": TENANT_ID_PATTERN},
                "idempotencykey": {**bounded, "description": "defaults to `id`"},
                "time": {"type": "string", "format": "date-time"},
                "datacontenttype": {
                    **_STR,
                    # As the ingress takes it (streams/codec.py is_json_media), but the
                    # CloudEvents envelope's own types (web/ingress.py _ENVELOPE_MEDIA).
                    "pattern": _JSON_MEDIA_PATTERN,
                    "not": {"pattern": rf"^{_any_case('application/cloudevents')}"},
                    "description": "a JSON media type (default `application/json`), not "
                    "a CloudEvents one (`application/cloudevents+json`)",
                },
                "traceparent": {
                    **_STR,
                    "description": "W3C trace context (else the request's `traceparent` "
                    "header is taken)",
                },
                "tracestate": _STR,
                "data": _ref("CommandData"),
                # Data is read as JSON in `data` only (DATA_NOT_AN_OBJECT; review h64g).
                "data_base64": False,
            },
        },
        "Outcome": {
            "type": "object",
            "description": "The command's outcome, the very event the events topic carries, "
            "as a structured CloudEvent: `type` `com.paystream.<domain>.<event>` or "
            "`com.paystream.command.rejected` (each type's data: asyncapi.yaml's outcome "
            "messages). Its `causationid` is the command's id (a retry under an answered "
            "key: the first command's).",
            "required": ["specversion", "id", "source", "type", "tenantid", "causationid"],
            "properties": {
                "specversion": {"const": "1.0"},
                "id": _STR,
                "source": _STR,
                "type": _STR,
                "tenantid": _STR,
                "causationid": _STR,
                "partitionkey": _STR,
                "time": {"type": "string", "format": "date-time"},
                "traceparent": _STR,
                "data": {"type": "object"},
            },
        },
        "CommandAccepted": _object(
            {
                "accepted": {"const": True},
                "tenant": _STR,
                "command_id": _STR,
                "idempotency_key": _STR,
            },
            "On the commands topic (the broker acknowledged it); its outcome follows on the "
            "events topic.",
        ),
        "RateLimited": {
            "type": "object",
            "description": "The tenant is over its rate limit (`commands_per_second`, "
            "`burst`) at this server: nothing was produced; send the same command (same "
            "id) again after `retry_after_ms`.",
            "required": ["error", "message", "retry_after_ms"],
            "properties": {
                "error": {"const": "rate_limited"},
                "message": _STR,
                "retry_after_ms": {"type": "integer", "minimum": 1},
            },
            "additionalProperties": False,
        },
        "KeyExpired": _object(
            {
                "error": {"const": "key_expired"},
                "message": _STR,
                "expired_at": {"type": "string", "format": "date-time"},
            },
            "The key matched and has expired (`paystream tenants api-key roll` gives a "
            "successor): use its successor.",
        ),
        "KeyForbidden": _object(
            {
                "error": {"const": "forbidden"},
                "message": _STR,
                "allowed": {
                    "type": "array",
                    "items": {"type": "string", "pattern": COMMAND_SCOPE_PATTERN},
                    "description": "what the key may send: command names, or `<domain>.*`",
                },
            },
            "The key is restricted to some commands (`api-key create --allow`) and the "
            "command is none of them: nothing produced.",
        ),
        "CommandInvalid": {
            "type": "object",
            "description": "Refused before it reached the topic, as a worker would refuse "
            "it unrun; `errors` (invalid data): each field's, never the value sent.",
            "required": ["error", "message"],
            "properties": {
                "error": {"enum": ["validation_error", "unsupported", "unknown_command"]},
                "message": _STR,
                "errors": {
                    "type": "array",
                    "maxItems": ingress.ERRORS_SHOWN,
                    "items": _object({"loc": _STR, "msg": _STR, "type": _STR}),
                },
                "error_count": _INT,
            },
            "additionalProperties": False,
        },
    }


def _ingress_path() -> Doc:
    binary = "binary mode: the data as the body; the attributes as `ce-` headers "
    return {
        "servers": [
            {
                "url": "http://127.0.0.1:6070",
                "description": "`paystream ingress`, the route alone "
                "(PAYSTREAM_INGRESS_HOST:PAYSTREAM_INGRESS_PORT)",
            },
            {"url": "http://127.0.0.1:6066", "description": "a worker's web port"},
        ],
        "post": {
            "summary": "Send one command (a CloudEvent in either HTTP content mode) to the "
            "commands topic, keyed by its tenant; with `Prefer: wait=N`, answered with its "
            "outcome.",
            "description": "The other way in beside Kafka, for the same commands: "
            "idempotency, tenant rules, limits and outcomes are the pipeline's, as for a "
            "command produced to the topic. What a worker would refuse unrun is refused "
            "here (400) and never produced: not a CloudEvent, an unknown type, invalid "
            "data, card data anywhere, an id a worker would answer under another name. "
            "A request is safe to retry with the same `id` (or `idempotencykey`): the "
            "same command, answered once.",
            "security": [{"ingressKey": []}],
            "parameters": [
                {
                    "name": "Prefer",
                    "in": "header",
                    "required": False,
                    "description": "RFC 7240 `wait=N`: wait up to N seconds (at most "
                    f"{ingress.MAX_WAIT_SECONDS:g}) for the outcome",
                    "schema": _STR,
                },
                {
                    "name": "traceparent",
                    "in": "header",
                    "required": False,
                    "description": "W3C trace context (version 00 only; another is ignored), "
                    "for a command that carries none",
                    "schema": _STR,
                },
                {
                    "name": "tracestate",
                    "in": "header",
                    "required": False,
                    "description": "W3C trace state, taken with the `traceparent` header",
                    "schema": _STR,
                },
            ],
            "requestBody": {
                "required": True,
                "description": f"structured mode: `{STRUCTURED_CONTENT_TYPE}`, the event as "
                "the body; "
                + binary
                + "(`ce-specversion`, `ce-id`, `ce-source`, `ce-type`, `ce-tenantid`; "
                "`ce-idempotencykey`, `ce-time`, `ce-traceparent` optional), percent-encoded "
                "UTF-8",
                "content": {
                    STRUCTURED_CONTENT_TYPE: {"schema": _ref("Command")},
                    "application/json": {"schema": _ref("CommandData")},
                },
            },
            "responses": {
                "200": {
                    "description": "`Prefer: wait` given and the outcome came within it",
                    "headers": {"Preference-Applied": {"schema": _STR}},
                    "content": {STRUCTURED_CONTENT_TYPE: {"schema": _ref("Outcome")}},
                },
                "202": _json(
                    "CommandAccepted",
                    "on the topic (without `Prefer: wait`, or its outcome not within it)",
                ),
                "400": {
                    "description": "refused, nothing produced (a Content-Encoding other than "
                    "gzip or deflate, or broken chunked framing, is refused by the HTTP "
                    "server itself: a plain-text 400)",
                    "content": {
                        "application/json": {
                            "schema": {"oneOf": [_ref("CommandInvalid"), _ref("Error")]}
                        }
                    },
                },
                "401": {
                    "description": "no key, or not one of the command's tenant's (an "
                    "unknown tenant, another tenant's key, a revoked one: one answer for "
                    "all, `unauthorized`); or the key has expired (`key_expired`: told "
                    "before the body is read)",
                    "headers": {"WWW-Authenticate": {"schema": _STR}},
                    "content": {
                        "application/json": {
                            "schema": {"oneOf": [_ref("Error"), _ref("KeyExpired")]}
                        }
                    },
                },
                "403": _json(
                    "KeyForbidden",
                    "the key may not send this command (`api-key create --allow`)",
                ),
                "408": _json("Error", f"the body took over {ingress.BODY_READ_SECONDS:g} s"),
                "413": _json(
                    "Error",
                    "larger than PAYSTREAM_COMMAND_MAX_BYTES (with PAYSTREAM_CLOUDEVENTS_MODE="
                    "structured: as encoded, non-ASCII text escaped), or its attributes over "
                    "16 KiB",
                ),
                "415": _json(
                    "Error",
                    "neither binary mode (`ce-` headers) nor structured JSON; a batch "
                    "(`application/cloudevents-batch+json`)",
                ),
                "429": _json(
                    "RateLimited",
                    "over the tenant's rate limit at this server (a flood guard: each "
                    "server counts on its own, and the workers' limit, exact across them, "
                    "answers the rest `rate_limited` as an outcome); nothing produced",
                    {
                        "Retry-After": {
                            "description": "whole seconds, rounded up",
                            "schema": {"type": "string", "pattern": "^[1-9][0-9]*$"},
                        }
                    },
                ),
                "503": _json(
                    "Error",
                    "the registry loading, the tenant's newest registry record unreadable "
                    "by this worker (a tenant key: another worker may answer), or the "
                    "broker did not acknowledge the command (it may have been taken): send "
                    "it again, same id",
                    _RETRY_AFTER,
                ),
            },
        },
    }


# ---- YAML ---------------------------------------------------------------------------

# A plain (unquoted) scalar that no YAML 1.1 or 1.2 reader takes for anything but a string.
_PLAIN = re.compile(r"[A-Za-z_$/][A-Za-z0-9_$./-]*\Z")
_SPECIAL = frozenset({"true", "false", "yes", "no", "on", "off", "null", "y", "n"})
# Characters a YAML double-quoted scalar must escape (beyond JSON's), and line breaks
# other than \n.
_UNPRINTABLE = re.compile("[\x7f-\x9f\u2028\u2029\ud800-\udfff\ufeff\ufffe\uffff]")


def _quoted(text: str) -> str:
    escaped = json.dumps(text, ensure_ascii=False)  # JSON escapes are YAML escapes
    return _UNPRINTABLE.sub(lambda m: f"\\u{ord(m.group()):04x}", escaped)


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, dict):
        return "{}"
    if isinstance(value, list):
        return "[]"
    text = str(value)
    if _PLAIN.match(text) and text.lower() not in _SPECIAL:
        return text
    return _quoted(text)


def _block(text: Any) -> bool:
    """Is ``text`` a multi-line string written as a literal block (``|-``)?"""
    return (
        isinstance(text, str)
        and "\n" in text
        and not text.endswith("\n")
        and not text.startswith((" ", "\n"))
        and not _UNPRINTABLE.search(text)
        and all(c == "\n" or c == "\t" or c >= " " for c in text)
        and "\r" not in text
    )


def _lines(value: Any, indent: int) -> list[str]:
    pad = " " * indent
    out: list[str] = []
    items: list[tuple[str, Any]] = (
        [(f"{_scalar(k)}:", v) for k, v in value.items()]
        if isinstance(value, dict)
        else [("-", v) for v in value]
    )
    for lead, item in items:
        if _block(item):
            out.append(f"{pad}{lead} |-")
            out += [f"{pad}  {line}" if line else "" for line in item.split("\n")]
        elif isinstance(item, dict | list) and item:
            inner = _lines(item, indent + 2)
            if lead == "-":
                out.append(f"{pad}- {inner[0][indent + 2 :]}")
                out += inner[1:]
            else:
                out.append(f"{pad}{lead}")
                out += inner
        else:
            out.append(f"{pad}{lead} {_scalar(item)}")
    return out


def to_yaml(doc: Doc) -> str:
    """``doc`` (JSON-like values, string keys) as block-style YAML, the same every time."""
    return "\n".join(_lines(doc, 0)) + "\n"


# ---- the files ----------------------------------------------------------------------

_HEADER = (
    "# Generated by `paystream docs` from the code: do not edit; `paystream docs` rewrites it.\n"
)


def documents() -> dict[str, str]:
    """File name → text of each interface document."""
    return {
        "asyncapi.yaml": _HEADER + to_yaml(asyncapi()),
        "openapi.yaml": _HEADER + to_yaml(openapi()),
    }


def write(directory: Path) -> list[Path]:
    """Write the documents into ``directory``; returns the files written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in documents().items():
        path = directory / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def stale(directory: Path) -> list[str]:
    """The documents in ``directory`` that are missing or differ from the code's."""
    return [
        name
        for name, text in documents().items()
        if not (directory / name).is_file()
        or (directory / name).read_text(encoding="utf-8") != text
    ]

"""Simulator knobs from the tenant's gateway options: latency and failure injection."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from paystream.errors import ConfigurationError, validator_said
from paystream.gateways.base import Capability
from paystream.gateways.errors import RETRYABLE, ErrorCode

__all__ = ["SimulatorOptions"]


class SimulatorOptions(BaseModel):
    """How the simulated provider misbehaves; the defaults make it a perfect provider."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    latency_ms: int = Field(default=0, ge=0, le=60_000)
    fail_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    seed: int | None = None  # makes fail_rate reproducible
    # Key → N: the first N attempts with that idempotency key fail before reaching the
    # provider ("*" matches every key). Counted in Redis so counts survive a crash, and
    # only for keys a knob names.
    fail_first: dict[str, int] = {}
    # Key → N: the first N calls with that key that reach the provider (counted apart
    # from fail_first's) are applied, or refused, and then their answer is "lost" (a
    # timeout): exactly the case idempotent retries exist for.
    lose_response_first: dict[str, int] = {}
    fail_code: ErrorCode = ErrorCode.PROVIDER_UNAVAILABLE
    capabilities: frozenset[Capability] | None = None  # narrows what the tenant may use
    # The tenant's bank account, where its payouts go: one of Stripe's test account
    # numbers (operations.PAYOUT_TEST_ACCOUNTS: 000111111113 fails account_closed,
    # 000111111116 no_account, ...) makes them fail; any other number is paid.
    payout_destination: str = Field(default="000123456789", pattern=r"^[0-9]{4,17}$")
    # Days a captured amount stays pending before it is available to pay out.
    settlement_delay_days: int = Field(default=2, ge=0, le=30)

    @field_validator("fail_code")
    @classmethod
    def _transient(cls, value: ErrorCode) -> ErrorCode:
        if value not in RETRYABLE:
            raise ValueError(f"fail_code must be a retryable code, got {value}")
        return value

    @classmethod
    def parse(cls, options: Mapping[str, Any]) -> SimulatorOptions:
        """Validate options; a bad knob is a configuration error naming it."""
        try:
            return cls.model_validate(dict(options))
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: {validator_said(e)}" for e in exc.errors()
            )
            raise ConfigurationError(f"invalid simulator options: {problems}") from exc

    @property
    def misbehaves(self) -> bool:
        """Any latency or failure to inject (most tenants: none, and calls skip the step)."""
        return bool(
            self.latency_ms or self.fail_rate or self.fail_first or self.lose_response_first
        )

    def injected_failures(self, idempotency_key: str, table: Mapping[str, int]) -> int:
        """How many leading attempts of this key the given knob fails."""
        return table.get(idempotency_key, table.get("*", 0))

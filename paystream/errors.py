"""The root of every exception paystream raises on purpose."""

from __future__ import annotations

__all__ = ["ConfigurationError", "PaystreamError"]


class PaystreamError(Exception):
    """Root exception: catch this to catch anything paystream raises deliberately."""


class ConfigurationError(PaystreamError):
    """Settings or environment are unusable; the message says which variable and why."""

"""The root of every exception paystream raises on purpose."""

from __future__ import annotations

__all__ = ["ConfigurationError", "PaystreamError", "described"]


class PaystreamError(Exception):
    """Root exception: catch this to catch anything paystream raises deliberately."""


class ConfigurationError(PaystreamError):
    """Settings or environment are unusable; the message says which variable and why."""


def described(exc: BaseException) -> str:
    """``exc`` in one line, its class named once: aiokafka's messages already start with
    their class name ("KafkaConnectionError: Unable to bootstrap ...")."""
    name, text = type(exc).__name__, str(exc)
    return text if text.startswith(name) else f"{name}: {text}"

"""The root of every exception paystream raises on purpose."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic_core import ErrorDetails

__all__ = ["ConfigurationError", "PaystreamError", "described", "validator_said"]


class PaystreamError(Exception):
    """Root exception: catch this to catch anything paystream raises deliberately."""


class ConfigurationError(PaystreamError):
    """Settings or environment are unusable; the message says which variable and why."""


def described(exc: BaseException) -> str:
    """``exc`` in one line, its class named once: aiokafka's messages already start with
    their class name ("KafkaConnectionError: Unable to bootstrap ...")."""
    name, text = type(exc).__name__, str(exc)
    return text if text.startswith(name) else f"{name}: {text}"


def validator_said(error: ErrorDetails) -> str:
    """A pydantic error's message as its validator said it: pydantic puts "Value error, "
    before a validator's ValueError (the reader needs the reason, not which exception
    carried it). Its other messages, and its own value_errors of no raised error, as it
    words them."""
    if error["type"] != "value_error" or "error" not in error.get("ctx", {}):
        return error["msg"]
    return str(error["ctx"]["error"]) or error["msg"]  # (a bare ValueError(): pydantic's)

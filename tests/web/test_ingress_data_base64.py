"""data_base64 that is no base64 (or empty), its key written plain or with a JSON escape:
refused by the ingress (review h64c: the escaped key passed the check for "!!", and ""
was taken for no data; answered 202, then a customer.create ran on nothing)."""

from __future__ import annotations

import json

import pytest

from tests.test_docs import published, validator
from tests.web.test_ingress_review_findings import _event, _ingress, _post

CASES = [("data_base64", "!!"), ("data\\u005fbase64", "!!"), ("data\\u005fbase64", "e30 ="),
         ("data_base64", ""), ("data", "")]  # fmt: skip


def _body(spelled: str, encoded: str) -> bytes:
    body = {k: v for k, v in _event().items() if k != "data"}
    return json.dumps({**body, "@KEY@": encoded}).replace('"@KEY@"', f'"{spelled}"').encode()


@pytest.mark.asyncio
@pytest.mark.parametrize(("spelled", "encoded"), CASES)
async def test_data_base64_that_is_no_command_data_is_refused(spelled: str, encoded: str) -> None:
    app, produced, key = _ingress()
    status, answer = await _post(app, key, _body(spelled, encoded))
    assert (status, answer.get("error")) == (400, "validation_error") and not produced, answer


def test_data_base64_fails_the_published_command_schema() -> None:
    """What the ingress refuses, the published schema refuses (review h64g: it took it)."""
    body = {k: v for k, v in _event().items() if k != "data"}
    schema = validator(published("openapi"), "/components/schemas/Command")
    assert not schema.is_valid({**body, "data_base64": ""})
    assert schema.is_valid(_event())

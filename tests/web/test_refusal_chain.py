"""bad_requests._refusal follows an error's causes only (review h60l): a genuine server
bug raised while a refused body was being handled has the refusal as its context, and
was dropped as a "malformed HTTP request", its 500 leaving no traceback."""

from __future__ import annotations

import logging
import sys

from aiohttp.http_exceptions import ContentEncodingError
from aiohttp.web import RequestPayloadError

from paystream.web.bad_requests import BadRequestLog
from paystream.web.bodies import BodyUnreadable


def test_a_bug_raised_while_answering_an_unreadable_body_keeps_its_traceback() -> None:
    try:
        try:
            try:
                raise ContentEncodingError("Can not decode content-encoding: gzip")
            except ContentEncodingError as parser:
                raise RequestPayloadError("Failed to decode") from parser
        except RequestPayloadError:
            raise BodyUnreadable from None  # as paystream/web/bodies.py does
    except BodyUnreadable:
        try:
            {}["tenant"]
        except KeyError:
            exc_info = sys.exc_info()
    record = logging.LogRecord(
        "aiohttp.server", logging.ERROR, __file__, 1, "Error handling request", None, exc_info
    )
    assert BadRequestLog().filter(record), "a KeyError's traceback dropped as a refused request"

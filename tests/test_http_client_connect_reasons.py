"""IngressUnreachable names why no connection was made in the system's words (review
h60o): a name not resolved and a TLS failure were said as "Unknown error -2" and
"Operation not permitted"."""

from __future__ import annotations

import asyncio

import pytest

from paystream.http_client import IngressClient, IngressUnreachable


async def _unreachable(url: str) -> str:
    async with IngressClient(url, "psk_x", retries=0, timeout=5) as client:
        with pytest.raises(IngressUnreachable) as caught:
            await client.command(
                "payment.create",
                "acme",
                {"amount": 1, "currency": "USD", "payment_method_token": "pm_card_visa"},
            )
    return str(caught.value)


def test_dns_failure_names_the_resolvers_reason_not_unknown_error() -> None:
    said = asyncio.run(_unreachable("http://no-such-host.invalid:6070"))
    assert "Unknown error" not in said, said


def test_tls_to_a_plain_http_port_does_not_say_operation_not_permitted() -> None:
    async def go() -> str:
        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(100)
            writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(answer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            return await _unreachable(f"https://127.0.0.1:{port}")

    said = asyncio.run(go())
    assert "Operation not permitted" not in said, said

"""The worker's own ``POST /v1/commands`` (web/ingress.py), beside its views: produced
through the worker's Faust producer, tenant keys checked against its registry mirror."""

from __future__ import annotations

from typing import Any, cast

import aiohttp.web
from faust.web import Request, Response, View

from paystream.agents.tenants import registry
from paystream.app import app, settings
from paystream.web.ingress import IDLE_READER_SECONDS, CommandIngress
from paystream.web.outcome_waits import OutcomeWaits
from paystream.web.worker_produce import produce_command

__all__ = ["CommandIngressView"]


_waits = OutcomeWaits(settings)
_ingress = CommandIngress(settings, registry, produce_command, _waits)


@app.page("/v1/commands")
class CommandIngressView(View):
    """One command, produced to the commands topic for its tenant."""

    async def post(self, request: Request) -> Response:
        # (Faust's aiohttp driver: its requests and responses are aiohttp's.)
        return cast(Response, await _ingress.handle(cast(aiohttp.web.Request, request)))


@app.timer(interval=60.0)
async def stop_idle_outcome_reader() -> None:
    await _waits.stop_if_idle(IDLE_READER_SECONDS)


async def _stop_outcome_reader(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
    await _waits.stop()


app.on_before_shutdown.connect(_stop_outcome_reader)

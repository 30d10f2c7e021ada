"""For end-to-end tests that stop or freeze a server: servers of their own, never the
session's shared ones, and the worker's JSON pages read whatever their status."""

from __future__ import annotations

import base64
import json
import os
import shutil
import tempfile
import urllib.error
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from paystream.devstack.postgres import EmbeddedPostgres
from paystream.devstack.worker import WorkerProcess
from paystream.ledger import create_engine
from paystream.ledger.migrate import app_database_url, upgrade
from tests.fixtures.pipeline import Deployment

__all__ = ["OwnLedger", "json_page", "own_ledger"]


def json_page(worker: WorkerProcess, path: str) -> tuple[int, Any]:
    """GET a JSON page of the worker: (status, body), a 503 included."""
    try:
        with worker.open(path, timeout=5) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.load(exc)


@dataclass
class OwnLedger:
    dep: Deployment
    pg: EmbeddedPostgres  # the test's own: it may stop it
    engine: AsyncEngine  # as paystream_app (RLS applies)


@asynccontextmanager
async def own_ledger(deployment_factory: Any, prefix: str, **env: str) -> AsyncIterator[OwnLedger]:
    """A deployment whose ledger is on a PostgreSQL of the test's own, migrated, with the
    worker environment ``env`` on top."""
    root = Path(tempfile.mkdtemp(prefix=prefix))  # not tmp_path: see services.py
    pg = EmbeddedPostgres(root / "pg")
    pg.start()
    engine: AsyncEngine | None = None
    try:
        password = base64.urlsafe_b64encode(os.urandom(18)).decode()
        await upgrade(pg.url, app_password=password)
        dep: Deployment = await deployment_factory(
            database_url=pg.url,
            paystream_db_app_password=password,
            paystream_master_key=base64.b64encode(os.urandom(32)).decode(),
            **env,
        )
        engine = create_engine(app_database_url(pg.url, password))
        yield OwnLedger(dep, pg, engine)
    finally:
        if engine is not None:
            await engine.dispose()
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)

"""The worker keeps the root logger at the level it is given.

At WARN and above, Faust's worker set the root logger to DEBUG for a terminal progress
spinner: every debug call of every library then built a log record to be dropped (a
table recovery of 100,000 changelog records took 13.6 s of CPU against 11.3).
"""

from __future__ import annotations

import logging

import faust
import pytest

from paystream.worker import keep_log_levels


def test_a_warn_level_root_logger_stays_at_warn(monkeypatch: pytest.MonkeyPatch) -> None:
    hook = "_disable_spinner_if_level_below_WARN"
    monkeypatch.setattr(faust.Worker, hook, getattr(faust.Worker, hook))  # restored after
    keep_log_levels()
    logger = logging.Logger("root-under-test", logging.WARNING)
    logger.addHandler(logging.NullHandler())
    worker = faust.Worker.__new__(faust.Worker)  # (no app: only the logging hook runs)
    worker.spinner = object()  # type: ignore[assignment]
    faust.Worker.on_setup_root_logger(worker, logger, logging.WARNING)
    assert logger.level == logging.WARNING
    assert len(logger.handlers) == 1  # no spinner handler
    assert worker.spinner is None
    assert not logger.isEnabledFor(logging.DEBUG)

"""A worker serving its views beyond loopback with no token refuses to start unless
told to: the image binds 0.0.0.0, and a `docker run -p` of it answered customers'
emails and names to anyone who reached the port (review finding)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from paystream.errors import ConfigurationError
from paystream.settings import load_settings
from paystream.worker import refuse_open_views


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.0.7", "worker-1.internal"])
def test_views_beyond_loopback_without_a_token_are_refused(host: str) -> None:
    with pytest.raises(ConfigurationError, match="PAYSTREAM_WEB_TOKEN"):
        refuse_open_views(load_settings(web_host=host))


@pytest.mark.parametrize(
    "settings",
    [
        {"web_host": "127.0.0.1"},
        {"web_host": "127.0.0.2"},
        {"web_host": "::1"},
        {"web_host": "localhost"},
        {"web_host": "0.0.0.0", "web_token": "s3cret-token"},
        {"web_host": "0.0.0.0", "web_open": True},
    ],
)
def test_loopback_a_token_or_an_explicit_choice_start(settings: dict[str, object]) -> None:
    refuse_open_views(load_settings(**settings))


def _worker_refuses(*args: str, **env_vars: str) -> None:
    """`paystream worker` exits 1 naming the way out, without a traceback."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PAYSTREAM_", "KAFKA_"))}
    env |= {"KAFKA_BROKER_URL": "kafka://127.0.0.1:1", **env_vars}
    done = subprocess.run(
        [sys.executable, "-m", "paystream", "worker", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done
    assert "PAYSTREAM_WEB_OPEN=true" in done.stderr and "Traceback" not in done.stderr


def test_the_worker_command_says_why_without_a_traceback() -> None:
    _worker_refuses(PAYSTREAM_WEB_HOST="0.0.0.0")


@pytest.mark.parametrize("extra", [["--web-bind", "0.0.0.0"], ["--web-bind=0.0.0.0"]])
def test_faust_s_own_web_bind_is_checked_too(extra: list[str]) -> None:
    """Given after ours, Faust's option wins: `paystream worker --web-bind 0.0.0.0`
    served the views open (review finding)."""
    _worker_refuses(*extra)

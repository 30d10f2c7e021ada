"""The tools tests/deploy checks the deployment files with (`.ci/install-deploy-tools`)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "paystream"
_TOOLS = ROOT / ".tools" / "bin"
_INSTALL = "run `sh .ci/install-deploy-tools` (scripts/test does)"

# Environment variables paystream reads that are not PAYSTREAM_ settings.
SERVER_URLS = {"KAFKA_BROKER_URL", "DATABASE_URL", "REDIS_URL"}


def tool(name: str) -> str:
    """The tool's path; a missing tool fails the test (it is installed, never optional)."""
    local = _TOOLS / name
    found = str(local) if local.is_file() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} not found: {_INSTALL}")
    return found


def run(
    *argv: str, cwd: Path = ROOT, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(argv), cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False
    )

"""Compose rebuilds the paystream image only when told (review h67t of h67s): the README
asks for `--build`, which works under Compose v1 too (its docker-compose 1.29 never reads
`pull_policy`), and a registry image named in PAYSTREAM_IMAGE is run, not rebuilt."""

from __future__ import annotations

from typing import Any

import yaml

from tests.deploy.test_compose import SECRETS, compose_config
from tests.deploy.tools import ROOT


def test_the_readme_rebuilds_under_compose_v1_too() -> None:
    """README: `docker compose up -d  # image built from ./Dockerfile ... (Compose v1:
    docker-compose)`. docker-compose 1.29 (the one these tests run) accepts pull_policy
    in its schema and never reads it (compose/ holds it only in config/compose_spec.json):
    under v1 every later `up` still runs the first build. `--build` works in both."""
    readme = (ROOT / "README.md").read_text()
    [line] = [
        ln for ln in readme.splitlines() if ln.startswith("docker compose up -d ") and "v1" in ln
    ]
    assert "--build" in line, line


def test_a_registry_image_named_in_paystream_image_is_run_not_rebuilt() -> None:
    """PAYSTREAM_IMAGE set to an image CI built and pushed (the Dockerfile's own header:
    registry.example/paystream:<sha>): with pull_policy: build, `up` never pulls it; it
    builds the checkout's source and tags that with the registry's name (a later `docker
    compose push` overwrites the CI image with it). Before h67s Compose pulled it."""
    image = "registry.example/paystream:1a2b3c4"
    proc = compose_config({**SECRETS, "PAYSTREAM_IMAGE": image})
    assert proc.returncode == 0, proc.stderr
    config: dict[str, Any] = yaml.safe_load(proc.stdout)
    named = {n: s for n, s in config["services"].items() if s.get("image") == image}
    assert {"worker-1", "worker-2", "migrate", "ingress"} <= set(named)
    assert all(s.get("pull_policy") != "build" for s in named.values()), {
        n: s.get("pull_policy") for n, s in named.items()
    }

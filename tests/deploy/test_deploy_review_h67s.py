"""Deployment files as the platform engineer installing paystream finds them (review h67s):
compose passed no retired master keys (no rotation), and the chart's workers left the
Service's endpoints only as their listener closed. (Compose's rebuild: test_compose_build.)"""

from __future__ import annotations

from typing import Any

import yaml

from tests.deploy.test_compose import SECRETS, compose_config
from tests.deploy.test_helm import one, render


def _resolved(extra: dict[str, str] | None = None) -> dict[str, Any]:
    proc = compose_config({**SECRETS, **(extra or {})})
    assert proc.returncode == 0, proc.stderr
    config: dict[str, Any] = yaml.safe_load(proc.stdout)
    return config


def test_compose_workers_get_the_retired_master_keys_of_a_rotation() -> None:
    """README "Rotating the master key": every worker runs with the old key in
    PAYSTREAM_RETIRED_MASTER_KEYS (step 0: the new one). The chart maps it from the
    Secret (optional); compose passes only PAYSTREAM_MASTER_KEY, so a value put in .env
    never reaches a worker, and a worker on the new key cannot open the tenants' provider
    secrets and ledger data keys wrapped under the old one."""
    retired = "b2xkLWtleS1vbGQta2V5LW9sZC1rZXktb2xkLWtleS0="
    config = _resolved({"PAYSTREAM_RETIRED_MASTER_KEYS": retired})
    for name in ("worker-1", "worker-2"):
        env = config["services"][name]["environment"]
        assert env.get("PAYSTREAM_RETIRED_MASTER_KEYS") == retired, name
    # ...and unset, it is not passed as an empty value (an empty list of keys).
    unset = _resolved()["services"]["worker-1"]["environment"]
    assert unset.get("PAYSTREAM_RETIRED_MASTER_KEYS") in (None, "")


def test_workers_leave_the_services_endpoints_before_their_listener_closes() -> None:
    """The workers' Service is what webhooks.ingress (every provider webhook) and, by
    default (commands.server off), commands.ingress (POST /v1/commands) route to. An idle
    worker's SIGTERM stops its agents and consumer at once and Faust closes the web
    server seconds later, while the ingress controller still sends it requests for as
    long as it takes to see the endpoint go: refused (502) during every rollout step.
    The commands server has a 5 s preStop for exactly this; the workers have none."""
    docs = render({"webhooks": {"ingress": {"enabled": True, "host": "hooks.example.com"}}})
    spec = one(docs, "StatefulSet")["spec"]["template"]["spec"]
    [worker] = spec["containers"]
    pre_stop = worker.get("lifecycle", {}).get("preStop")
    assert pre_stop is not None, "no preStop: the listener may close before the endpoint goes"
    # the pause counts against the grace period: the 50 s the worker's drain needs remain
    pause = int(pre_stop["exec"]["command"][-1])
    assert spec["terminationGracePeriodSeconds"] - pause >= 50

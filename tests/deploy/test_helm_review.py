"""What the chart refuses or renders safely (review findings): secret settings in `config`,
a disruption budget letting every worker go, selector labels in `podLabels`, the setup
Job's ServiceAccount, the table volume's ownership."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from paystream.settings import Settings
from tests.deploy.test_helm import REQUIRED, _merge, by_kind, containers, helm, one, refusal, render
from tests.deploy.tools import CHART, run, tool

# Every setting paystream treats as a secret (pydantic SecretStr), by its variable name.
SECRET_SETTINGS = sorted(
    f"{Settings.model_config['env_prefix']}{name.upper()}"
    for name, field in Settings.model_fields.items()
    if "SecretStr" in str(field.annotation)
)


def test_the_secret_settings_are_known() -> None:
    assert "PAYSTREAM_METRICS_TOKEN" in SECRET_SETTINGS
    assert "PAYSTREAM_MASTER_KEY" in SECRET_SETTINGS


@pytest.mark.parametrize("name", SECRET_SETTINGS)
def test_config_refuses_every_secret_setting(name: str) -> None:
    """README: "A setting the chart or the Secret sets is refused there". The chart sets
    PAYSTREAM_METRICS_TOKEN from the Secret, yet `config.PAYSTREAM_METRICS_TOKEN` renders
    the scraper's token as plain env in every container (workers, topics, migrate, the
    commands server), beside the Secret's reference of the same name."""
    values = _merge(REQUIRED, {"config": {name: "s3cr3t-token"},
                               "commands": {"server": {"enabled": True}}})  # fmt: skip
    proc = helm("template", "pay", values=values)
    if proc.returncode == 0:
        docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
        plain: list[str] = []
        for doc in docs:
            spec: dict[str, Any] | None = (
                doc.get("spec", {}).get("template", {}).get("spec")
                if isinstance(doc.get("spec"), dict) else None
            )  # fmt: skip
            for c in containers(spec) if spec else []:
                for e in c.get("env", []):
                    if e["name"] == name and "value" in e:
                        plain.append(f"{doc['kind']}/{c['name']}")
        pytest.fail(f"config.{name} accepted: plain env in {plain}")
    assert name in proc.stderr


def test_the_pdb_never_lets_every_worker_go_at_once() -> None:
    """README: "The PodDisruptionBudget lets one worker go at a time". The schema only
    bounds maxUnavailable below (>= 1): with maxUnavailable >= replicaCount a node drain
    (or a cluster upgrade draining nodes in parallel) may evict every worker at once, and
    each comes back with a table recovery."""
    values = _merge(REQUIRED, {"replicaCount": 2, "podDisruptionBudget": {"maxUnavailable": 2}})
    assert "maxUnavailable" in refusal(values)


def test_pod_labels_cannot_replace_the_selector_labels() -> None:
    """podLabels are rendered after the selector labels: `app.kubernetes.io/component`
    (or name/instance) there replaces the StatefulSet template's own, which the API then
    rejects (selector does not match template labels); `component: worker` on the setup
    Job's pod would make the workers' Service, PDB and NetworkPolicy select it."""
    values = _merge(REQUIRED, {"podLabels": {"app.kubernetes.io/component": "payments"}})
    assert "podLabels" in refusal(values)


def test_the_setup_job_runs_as_a_named_existing_service_account() -> None:
    """With serviceAccount.create false and a name (an account that carries the registry's
    imagePullSecrets, or a cloud identity), the workers and the commands server run as it
    but the setup Job runs as the namespace's `default`: its image pull or its access to
    the brokers/database can fail where the workers' succeed, failing every install."""
    from tests.deploy.test_helm import one, render

    docs = render({"serviceAccount": {"create": False, "name": "paystream-sa"}})
    job = one(docs, "Job")["spec"]["template"]["spec"]
    assert job.get("serviceAccountName") == "paystream-sa"


def test_the_table_volume_is_not_chowned_whole_at_every_start() -> None:
    """fsGroup without fsGroupChangePolicy makes the kubelet walk and chown/chmod every
    file of the RocksDB volume at each mount (every restart, rollout step and eviction):
    Kubernetes advises OnRootMismatch for large volumes; the image's user already owns
    what it writes."""
    from tests.deploy.test_helm import one, render

    spec = one(render(), "StatefulSet")["spec"]["template"]["spec"]
    assert spec["securityContext"].get("fsGroupChangePolicy") == "OnRootMismatch"


@pytest.mark.parametrize("kind", ["NodePort", "LoadBalancer"])
def test_the_web_port_is_published_outside_the_cluster_only_when_meant(kind: str) -> None:
    """The workers' web port serves the dashboard (customers' names and e-mail addresses,
    behind one shared token), the commands route and /metrics in plain HTTP: a NodePort
    or LoadBalancer Service published it beyond the cluster, past the ingresses' TLS."""
    values = _merge(REQUIRED, {"service": {"type": kind}})
    assert "service.outsideCluster" in refusal(values)
    meant = _merge(REQUIRED, {"service": {"type": kind, "outsideCluster": True}})
    proc = helm("template", "pay", values=meant)
    assert proc.returncode == 0, proc.stderr
    services = [d for d in yaml.safe_load_all(proc.stdout) if d and d["kind"] == "Service"]
    assert kind in {s["spec"].get("type") for s in services}


# ---- review h60i --------------------------------------------------------------------

_EGRESS = {
    "networkPolicy": {
        "enabled": True,
        "egress": [
            {"to": [{"ipBlock": {"cidr": "10.0.5.0/24"}}], "ports": [{"port": 9092}]},
            {"to": [{"ipBlock": {"cidr": "10.0.6.0/24"}}], "ports": [{"port": 5432}]},
        ],
    }
}


def test_the_setup_jobs_pod_is_under_a_network_policy_that_exists_before_it_runs() -> None:
    """The setup Job's pod holds the schema owner's DATABASE_URL (who can switch row-level
    security off): with networkPolicy on, it gets the workers' egress rules and no way
    in, from a policy made as a hook before the Job (at pre-install the release's other
    objects do not exist yet: in a namespace that denies by default it reached nothing)."""
    docs = render(_EGRESS)
    job = one(docs, "Job")
    labels = job["spec"]["template"]["metadata"]["labels"]
    policies = [
        p for p in by_kind(docs, "NetworkPolicy")
        if p["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    ]  # fmt: skip
    assert len(policies) == 1, f"{len(policies)} NetworkPolicies select the setup Job's pod"
    [policy] = policies
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert policy["spec"]["ingress"] == []
    assert policy["spec"]["egress"][1:] == _EGRESS["networkPolicy"]["egress"]
    hooks = policy["metadata"]["annotations"]
    assert set(hooks["helm.sh/hook"].split(",")) == {"pre-install", "pre-upgrade"}
    assert int(hooks["helm.sh/hook-weight"]) < int(
        job["metadata"]["annotations"]["helm.sh/hook-weight"]
    )
    # Without egress rules it still takes no connection in, and egress stays open.
    [open_egress] = [
        p for p in by_kind(render({"networkPolicy": {"enabled": True}}), "NetworkPolicy")
        if p["metadata"]["name"].endswith("-setup")
    ]  # fmt: skip
    assert open_egress["spec"]["policyTypes"] == ["Ingress"]


def test_every_build_is_deployed_under_a_reference_of_its_own() -> None:
    """No default tag: the chart's appVersion stayed 0.1.0 across builds, so `helm
    upgrade` of a new build restarted no worker, and a rescheduled worker ran whichever
    0.1.0 its node had cached. A tag or a digest is required."""
    base = {k: v for k, v in REQUIRED.items() if k != "image"}
    assert "image.tag (or image.digest) is required" in refusal(
        {**base, "image": {"repository": "registry.example/paystream"}}
    )
    [worker] = one(render(), "StatefulSet")["spec"]["template"]["spec"]["containers"]
    assert worker["image"] == "registry.example/paystream:3f9c2ab"
    digest = "sha256:" + "ab" * 32
    pinned = render({"image": {"tag": "", "digest": digest}})
    for kind in ("StatefulSet", "Job"):
        for c in containers(one(pinned, kind)["spec"]["template"]["spec"]):
            assert c["image"] == f"registry.example/paystream@{digest}"
    assert "digest" in refusal(_merge(REQUIRED, {"image": {"digest": "latest"}}))


def test_the_worker_spread_is_best_effort_unless_made_a_rule() -> None:
    """The spread is ScheduleAnyway by default (values.yaml says two workers may then
    share a node, review h60i); DoNotSchedule makes it a rule; anything else is refused."""

    def spread(values: dict[str, Any]) -> Any:
        docs = render(values)
        [constraint] = one(docs, "StatefulSet")["spec"]["template"]["spec"][
            "topologySpreadConstraints"
        ]
        return constraint["whenUnsatisfiable"]

    assert spread({}) == "ScheduleAnyway"
    assert spread({"topologySpread": {"whenUnsatisfiable": "DoNotSchedule"}}) == "DoNotSchedule"
    assert "whenUnsatisfiable" in refusal(
        _merge(REQUIRED, {"topologySpread": {"whenUnsatisfiable": "Sometimes"}})
    )


def test_every_policy_limiting_egress_opens_the_dns_ports_named() -> None:
    """OpenShift's DNS pods listen on 5353, where a policy opening 53 alone cut DNS off
    (review h60i): `networkPolicy.dnsPorts` names them, for the workers', the commands
    server's and the setup Job's policies alike."""
    values = _merge(
        _EGRESS,
        {
            "networkPolicy": {"dnsPorts": [5353]},
            "commands": {"server": {"enabled": True, "egress": [{"ports": [{"port": 9092}]}]}},
        },
    )
    policies = by_kind(render(values), "NetworkPolicy")
    assert len(policies) == 3
    for policy in policies:
        dns = policy["spec"]["egress"][0]["ports"]
        assert dns == [{"port": 5353, "protocol": "UDP"}, {"port": 5353, "protocol": "TCP"}]
    defaults = by_kind(render(_EGRESS), "NetworkPolicy")
    assert all(p["spec"]["egress"][0]["ports"][0]["port"] == 53 for p in defaults)


def test_readmes_install_command_takes_an_all_digit_short_commit() -> None:
    """A short commit of digits alone (1 in 27, e.g. 1234567) is an integer to `--set`,
    which the schema (tag: string) refused (review h60j): README says `--set-string`."""
    readme = (CHART.parents[1] / "README.md").read_text()
    assert '--set-string image.tag="$(git rev-parse --short HEAD)"' in readme
    proc = run(
        tool("helm"), "template", "pay", str(CHART),
        "--set", "image.repository=registry.example/paystream",
        "--set-string", "image.tag=1234567", "--set", "existingSecret=paystream-secrets",
        "--set", "kafka.brokerUrl=kafka://kafka-0.kafka:9092;kafka-1.kafka:9092",
        "--set", "redis.url=redis://redis:6379/0", "--set", "partitions=12",
        "--set", "replicaCount=3",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "registry.example/paystream:1234567" in proc.stdout

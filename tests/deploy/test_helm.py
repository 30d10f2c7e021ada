"""The Helm chart (helm/paystream): lint, render, Kubernetes' own schemas, and the facts
the workers rely on (settings they read, probes, secrets, the setup job, monitoring)."""

from __future__ import annotations

import json
import os
import re
import tempfile
from typing import Any

import click
import kubernetes_validate
import pytest
import yaml

from paystream.settings import load_settings, unknown_variables
from tests.deploy.tools import CHART, SERVER_URLS, run, tool

REQUIRED = {
    "image": {"repository": "registry.example/paystream", "tag": "3f9c2ab"},
    "kafka": {"brokerUrl": "kafka://kafka-0.kafka:9092;kafka-1.kafka:9092"},
    "redis": {"url": "redis://redis:6379/0"},
    "existingSecret": "paystream-secrets",
}
MONITORING = {
    "metrics": {
        "serviceMonitor": {"enabled": True, "tokenSecret": {"name": "scrape-token"}},
        "prometheusRule": {"enabled": True},
        "grafanaDashboard": {"enabled": True},
    },
    "networkPolicy": {"enabled": True, "allowFromNamespaces": ["monitoring"]},
}
SECRET_KEYS = {"DATABASE_URL", "PAYSTREAM_DB_APP_PASSWORD", "PAYSTREAM_MASTER_KEY"}
# The chart's minimum Kubernetes (Chart.yaml kubeVersion) and the newest schemas we have.
K8S_VERSIONS = ("1.25.0", kubernetes_validate.latest_version())


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def helm(*args: str, values: dict[str, Any] | None = None, kube: str | None = None) -> Any:
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        json.dump(values or {}, f)  # JSON is YAML
    versions = ["--kube-version", kube] if kube else []
    try:
        return run(tool("helm"), *args, str(CHART), "-f", f.name, *versions)
    finally:
        os.unlink(f.name)


def render(values: dict[str, Any] | None = None, kube: str | None = None) -> list[dict[str, Any]]:
    proc = helm("template", "pay", values=_merge(REQUIRED, values or {}), kube=kube)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def refusal(values: dict[str, Any]) -> str:
    proc = helm("template", "pay", values=values)
    assert proc.returncode != 0, f"rendered: {proc.stdout[:500]}"
    return proc.stderr


def worker_policy(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """The workers' NetworkPolicy (not the setup Job's or the commands server's)."""
    [policy] = [
        p for p in by_kind(docs, "NetworkPolicy")
        if p["spec"]["podSelector"]["matchLabels"].get("app.kubernetes.io/component") == "worker"
    ]  # fmt: skip
    return policy


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    [doc] = by_kind(docs, kind)
    return doc


def worker_service(docs: list[dict[str, Any]], *, headless: bool = False) -> dict[str, Any]:
    """The workers' Service (``headless``: the StatefulSet's governing one)."""
    [doc] = [
        d
        for d in by_kind(docs, "Service")
        if (d["spec"].get("clusterIP") == "None") == headless
        and d["spec"]["selector"].get("app.kubernetes.io/component") == "worker"
    ]
    return doc


def containers(pod_spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod_spec.get("initContainers", []), *pod_spec["containers"]]


def test_the_chart_lints_strictly() -> None:
    for values in (REQUIRED, _merge(REQUIRED, MONITORING)):
        proc = helm("lint", "--strict", values=values)
        assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_manifest_is_valid_for_kubernetes(version: str) -> None:
    docs = render(MONITORING, kube=version)
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted(["ConfigMap", "StatefulSet", "Job", "NetworkPolicy", "NetworkPolicy",
                            "PodDisruptionBudget", "PrometheusRule", "Service", "Service",
                            "ServiceAccount", "ServiceMonitor"])  # fmt: skip
    for doc in docs:
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # the Prometheus Operator's CRDs: checked below
        # strict: an unknown or misplaced field is an error, not silently dropped
        kubernetes_validate.validate(doc, version, strict=True)


def test_required_values_are_refused_when_missing() -> None:
    def without(key: str) -> dict[str, Any]:
        return {k: v for k, v in REQUIRED.items() if k != key}

    assert "brokerUrl" in refusal(without("kafka"))
    assert "existingSecret" in refusal(without("existingSecret"))
    assert "image.repository" in refusal(without("image"))
    for url in ("kafka:9092", "kafka://kafka", "kafka://a:9092;b"):
        assert "brokerUrl" in refusal(_merge(REQUIRED, {"kafka": {"brokerUrl": url}})), url
    # a typo'd key is refused, not silently ignored, nested ones too (review finding:
    # `tokenSecret.nmae` pointed the ServiceMonitor at the Secret holding the master key,
    # `image.tga` deployed the chart's default tag)
    assert "replicas" in refusal(_merge(REQUIRED, {"replicas": 3}))
    for typo in (
        {"image": {"tga": "1.2"}},
        {"metrics": {"serviceMonitor": {"tokenSecret": {"nmae": "scrape-token"}}}},
        {"metrics": {"serviceMonitor": {"enabeld": True}}},
        {"setupJob": {"backofLimit": 1}},
        {"podDisruptionBudget": {"maxUnavilable": 1}},
        {"web": {"prot": 1}},
    ):
        assert "Additional property" in refusal(_merge(REQUIRED, typo)), typo
    assert "replicationFactor" in refusal(_merge(REQUIRED, {"replicationFactor": 20}))


def test_secrets_never_go_into_the_pod_spec_as_plain_values() -> None:
    """A provider secret in `config`, or a Redis password in `redis.url`, was plain env
    in every container (review finding): the former is refused, the latter can come
    from the Secret."""
    secret = {"config": {"PAYSTREAM_SECRET_STRIPE": "sk_live_x"}}
    assert "PAYSTREAM_SECRET_STRIPE" in refusal(_merge(REQUIRED, secret))
    from_secret = {"redis": {"fromSecret": True, "url": ""}}
    env = one(render(from_secret), "StatefulSet")["spec"]["template"]["spec"]
    [redis] = [e for e in env["containers"][0]["env"] if e["name"] == "REDIS_URL"]
    assert redis["valueFrom"]["secretKeyRef"]["key"] == "REDIS_URL"
    both = {"redis": {"fromSecret": True, "url": "redis://:pw@redis:6379/0"}}
    assert "one or the other" in refusal(_merge(REQUIRED, both))
    # ... and a URL holding one in redis.url is refused, not rendered (review finding).
    for url in ("redis://:hunter2@redis:6379/0", "rediss://app:hunter2@redis:6380"):
        assert "holds credentials" in refusal(_merge(REQUIRED, {"redis": {"url": url}}))
    render({"redis": {"url": "redis://redis:6379/0"}})
    # An OTLP exporter's headers (a tracing backend's API key) come from the Secret only.
    otlp = {"config": {"OTEL_EXPORTER_OTLP_HEADERS": "x-honeycomb-team=KEY"}}
    assert "OTEL_EXPORTER_OTLP_HEADERS" in refusal(_merge(REQUIRED, otlp))
    kafka = {"config": {"PAYSTREAM_KAFKA_SASL_PASSWORD": "pw"}}
    assert "PAYSTREAM_KAFKA_SASL_PASSWORD" in refusal(_merge(REQUIRED, kafka))
    [headers] = [
        e for e in env["containers"][0]["env"] if e["name"] == "OTEL_EXPORTER_OTLP_HEADERS"
    ]
    assert headers["valueFrom"]["secretKeyRef"] == {
        "name": REQUIRED["existingSecret"],
        "key": "OTEL_EXPORTER_OTLP_HEADERS",
        "optional": True,
    }


def test_the_fleet_can_be_paused_and_drains_are_never_blocked() -> None:
    assert one(render({"replicaCount": 0}), "StatefulSet")["spec"]["replicas"] == 0
    assert "maxUnavailable" in refusal(
        _merge(REQUIRED, {"podDisruptionBudget": {"maxUnavailable": 0}})
    )
    # an unready worker (stalled, crash-looping) may still be evicted where Kubernetes can
    new = one(render(kube="1.30.0"), "PodDisruptionBudget")["spec"]
    assert new["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    assert (
        "unhealthyPodEvictionPolicy"
        not in one(render(kube="1.25.0"), "PodDisruptionBudget")["spec"]
    )


def test_more_workers_than_partitions_is_refused() -> None:
    # A worker owning no partition is never ready: a rolling update would stall on it.
    err = refusal(_merge(REQUIRED, {"replicaCount": 5, "partitions": 4}))
    assert "replicaCount (5) > partitions (4)" in err
    render({"replicaCount": 4, "partitions": 4})


def test_roles_are_checked() -> None:
    assert "needs ledger" in refusal(_merge(REQUIRED, {"agents": "commands,insights"}))
    assert "agents" in refusal(_merge(REQUIRED, {"agents": "commands,fraud"}))
    render({"agents": "commands"})


def test_config_cannot_override_what_the_chart_sets_or_name_a_non_setting() -> None:
    err = refusal(_merge(REQUIRED, {"config": {"PAYSTREAM_MASTER_KEY": "AAAA"}}))
    assert "config.PAYSTREAM_MASTER_KEY: set by the chart" in err
    assert "DATABASE_URL" in refusal(_merge(REQUIRED, {"config": {"DATABASE_URL": "x"}}))
    assert "config" in refusal(_merge(REQUIRED, {"config": {"log_level": "debug"}}))


def _worker(docs: list[dict[str, Any]]) -> dict[str, Any]:
    [c] = one(docs, "StatefulSet")["spec"]["template"]["spec"]["containers"]
    return c


def test_every_variable_set_is_one_paystream_reads() -> None:
    extra = {"config": {"PAYSTREAM_GATEWAY_TIMEOUT_SECONDS": "5", "PAYSTREAM_OTEL_EXPORTER": "otlp",
                        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}}  # fmt: skip
    docs = render(extra)
    pods = [one(docs, "StatefulSet"), one(docs, "Job")]
    for pod in pods:
        for c in containers(pod["spec"]["template"]["spec"]):
            names = [e["name"] for e in c["env"]]
            assert len(names) == len(set(names)), f"{c['name']}: a variable set twice"
            assert unknown_variables(dict.fromkeys(names, "")) == [], c["name"]
            others = {n for n in names if not n.startswith(("PAYSTREAM_", "OTEL_"))}
            assert others <= SERVER_URLS, others
    # A typo'd setting is caught by the same check (the schema admits any PAYSTREAM_ name).
    typo = render({"config": {"PAYSTREAM_WEB_TOKN": "x"}})
    names = {e["name"]: "" for e in _worker(typo)["env"]}
    assert unknown_variables(names) == ["PAYSTREAM_WEB_TOKN"]


def test_secrets_come_from_the_secret_never_from_values() -> None:
    docs = render()
    for pod in (one(docs, "StatefulSet"), one(docs, "Job")):
        for c in containers(pod["spec"]["template"]["spec"]):
            env = {e["name"]: e for e in c["env"]}
            if c["name"] == "topics":  # the broker alone: no database, no master key
                [login] = [e for e in c["env"] if "valueFrom" in e]
                assert login["valueFrom"]["secretKeyRef"] == {
                    "name": "paystream-secrets",
                    "key": "PAYSTREAM_KAFKA_SASL_PASSWORD",
                    "optional": True,
                }
                continue
            # variable → the Secret's key: the workers' database URL is paystream_app's own
            keys = {k: k for k in SECRET_KEYS | {"PAYSTREAM_RETIRED_MASTER_KEYS"}}
            if c["name"] == "migrate":
                # The owner's credentials, and no master key: the pod that could switch
                # row-level security off must not also open every tenant's data.
                keys = {k: k for k in ("DATABASE_URL", "PAYSTREAM_DB_APP_PASSWORD")}
            else:
                del keys["PAYSTREAM_DB_APP_PASSWORD"]
                keys["DATABASE_URL"] = "APP_DATABASE_URL"
                for optional in (
                    "OTEL_EXPORTER_OTLP_HEADERS",  # (a tracing backend's API key)
                    "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
                    "PAYSTREAM_KAFKA_SASL_PASSWORD",  # (the brokers' SASL login)
                ):
                    keys[optional] = optional
            secret_env = {k for k, e in env.items() if "secretKeyRef" in e.get("valueFrom", {})}
            # (the web, ingress and scrape tokens: checked apart)
            web = {"PAYSTREAM_WEB_TOKEN", "PAYSTREAM_INGRESS_TOKEN", "PAYSTREAM_METRICS_TOKEN"}
            assert secret_env - web == keys.keys(), c["name"]
            for var, key in keys.items():
                ref = env[var]["valueFrom"]["secretKeyRef"]
                assert (ref["name"], ref["key"]) == ("paystream-secrets", key)
                assert "value" not in env[var]
            if c["name"] != "migrate":
                retired = env["PAYSTREAM_RETIRED_MASTER_KEYS"]["valueFrom"]["secretKeyRef"]
                assert retired["optional"]
    token = {e["name"]: e for e in _worker(docs)["env"]}["PAYSTREAM_WEB_TOKEN"]
    assert token["valueFrom"]["secretKeyRef"]["key"] == "PAYSTREAM_WEB_TOKEN"
    text = yaml.safe_dump_all(docs)
    assert not re.search(r"postgres(ql)?(\+asyncpg)?://", text)


def test_workers_serve_probes_and_lookups_on_their_web_port() -> None:
    docs = render({"web": {"port": 7077}, "service": {"port": 80}})
    worker = _worker(docs)
    env = {e["name"]: e for e in worker["env"]}
    [port] = worker["ports"]
    assert (port["name"], port["containerPort"]) == ("http", 7077)
    assert env["PAYSTREAM_WEB_PORT"]["value"] == "7077"
    assert env["PAYSTREAM_WEB_HOST"]["value"] == "0.0.0.0"
    # other workers fetch a tenant's entities from its owner: at the pod's own address
    assert env["PAYSTREAM_WEB_ADVERTISED_HOST"]["valueFrom"]["fieldRef"]["fieldPath"] == (
        "status.podIP"
    )
    assert worker["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    for probe in ("livenessProbe", "startupProbe"):
        assert worker[probe]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert worker["args"] == ["worker"]
    assert env["PAYSTREAM_AGENTS"]["value"] == "commands,ledger,insights"
    assert env["PAYSTREAM_TABLE_STORE"]["value"] == "rocksdb://"
    service = worker_service(docs)
    assert service["spec"]["ports"] == [
        {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}
    ]


def test_workers_run_unprivileged_with_writable_data_and_tmp_only() -> None:
    docs = render()
    spec = one(docs, "StatefulSet")["spec"]["template"]["spec"]
    worker = _worker(docs)
    sc = worker["securityContext"]
    assert sc["runAsNonRoot"] and sc["readOnlyRootFilesystem"]
    assert not sc["allowPrivilegeEscalation"] and sc["capabilities"]["drop"] == ["ALL"]
    data_dir = {e["name"]: e.get("value") for e in worker["env"]}["PAYSTREAM_DATA_DIR"]
    mounts = {m["mountPath"] for m in worker["volumeMounts"]}
    assert mounts == {data_dir, "/tmp"}
    assert spec["automountServiceAccountToken"] is False
    # A Service named paystream-web would inject PAYSTREAM_WEB_PORT=tcp://… otherwise.
    for pod in (one(docs, "StatefulSet"), one(docs, "Job")):
        assert pod["spec"]["template"]["spec"]["enableServiceLinks"] is False
    assert worker["resources"]["limits"]["ephemeral-storage"]
    # Table stores on a claim of each worker's own, kept across restarts...
    sts = one(docs, "StatefulSet")["spec"]
    [claim] = sts["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "data" and "data" not in {
        v["name"] for v in spec["volumes"]
    }
    assert claim["spec"]["resources"]["requests"]["storage"] == "8Gi"
    assert "storageClassName" not in claim["spec"]  # the cluster's default
    assert sts["serviceName"] == worker_service(docs, headless=True)["metadata"]["name"]
    # ... or, persistence off, on an emptyDir of that size, rebuilt with each new pod.
    off = render({"persistence": {"enabled": False}})
    assert "volumeClaimTemplates" not in one(off, "StatefulSet")["spec"]
    pod = one(off, "StatefulSet")["spec"]["template"]["spec"]
    assert {v["name"]: v for v in pod["volumes"]}["data"]["emptyDir"]["sizeLimit"] == "8Gi"
    fast = render({"persistence": {"storageClassName": "fast-ssd", "size": "20Gi"}})
    [claim] = one(fast, "StatefulSet")["spec"]["volumeClaimTemplates"]
    assert (claim["spec"]["storageClassName"], claim["spec"]["resources"]["requests"]) == (
        "fast-ssd",
        {"storage": "20Gi"},
    )


def test_selectors_match_the_pods_they_select() -> None:
    docs = render(MONITORING)
    deployment = one(docs, "StatefulSet")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]

    def selects(selector: dict[str, str]) -> bool:
        return selector.items() <= pod_labels.items()

    assert selects(deployment["spec"]["selector"]["matchLabels"])
    assert selects(worker_service(docs)["spec"]["selector"])
    assert selects(worker_service(docs, headless=True)["spec"]["selector"])
    assert selects(one(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"])
    assert selects(worker_policy(docs)["spec"]["podSelector"]["matchLabels"])
    # the setup job's pods are not workers: the Service and the PDB must not count them
    job_labels = one(docs, "Job")["spec"]["template"]["metadata"]["labels"]
    assert not worker_service(docs)["spec"]["selector"].items() <= job_labels.items()


def test_the_setup_job_makes_topics_then_the_schema_before_workers_start() -> None:
    docs = render({"partitions": 8})
    job = one(docs, "Job")
    hooks = job["metadata"]["annotations"]["helm.sh/hook"].split(",")
    assert hooks == ["pre-install", "pre-upgrade"]
    spec = job["spec"]["template"]["spec"]
    assert [c["args"] for c in containers(spec)] == [["topics"], ["migrate"]]
    # same servers and partition count as the workers
    worker_env = {e["name"]: e for e in _worker(docs)["env"]}
    for c in containers(spec):
        env = {e["name"]: e for e in c["env"]}
        assert env["PAYSTREAM_PARTITIONS"]["value"] == "8"
        shared = ["KAFKA_BROKER_URL", "PAYSTREAM_APP_ID", "PAYSTREAM_REPLICATION_FACTOR"]
        for name in shared:
            assert env[name] == worker_env[name], (c["name"], name)
        if c["name"] == "migrate":  # as the schema owner, giving paystream_app its password
            for key in ("DATABASE_URL", "PAYSTREAM_DB_APP_PASSWORD"):
                assert env[key]["valueFrom"]["secretKeyRef"]["key"] == key
    # Least privilege: the workers' DATABASE_URL is paystream_app's own; nothing of the
    # owner's reaches them.
    ref = worker_env["DATABASE_URL"]["valueFrom"]["secretKeyRef"]
    assert ref["key"] == "APP_DATABASE_URL" and "PAYSTREAM_DB_APP_PASSWORD" not in worker_env
    assert render({"setupJob": {"enabled": False}}) and not by_kind(
        render({"setupJob": {"enabled": False}}), "Job"
    )


def test_monitoring_scrapes_with_the_token_and_ships_the_rules_and_dashboard() -> None:
    docs = render(MONITORING)
    service = worker_service(docs)
    monitor = one(docs, "ServiceMonitor")["spec"]
    # One Service scraped (the headless one too would scrape every worker twice).
    scraped = [
        d["metadata"]["name"]
        for d in by_kind(docs, "Service")
        if monitor["selector"]["matchLabels"].items() <= d["metadata"]["labels"].items()
    ]
    assert scraped == [service["metadata"]["name"]]
    [endpoint] = monitor["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    creds = endpoint["authorization"]["credentials"]
    # a Secret of its own: monitoring need not read the one holding the master key (the
    # key as before PAYSTREAM_METRICS_TOKEN: an upgrade keeps scraping)
    assert (creds["name"], creds["key"]) == ("scrape-token", "PAYSTREAM_WEB_TOKEN")
    [worker] = one(docs, "StatefulSet")["spec"]["template"]["spec"]["containers"]
    [read] = [e for e in worker["env"] if e["name"] == "PAYSTREAM_METRICS_TOKEN"]
    assert read["valueFrom"]["secretKeyRef"]["optional"] is True
    # The alert rules select job="paystream": the job label the ServiceMonitor gives.
    assert service["metadata"]["labels"][monitor["jobLabel"]] == "paystream"
    rules = yaml.safe_load((CHART / "files/prometheus/alerts.yml").read_text())
    assert one(docs, "PrometheusRule")["spec"] == rules
    exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    assert any('job="paystream"' in e for e in exprs)
    dashboard = one(docs, "ConfigMap")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    shipped = json.loads((CHART / "files/grafana/paystream.json").read_text())
    assert json.loads(dashboard["data"]["paystream.json"]) == shipped


def test_monitoring_scrapes_the_commands_server_as_its_own_job() -> None:
    docs = render(_merge(MONITORING, {"commands": {"server": {"enabled": True}}}))
    monitors = {d["metadata"]["name"]: d["spec"] for d in by_kind(docs, "ServiceMonitor")}
    assert set(monitors) == {"pay-paystream", "pay-paystream-commands"}
    services = by_kind(docs, "Service")

    def scraped(spec: dict[str, Any]) -> list[str]:
        wanted = spec["selector"]["matchLabels"].items()
        return [
            d["metadata"]["name"] for d in services if wanted <= d["metadata"]["labels"].items()
        ]

    assert scraped(monitors["pay-paystream"]) == [worker_service(docs)["metadata"]["name"]]
    assert scraped(monitors["pay-paystream-commands"]) == ["pay-paystream-commands"]
    [endpoint] = monitors["pay-paystream-commands"]["endpoints"]
    [commands] = [d for d in services if d["metadata"]["name"] == "pay-paystream-commands"]
    assert endpoint["port"] in {p["name"] for p in commands["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    # Without a token unless asked (an upgrade whose Secret lacks one keeps scraping);
    # asked, with the workers' scrape token, PAYSTREAM_METRICS_TOKEN, which it reads
    # (optionally) from the Secret, as it reads nothing else of a worker's.
    assert "authorization" not in endpoint
    scraper = {"tokenSecret": {"name": "scrape-token", "key": "PAYSTREAM_METRICS_TOKEN"}}
    bearing = render(
        _merge(
            MONITORING,
            {
                "commands": {"server": {"enabled": True}},
                "metrics": {"serviceMonitor": {**scraper, "commandsWithToken": True}},
            },
        )
    )
    both = {d["metadata"]["name"]: d["spec"] for d in by_kind(bearing, "ServiceMonitor")}
    [workers_endpoint] = both["pay-paystream"]["endpoints"]
    [commands_endpoint] = both["pay-paystream-commands"]["endpoints"]
    assert commands_endpoint["authorization"] == workers_endpoint["authorization"]
    assert workers_endpoint["authorization"]["credentials"] == {
        "name": "scrape-token",
        "key": "PAYSTREAM_METRICS_TOKEN",
    }
    [server] = by_kind(docs, "Deployment")
    [container] = server["spec"]["template"]["spec"]["containers"]
    read = {
        e["name"]: e["valueFrom"]["secretKeyRef"]
        for e in container["env"]
        if "valueFrom" in e and "secretKeyRef" in e["valueFrom"]
    }
    assert read["PAYSTREAM_METRICS_TOKEN"]["optional"] is True
    # The job its alert rules select, not the workers' (their up checks would count it).
    assert endpoint["relabelings"] == [{"targetLabel": "job", "replacement": "paystream-ingress"}]
    rules = yaml.safe_load((CHART / "files/prometheus/alerts.yml").read_text())
    exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    assert any('job="paystream-ingress"' in e for e in exprs)
    # Without the commands server, the workers' alone.
    assert len(by_kind(render(MONITORING), "ServiceMonitor")) == 1


def test_container_commands_are_paystream_commands() -> None:
    from paystream.cli import cli

    entrypoint = re.search(
        r"^ENTRYPOINT (.+)$", (CHART.parents[1] / "Dockerfile").read_text(), re.M
    )
    assert entrypoint and json.loads(entrypoint.group(1)) == ["paystream"]
    docs = render()
    for pod in (one(docs, "StatefulSet"), one(docs, "Job")):
        for c in containers(pod["spec"]["template"]["spec"]):
            assert "command" not in c  # the image's entrypoint runs
            assert cli.get_command(click.Context(cli), c["args"][0]), c["args"]


def test_the_chart_and_the_package_agree_on_the_version() -> None:
    import tomllib

    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = tomllib.loads((CHART.parents[1] / "pyproject.toml").read_text())["project"]
    assert chart["appVersion"] == project["version"]
    # (The image is this build's own tag, not the version: test_helm_image below.)


def test_a_network_policy_that_would_shut_out_prometheus_is_refused() -> None:
    shut = _merge(REQUIRED, {"networkPolicy": {"enabled": True, "allowFromNamespaces": []},
                             "metrics": {"serviceMonitor": {"enabled": True}}})  # fmt: skip
    assert "allowFromNamespaces" in refusal(shut)


def test_the_storage_limit_covers_an_emptydir_data_volume() -> None:
    """The kubelet evicts a pod past its containers' ephemeral-storage limit whatever its
    volumes' size limits: a data volume raised alone did nothing, and an evicted worker
    rebuilt its tables from the changelogs, to be evicted again (review finding). A
    claim (persistence on) is no ephemeral storage."""
    off = {"enabled": False}
    err = refusal(_merge(REQUIRED, {"persistence": {**off, "size": "50Gi"}}))
    assert "must cover persistence.size (50Gi) plus 2Gi" in err
    render({"persistence": {"size": "50Gi"}})
    render(
        {
            "persistence": {**off, "size": "50Gi"},
            "resources": {"limits": {"ephemeral-storage": "52Gi"}},
        }
    )
    assert "ephemeral-storage" in refusal(
        _merge(
            REQUIRED,
            {
                "persistence": {**off, "size": "9G"},
                "resources": {"limits": {"ephemeral-storage": "10G"}},
            },
        )
    )  # (9 GB + 2 GiB is over 10 GB)
    render(
        {
            "persistence": {**off, "size": "8000Mi"},
            "resources": {"limits": {"ephemeral-storage": "1T"}},
        }
    )
    worker = _worker(render())
    assert worker["resources"]["limits"]["ephemeral-storage"] == "10Gi"


def test_the_setup_job_runs_where_the_workers_may() -> None:
    """A dedicated, tainted pool that alone reaches the broker and the database: a Job
    scheduled elsewhere stayed Pending and failed the install (review finding)."""
    placement = {
        "nodeSelector": {"pool": "payments"},
        "tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}],
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [
                {"key": "zone", "operator": "In", "values": ["a"]}]}]}}},
        "podLabels": {"team": "payments"},
        "setupJob": {"podAnnotations": {"sidecar.istio.io/inject": "false"}},
    }  # fmt: skip
    apart = {"requiredDuringSchedulingIgnoredDuringExecution": [{
        "labelSelector": {"matchLabels": {"app.kubernetes.io/instance": "pay"}},
        "topologyKey": "kubernetes.io/hostname"}]}  # fmt: skip
    placement["affinity"]["podAntiAffinity"] = apart  # type: ignore[index]
    docs = render(placement)
    pod = one(docs, "Job")["spec"]["template"]
    for key in ("nodeSelector", "tolerations"):
        assert pod["spec"][key] == placement[key], key
    # The workers' node affinity, not their anti-affinity (it would keep the Job off
    # every node running a worker; second review's finding), unless set for the Job.
    assert pod["spec"]["affinity"] == {"nodeAffinity": placement["affinity"]["nodeAffinity"]}  # type: ignore[index]
    assert (
        one(docs, "StatefulSet")["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"] == apart
    )
    own = {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []}}
    job = one(render({**placement, "setupJob": {"affinity": own}}), "Job")
    assert job["spec"]["template"]["spec"]["affinity"] == own
    assert pod["metadata"]["labels"]["team"] == "payments"
    assert pod["metadata"]["annotations"] == {"sidecar.istio.io/inject": "false"}
    # So does the commands server: off that pool it never reached the brokers, never got
    # ready, and POST /v1/commands answered 503 (review finding: it had no affinity).
    server_on = {**placement, "commands": {"server": {"enabled": True}}}
    server = _commands_server(render(server_on))["spec"]["template"]["spec"]
    for key in ("nodeSelector", "tolerations"):
        assert server[key] == placement[key], key
    assert server["affinity"] == {"nodeAffinity": placement["affinity"]["nodeAffinity"]}  # type: ignore[index]
    mine = _merge(server_on, {"commands": {"server": {"affinity": own}}})
    assert _commands_server(render(mine))["spec"]["template"]["spec"]["affinity"] == own


def test_the_chart_renders_as_a_dependency_of_another(tmp_path: Any) -> None:
    """Helm gives a subchart `global: {}`: the schema, closed to unknown keys, refused
    every umbrella chart and Argo CD app that listed paystream (review finding)."""
    import shutil

    umbrella = tmp_path / "umbrella"
    shutil.copytree(CHART, umbrella / "charts" / "paystream")
    (umbrella / "Chart.yaml").write_text(
        "apiVersion: v2\nname: umbrella\nversion: 0.1.0\n"
        "dependencies:\n  - name: paystream\n    version: '>=0.0.0-0'\n"
    )
    (umbrella / "values.yaml").write_text(
        yaml.safe_dump({"global": {"imageRegistry": "x"}, "paystream": REQUIRED})
    )
    proc = run(tool("helm"), "template", "rel", str(umbrella))
    assert proc.returncode == 0, proc.stderr
    kinds = {d["kind"] for d in yaml.safe_load_all(proc.stdout) if d}
    assert "StatefulSet" in kinds
    # Unknown keys are still refused.
    assert "nosuchkey" in refusal({**REQUIRED, "nosuchkey": 1}).lower()


def test_workers_get_their_drain_before_they_are_killed() -> None:
    """A worker drains its batch in delivery for up to 30 s, then closes in 10 s: killed
    sooner, that batch is redone (review finding: compose stopped workers at 30 s)."""
    err = refusal(_merge(REQUIRED, {"terminationGracePeriodSeconds": 50}))
    # (55: the chart's preStop waits 5 s before SIGTERM; review h67s.)
    assert "terminationGracePeriodSeconds: Must be greater than or equal to 55" in err
    compose = yaml.safe_load((CHART.parents[1] / "docker-compose.yml").read_text())
    seconds = int(compose["x-worker"]["stop_grace_period"].removesuffix("s"))
    assert seconds >= 50


def test_egress_is_limited_to_what_is_named_when_rules_are_given() -> None:
    """Pods holding the master key reach, once egress rules are given, DNS, each other's
    web port and those rules only (review finding); without rules egress stays open."""
    assert worker_policy(render(MONITORING))["spec"]["policyTypes"] == ["Ingress"]
    broker = {
        "to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kafka"}}}]
    }
    stripe = {"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}], "ports": [{"port": 443}]}
    values = _merge(MONITORING, {"networkPolicy": {"egress": [broker, stripe]}})
    for version in K8S_VERSIONS:
        policy = worker_policy(render(values, kube=version))
        kubernetes_validate.validate(policy, version, strict=True)
    spec = policy["spec"]
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    dns, peers, *given = spec["egress"]
    assert {p["port"] for p in dns["ports"]} == {53}
    assert peers["ports"] == [{"port": "http", "protocol": "TCP"}]
    worker_labels = one(render(values), "StatefulSet")["spec"]["template"]["metadata"]["labels"]
    assert peers["to"][0]["podSelector"]["matchLabels"].items() <= worker_labels.items()
    assert given == [broker, stripe]
    assert "egress" in refusal(_merge(REQUIRED, {"networkPolicy": {"egress": "all"}}))


def test_a_name_too_long_for_the_statefulsets_pods_is_refused() -> None:
    """Its pods are labelled with its name and a revision hash (63 characters at most):
    a longer name rendered fine and then never started a pod (review finding)."""
    assert "at most 52" in refusal(_merge(REQUIRED, {"fullnameOverride": "p" * 53}))
    sts = one(render({"fullnameOverride": "p" * 52}), "StatefulSet")
    assert len(sts["metadata"]["name"]) == 52


_SASL = {
    "config": {
        "PAYSTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "PAYSTREAM_KAFKA_SASL_USERNAME": "paystream",
    }
}


@pytest.mark.parametrize("name", ["topics", "migrate", "worker"])
def test_every_container_loads_its_settings_with_a_kafka_login(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the login as the README says (protocol and user in `config`, the password
    in the Secret), `migrate` got the protocol and user but not the password, and its
    settings refused to load: every install and upgrade failed (review finding). It now
    gets none of the login; the others get all of it."""
    docs = render(_SASL)
    if name == "worker":
        c = _worker(docs)
    else:
        [c] = [
            c for c in containers(one(docs, "Job")["spec"]["template"]["spec"]) if c["name"] == name
        ]
    for var in list(os.environ):
        if var.startswith(("PAYSTREAM_", "KAFKA_", "DATABASE_", "REDIS_", "OTEL_")):
            monkeypatch.delenv(var)
    for e in c["env"]:  # a Secret's keys as the operator filled them in
        secret = "postgresql://o:p@db/x" if "DATABASE" in e["name"] else "c2VjcmV0" * 5
        monkeypatch.setenv(e["name"], e.get("value", secret))
    settings = load_settings()
    login = name != "migrate"
    assert (settings.kafka_sasl_password is not None) == login
    assert (settings.kafka_security_protocol == "SASL_SSL") == login


@pytest.mark.parametrize(
    "url",
    [
        "redis://cache:6379/0?password=s3cret",  # redis-py logs in with it (parse_url)
        "redis://cache:6379/0?username=u&password=s3cret",
        "rediss://cache:6380/0?db=1&password=s3cret",
    ],
)
def test_a_redis_url_with_a_password_in_its_query_is_refused(url: str) -> None:
    assert "holds credentials" in refusal(_merge(REQUIRED, {"redis": {"url": url}}))


def _pod_specs(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The workers', the setup job's and (when it runs) the commands server's pods."""
    kinds = ("StatefulSet", "Job", "Deployment")
    return [d["spec"]["template"]["spec"] for kind in kinds for d in by_kind(docs, kind)]


def test_a_tls_secret_is_mounted_read_only_in_every_container_that_reaches_a_server() -> None:
    """A private CA or client certificates (PAYSTREAM_KAFKA_SSL_* files) come from a
    Secret of the operator's, at the path the settings in `config` name."""
    values = {
        "tls": {"secretName": "paystream-tls"},
        "commands": {"server": {"enabled": True}},
        "config": {
            "PAYSTREAM_KAFKA_SECURITY_PROTOCOL": "SSL",
            "PAYSTREAM_KAFKA_SSL_CAFILE": "/etc/paystream/tls/ca.crt",
        },
    }
    for version in K8S_VERSIONS:
        for doc in render(values, kube=version):
            kubernetes_validate.validate(doc, version, strict=True)
    docs = render(values)
    assert len(_pod_specs(docs)) == 3
    for spec in _pod_specs(docs):
        # readable by the pods' group alone: each runs with it
        assert spec["securityContext"]["fsGroup"] == 10001
        [volume] = [v for v in spec["volumes"] if v["name"] == "tls"]
        assert volume["secret"] == {"secretName": "paystream-tls", "defaultMode": 0o440}
        containers = [*spec.get("initContainers", []), *spec["containers"]]
        assert containers
        for container in containers:
            [mount] = [m for m in container["volumeMounts"] if m["name"] == "tls"]
            assert mount == {"name": "tls", "mountPath": "/etc/paystream/tls", "readOnly": True}
    env = {e["name"]: e.get("value") for e in _pod_specs(docs)[0]["containers"][0]["env"]}
    assert env["PAYSTREAM_KAFKA_SSL_CAFILE"] == "/etc/paystream/tls/ca.crt"


def test_no_tls_secret_mounts_nothing() -> None:
    for spec in _pod_specs(render()):
        assert all(v["name"] != "tls" for v in spec["volumes"])
        for container in [*spec.get("initContainers", []), *spec["containers"]]:
            assert all(m["name"] != "tls" for m in container.get("volumeMounts", []))


# The public Ingresses: each routes one path of the web port and nothing else of it.
PUBLIC_INGRESSES = [("webhooks", "/webhooks/", "Prefix"), ("commands", "/v1/commands", "Exact")]


def _public(section: str, **ingress: Any) -> dict[str, Any]:
    return {section: {"ingress": {"enabled": True, "host": f"{section}.example.com", **ingress}}}


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize(("section", "route", "path_type"), PUBLIC_INGRESSES)
def test_a_public_ingress_routes_its_path_and_nothing_else(
    version: str, section: str, route: str, path_type: str
) -> None:
    docs = render(_public(section, tlsSecretName="public-tls"))
    ingress = one(docs, "Ingress")
    kubernetes_validate.validate(ingress, version, strict=True)
    assert ingress["metadata"]["name"].endswith(f"-{section}")
    [rule] = ingress["spec"]["rules"]
    assert rule["host"] == f"{section}.example.com"
    # The dashboard, /v1 views and /metrics stay inside the cluster.
    [path] = rule["http"]["paths"]
    assert (path["path"], path["pathType"]) == (route, path_type)
    service = worker_service(docs)
    backend = path["backend"]["service"]
    assert backend["name"] == service["metadata"]["name"]
    assert backend["port"]["name"] in {p["name"] for p in service["spec"]["ports"]}
    tls = [{"hosts": [f"{section}.example.com"], "secretName": "public-tls"}]
    assert ingress["spec"]["tls"] == tls
    assert not by_kind(render(), "Ingress")  # off by default
    both = render(_merge(_public("webhooks"), _public("commands")))
    assert len(by_kind(both, "Ingress")) == 2


@pytest.mark.parametrize(("section", "route", "path_type"), PUBLIC_INGRESSES)
def test_a_public_ingress_without_a_host_or_past_the_network_policy_is_refused(
    section: str, route: str, path_type: str
) -> None:
    no_host = {section: {"ingress": {"enabled": True}}}
    assert f"{section}.ingress.host" in refusal(_merge(REQUIRED, no_host))
    shut = {"networkPolicy": {"enabled": True, "allowFromNamespaces": []}}
    refused = refusal(_merge(_merge(REQUIRED, _public(section)), shut))
    assert "ingress controller" in refused and f"{section}.ingress" in refused


def test_the_ingress_token_comes_from_the_secret_if_it_holds_one() -> None:
    [env] = [
        e
        for e in _pod_specs(render())[0]["containers"][0]["env"]
        if e["name"] == "PAYSTREAM_INGRESS_TOKEN"
    ]
    ref = env["valueFrom"]["secretKeyRef"]
    assert ref["key"] == "PAYSTREAM_INGRESS_TOKEN" and ref["optional"] is True
    assert "set by the chart" in refusal(
        _merge(REQUIRED, {"config": {"PAYSTREAM_INGRESS_TOKEN": "x"}})
    )


_SERVER = {"commands": {"server": {"enabled": True}}}


def _commands_server(docs: list[dict[str, Any]]) -> dict[str, Any]:
    [deployment] = [
        d for d in by_kind(docs, "Deployment") if d["metadata"]["name"].endswith("-commands")
    ]
    return deployment


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_the_commands_server_runs_the_ingress_alone_with_no_secret_but_its_token(
    version: str,
) -> None:
    """`paystream ingress` in pods of its own: the broker and the optional platform token,
    never the master key or a database login; ready on /healthz, alive while it answers."""
    assert not by_kind(render(), "Deployment")  # off by default: the workers' route serves
    docs = render(_merge(_SERVER, MONITORING), kube=version)
    for doc in docs:
        if not doc["apiVersion"].startswith("monitoring.coreos.com/"):
            kubernetes_validate.validate(doc, version, strict=True)
    deployment = _commands_server(docs)
    pod = deployment["spec"]["template"]
    [c] = pod["spec"]["containers"]
    assert c["args"] == ["ingress"] and "command" not in c
    env = {e["name"]: e for e in c["env"]}
    assert unknown_variables(dict.fromkeys(env, "")) == []
    assert env["PAYSTREAM_INGRESS_HOST"]["value"] == "0.0.0.0"
    assert env["PAYSTREAM_INGRESS_PORT"]["value"] == "6070"
    secrets = {n for n, e in env.items() if "secretKeyRef" in e.get("valueFrom", {})}
    assert secrets == {
        "PAYSTREAM_INGRESS_TOKEN",
        "PAYSTREAM_METRICS_TOKEN",  # (its /metrics, with every tenant's request counts)
        "PAYSTREAM_KAFKA_SASL_PASSWORD",
    }
    assert all(env[n]["valueFrom"]["secretKeyRef"]["optional"] for n in secrets)
    assert not {"DATABASE_URL", "REDIS_URL", "PAYSTREAM_MASTER_KEY"} & env.keys()
    [port] = c["ports"]
    assert (port["name"], port["containerPort"]) == ("http", 6070)
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    # Out of the endpoints before the listener closes; then in-flight requests finish.
    assert c["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "5"]
    assert pod["spec"]["terminationGracePeriodSeconds"] >= 5 + 15 + 10
    # The tls Secret's files (mode 0440) are readable by the pod's group alone.
    assert pod["spec"]["securityContext"]["fsGroup"] == 10001
    sc = c["securityContext"]
    assert sc["runAsNonRoot"] and sc["readOnlyRootFilesystem"]
    assert pod["spec"]["automountServiceAccountToken"] is False
    assert pod["spec"]["enableServiceLinks"] is False
    # Its Service and NetworkPolicy select its pods, and the workers' do not.
    labels = pod["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    [service] = [s for s in by_kind(docs, "Service") if s["metadata"]["name"].endswith("-commands")]
    assert service["spec"]["selector"].items() <= labels.items()
    assert not worker_service(docs)["spec"]["selector"].items() <= labels.items()
    policies = by_kind(docs, "NetworkPolicy")
    assert [
        p for p in policies if p["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    ]
    # A drain never takes both replicas; the workers' budget does not count them.
    budgets = by_kind(docs, "PodDisruptionBudget")
    [own] = [b for b in budgets if b["spec"]["selector"]["matchLabels"].items() <= labels.items()]
    assert own["spec"]["maxUnavailable"] == 1 and len(budgets) == 2


def test_the_commands_ingress_routes_to_the_commands_server_when_it_runs() -> None:
    docs = render(_merge(_SERVER, _public("commands")))
    [path] = one(docs, "Ingress")["spec"]["rules"][0]["http"]["paths"]
    assert path["backend"]["service"] == {
        "name": "pay-paystream-commands",
        "port": {"name": "http"},
    }
    [service] = [s for s in by_kind(docs, "Service") if s["metadata"]["name"].endswith("-commands")]
    assert {p["name"] for p in service["spec"]["ports"]} == {"http"}
    assert "set by the chart" in refusal(
        _merge(REQUIRED, {"config": {"PAYSTREAM_INGRESS_PORT": "1"}})
    )


def test_the_commands_server_gets_egress_rules_of_its_own() -> None:
    """Not the workers' (database, Redis, the providers): the brokers alone. With the
    workers' egress limited, the chart refuses a commands server left open."""
    brokers = [{"to": [{"ipBlock": {"cidr": "10.0.5.0/24"}}], "ports": [{"port": 9092}]}]
    workers = [*brokers, {"ports": [{"port": 443}]}, {"ports": [{"port": 5432}]}]
    limited = {"networkPolicy": {"enabled": True, "allowFromNamespaces": ["ns"], "egress": workers}}
    refused = refusal(_merge(_merge(REQUIRED, _SERVER), limited))
    assert "commands.server.egress" in refused
    own = {"commands": {"server": {"enabled": True, "egress": brokers}}}
    docs = render(_merge(limited, own))
    [policy] = [
        p for p in by_kind(docs, "NetworkPolicy") if p["metadata"]["name"].endswith("-commands")
    ]
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert policy["spec"]["egress"][1:] == brokers  # (after DNS)

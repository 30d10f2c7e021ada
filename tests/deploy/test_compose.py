"""docker-compose.yml, its Prometheus and Grafana files, and the Dockerfile's package.

No Docker engine runs here: `docker-compose config` (Debian's docker-compose, which needs
none) validates the file against the Compose schema and resolves it; the checks below
then hold it to what the workers need."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from paystream.cli import cli
from paystream.settings import unknown_variables
from tests.deploy.tools import ROOT, SERVER_URLS, run, tool

ENV_EXAMPLE = ROOT / "deploy" / "compose" / "env.example"
SECRETS = {
    "POSTGRES_PASSWORD": "pg-secret",
    "PAYSTREAM_DB_APP_PASSWORD": "app-secret",
    "PAYSTREAM_MASTER_KEY": "bWFzdGVyLWtleS1tYXN0ZXIta2V5LW1hc3Rlci1rZXk=",
    "GRAFANA_ADMIN_PASSWORD": "grafana-secret",
}


def compose_config(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    # Only the given variables: the developer's own environment must not fill the gaps.
    base = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp")}
    return run(tool("docker-compose"), "--project-directory", str(ROOT), "config",
               env={**base, **env})  # fmt: skip


@pytest.fixture(scope="module")
def resolved() -> dict[str, Any]:
    proc = compose_config(SECRETS)
    assert proc.returncode == 0, proc.stderr
    config: dict[str, Any] = yaml.safe_load(proc.stdout)
    return config


def paystream_services(config: dict[str, Any]) -> dict[str, Any]:
    return {n: s for n, s in config["services"].items() if s["image"].startswith("paystream:")}


def test_every_secret_must_be_given_none_has_a_default() -> None:
    proc = compose_config({})
    assert proc.returncode != 0
    for name in SECRETS:
        assert all(compose_config({**SECRETS, name: ""}).returncode != 0 for _ in [0]), name
    # ...and the example .env names each one the file requires
    required = set(re.findall(r"\$\{([A-Z_]+):\?", (ROOT / "docker-compose.yml").read_text()))
    example = set(re.findall(r"^#?\s*([A-Z_]+)=", ENV_EXAMPLE.read_text(), re.M))
    assert required == set(SECRETS) and required <= example


def test_paystream_services_set_only_variables_paystream_reads(resolved: dict[str, Any]) -> None:
    services = paystream_services(resolved)
    assert set(services) == {"topics", "migrate", "worker-1", "worker-2", "ingress", "demo"}
    for name, service in services.items():
        env = service["environment"]
        # the base environment reached every service (a broken `<<:` merge would not)
        assert {"KAFKA_BROKER_URL", "PAYSTREAM_PARTITIONS"} <= env.keys(), name
        # The master key only where tenant secrets or personal data are opened: not in
        # `topics`, nor in `migrate`, which holds the schema owner's password, nor in the
        # ingress, which only produces commands.
        opened = name not in ("topics", "migrate", "ingress")
        assert ("PAYSTREAM_MASTER_KEY" in env) == opened, name
        assert unknown_variables(env) == [], name
        assert {k for k in env if not k.startswith("PAYSTREAM_")} <= SERVER_URLS, name
        assert cli.get_command(click.Context(cli), service["command"][0]), (
            name,
            service["command"],
        )


def test_workers_run_the_same_roles_after_topics_and_schema(resolved: dict[str, Any]) -> None:
    workers = {n: s for n, s in resolved["services"].items() if s.get("command") == ["worker"]}
    assert set(workers) == {"worker-1", "worker-2"}
    roles = {s["environment"]["PAYSTREAM_AGENTS"] for s in workers.values()}
    assert roles == {"commands,ledger,insights"}  # one group reads the outcomes: same roles
    for service in workers.values():
        deps = service["depends_on"]
        assert deps["topics"]["condition"] == "service_completed_successfully"
        assert deps["migrate"]["condition"] == "service_completed_successfully"
    services = resolved["services"]
    assert services["topics"]["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    # The owner in DATABASE_URL is the one PostgreSQL creates.
    owner = services["postgres"]["environment"]["POSTGRES_USER"]
    url = services["migrate"]["environment"]["DATABASE_URL"]
    assert url.startswith(f"postgresql+asyncpg://{owner}:{SECRETS['POSTGRES_PASSWORD']}@postgres:")
    assert services["migrate"]["environment"]["PAYSTREAM_DB_APP_PASSWORD"] == "app-secret"


def test_only_migrations_hold_the_owner_s_credentials(resolved: dict[str, Any]) -> None:
    """Least privilege: the workers log in as paystream_app with its own URL; nothing of
    the owner's (who could switch row-level security off) reaches them, or the one-shot
    topics and demo services (which need no database at all)."""
    services = paystream_services(resolved)
    owner_secret = SECRETS["POSTGRES_PASSWORD"]
    for name, service in services.items():
        env = service["environment"]
        if name == "migrate":
            continue
        assert not any(owner_secret in str(v) for v in env.values()), name
        assert "PAYSTREAM_DB_APP_PASSWORD" not in env, name
        if name.startswith("worker-"):
            app_url = f"postgresql+asyncpg://paystream_app:{SECRETS['PAYSTREAM_DB_APP_PASSWORD']}@"
            assert env["DATABASE_URL"].startswith(app_url), name
        else:
            assert "DATABASE_URL" not in env, name


def test_published_ports_are_loopback_only_and_images_pinned(resolved: dict[str, Any]) -> None:
    for name, service in resolved["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)
        image = service["image"]
        assert re.fullmatch(r"[\w./-]+:[\w.-]+", image) and not image.endswith(":latest"), image


def test_state_lives_on_the_volumes(resolved: dict[str, Any]) -> None:
    # apache/kafka logs to /tmp inside the container unless told: a recreated container
    # would lose the registry, the changelogs and the offsets.
    kafka = resolved["services"]["kafka"]
    [data] = [str(v).split(":")[1] for v in kafka["volumes"] if str(v).startswith("kafka-data")]
    assert kafka["environment"]["KAFKA_LOG_DIRS"] == data
    assert "--appendonly" in resolved["services"]["redis"]["command"]
    # Each worker's tables on a volume of its own, where the image keeps them: recreated
    # (a new image, a changed setting), it reads the changelogs since, not all of them.
    workers = {n: s for n, s in resolved["services"].items() if s.get("command") == ["worker"]}
    volumes = set()
    for service in workers.values():
        [mount] = [
            str(v) for v in service["volumes"] if str(v).split(":")[1] == "/var/lib/paystream"
        ]
        volumes.add(mount.split(":")[0])
    assert len(volumes) == len(workers) and volumes <= set(resolved["volumes"])


def test_long_running_services_come_back_and_workers_get_their_shutdown_time(
    resolved: dict[str, Any],
) -> None:
    """After a reboot or a crash the servers restart too (workers alone would crash-loop
    against a broker that is not there), and a worker's SIGTERM budget fits: the drain
    and close (SHUTDOWN_DRAIN_SECONDS + SHUTDOWN_CLOSE_SECONDS), the ledger sink's final
    commit, and Faust's producer flush."""
    from paystream.agents.commands import SHUTDOWN_CLOSE_SECONDS, SHUTDOWN_DRAIN_SECONDS
    from paystream.agents.ledger_sink import FINAL_COMMIT_SECONDS

    for name, service in resolved["services"].items():
        if name not in ("topics", "migrate", "demo"):
            assert service.get("restart") == "unless-stopped", name
        if service.get("command") == ["worker"]:
            grace = int(str(service["stop_grace_period"]).removesuffix("s"))
            assert (
                grace >= SHUTDOWN_DRAIN_SECONDS + SHUTDOWN_CLOSE_SECONDS + FINAL_COMMIT_SECONDS + 5
            )


def test_health_checks_say_ready_for_workers_and_nothing_for_the_others(
    resolved: dict[str, Any],
) -> None:
    for name, service in paystream_services(resolved).items():
        check = service["healthcheck"]
        if service["command"] == ["worker"]:
            assert "/readyz" in " ".join(check["test"]), name
        elif service["command"] == ["ingress"]:  # ready: registry read, brokers answering
            port = service["environment"].get("PAYSTREAM_INGRESS_PORT", "6070")
            assert f"127.0.0.1:{port}/readyz" in " ".join(check["test"]), name
        else:  # one-shot and demo services serve no /healthz: never "unhealthy"
            # (`disable: true`, which compose resolves to test NONE)
            assert check.get("disable") is True or check["test"] == ["NONE"], name
    gated = resolved["services"]["demo"]["depends_on"]
    assert {n for n, d in gated.items() if d["condition"] == "service_healthy"} == {
        "worker-1",
        "worker-2",
    }


def test_mounted_files_are_in_the_repository(resolved: dict[str, Any]) -> None:
    mounted = 0
    for service in resolved["services"].values():
        for volume in service.get("volumes", []):
            source = str(volume).split(":")[0]
            if source.startswith("/"):
                assert Path(source).exists(), source
                mounted += 1
    assert mounted >= 5


def test_prometheus_scrapes_every_worker_and_loads_the_alert_rules(
    resolved: dict[str, Any], tmp_path: Path
) -> None:
    config = yaml.safe_load((ROOT / "deploy/compose/prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    assert jobs.keys() == {"paystream", "paystream-ingress"}
    job = jobs["paystream"]  # the workers: the job the alert rules select
    targets = {t for sc in job["static_configs"] for t in sc["targets"]}
    workers = {n for n, s in resolved["services"].items() if s.get("command") == ["worker"]}
    ports = {
        s["environment"].get("PAYSTREAM_WEB_PORT", "6066")
        for s in paystream_services(resolved).values()
        if s.get("command") == ["worker"]
    }
    assert targets == {f"{w}:{p}" for w in workers for p in ports}
    ingress = resolved["services"]["ingress"]
    port = ingress["environment"].get("PAYSTREAM_INGRESS_PORT", "6070")
    [scraped] = [t for sc in jobs["paystream-ingress"]["static_configs"] for t in sc["targets"]]
    assert scraped == f"ingress:{port}"
    # promtool checks the config with the rule file where the container finds it
    mounts = dict(
        reversed(str(v).split(":")[:2]) for v in resolved["services"]["prometheus"]["volumes"]
        if str(v).startswith("/")
    )  # fmt: skip
    config["rule_files"] = [mounts[p] for p in config["rule_files"]]
    local = tmp_path / "prometheus.yml"
    local.write_text(yaml.safe_dump(config))
    proc = run(tool("promtool"), "check", "config", str(local))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout and "rules found" in proc.stdout


def test_grafana_provisions_the_dashboard_from_the_charts_file(resolved: dict[str, Any]) -> None:
    grafana = resolved["services"]["grafana"]
    mounts = dict(reversed(str(v).split(":")[:2]) for v in grafana["volumes"])
    providers = yaml.safe_load((ROOT / "deploy/compose/grafana/dashboards.yml").read_text())
    path = providers["providers"][0]["options"]["path"]
    assert Path(mounts[path], "paystream.json").is_file()
    sources = yaml.safe_load((ROOT / "deploy/compose/grafana/datasources.yml").read_text())
    assert sources["datasources"][0]["url"] == "http://prometheus:9090"


@pytest.mark.slow
def test_the_package_the_image_installs_holds_what_the_worker_reads(tmp_path: Path) -> None:
    # The image installs a wheel of the repository (Dockerfile), not the editable checkout
    # the tests run from: package data left out of it would fail only in production.
    # Built from a copy of what the Dockerfile copies: a stale build/ in the checkout would
    # otherwise fill the wheel's gaps.
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(
        ROOT / "paystream",
        source / "paystream",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(tmp_path),
         str(source)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    [wheel] = tmp_path.glob("paystream-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    package = ROOT / "paystream"
    wanted = [
        p.relative_to(ROOT).as_posix()
        for p in package.rglob("*")
        # every file but bytecode and notes for developers (no process reads a .md)
        if p.is_file() and "__pycache__" not in p.parts and p.suffix not in {".pyc", ".md"}
    ]
    missing = sorted(set(wanted) - names)
    assert not missing, f"left out of the wheel: {missing[:20]}"
    dockerfile = (ROOT / "Dockerfile").read_text()
    copied = re.findall(r"^COPY (?!--from)(.+) \S+$", dockerfile, re.M)
    assert {w for line in copied for w in line.split()} == {
        "pyproject.toml",
        "README.md",
        "constraints.txt",
        "paystream",
    }
    # ...and installs it at the pinned versions
    assert re.search(
        r"pip --python /opt/paystream/bin/python install -c constraints\.txt", dockerfile
    )

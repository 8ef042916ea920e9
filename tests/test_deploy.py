"""deploy/compose.yaml, the Dockerfile and .dockerignore, read as files (no docker here): the services and how
they are wired, health checks, restart policies, volumes, the Redis password, a non-root image."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from ftjobs.core.settings import Settings

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded = yaml.safe_load((REPO / "deploy" / "compose.yaml").read_text())
    assert isinstance(loaded, dict)
    return loaded


def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def dockerfile_stages() -> dict[str, list[tuple[str, str]]]:
    """Each stage's instructions as (INSTRUCTION, rest), continuation lines joined."""
    text = re.sub(r"\\\n", " ", (REPO / "Dockerfile").read_text())
    stages: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        if word.upper() == "FROM":
            current = stages.setdefault(rest.split()[-1], [])
        current.append((word.upper(), rest.strip()))
    return stages


def test_compose_runs_redis_api_worker_and_the_webhook_dispatcher(compose: dict[str, Any]) -> None:
    svc = services(compose)
    assert set(svc) >= {"redis", "api", "worker", "webhooks"}
    assert svc["api"]["deploy"]["replicas"] == 2
    assert svc["api"]["build"]["target"] == "api" and svc["worker"]["build"]["target"] == "worker"
    assert svc["webhooks"]["command"] == ["ftjobs", "webhooks-dispatcher"]
    for name in ("api", "worker", "webhooks"):
        assert svc[name]["depends_on"]["redis"]["condition"] == "service_healthy", name


def test_every_service_has_a_health_check_and_a_restart_policy(compose: dict[str, Any]) -> None:
    for name, service in services(compose).items():
        assert service.get("restart") in ("unless-stopped", "always"), name
        check = service["healthcheck"]["test"]
        assert check[0] in ("CMD", "CMD-SHELL") and len(check) > 1, name
    assert any("/healthz" in part for part in services(compose)["api"]["healthcheck"]["test"])
    assert "redis-cli ping" in " ".join(services(compose)["redis"]["healthcheck"]["test"])


def test_redis_keeps_an_append_only_file_on_a_volume(compose: dict[str, Any]) -> None:
    redis = services(compose)["redis"]
    command = " ".join(redis["command"])
    assert "--appendonly yes" in command and "--maxmemory-policy noeviction" in command
    assert any(v.endswith(":/data") and v.split(":")[0] in compose["volumes"] for v in redis["volumes"])


def test_one_password_from_the_environment_reaches_redis_and_every_client(compose: dict[str, Any]) -> None:
    svc = services(compose)
    variable = "${FTJOBS_REDIS_PASSWORD:?"
    assert "--requirepass" in " ".join(svc["redis"]["command"])
    assert svc["redis"]["environment"]["REDIS_PASSWORD"].startswith(variable)  # required, never a default
    assert "$$REDIS_PASSWORD" in " ".join(svc["redis"]["healthcheck"]["test"])
    for name in ("api", "worker", "webhooks"):
        url = svc[name]["environment"]["FTJOBS_REDIS_URL"]
        assert url.startswith("redis://:" + variable) and url.endswith("@redis:6379/0"), name
    passwords = re.findall(r"--requirepass\s+(\S+)", " ".join(svc["redis"]["command"]))
    assert passwords == ['"$$REDIS_PASSWORD"']  # the variable, never a literal password


def test_the_services_share_the_store_and_the_models(compose: dict[str, Any]) -> None:
    svc = services(compose)
    env = svc["api"]["environment"]
    data_dir = env["FTJOBS_DATA_DIR"]
    assert env["FTJOBS_STORAGE_URL"].startswith(f"file://{data_dir}/")
    for name in ("api", "worker", "webhooks"):
        assert f"store:{data_dir}" in svc[name]["volumes"], name
        # The settings the containers read are ones Settings understands.
        settings = Settings.from_env({k: str(v) for k, v in svc[name]["environment"].items()})
        assert str(settings.data_dir) == data_dir
    for name in ("api", "worker"):
        assert f"models:{env['FTJOBS_MODEL_ROOTS']}:ro" in svc[name]["volumes"], name
    assert {"redis-data", "store", "models"} <= set(compose["volumes"])


def test_a_stopping_worker_gets_longer_than_its_preemption_window(compose: dict[str, Any]) -> None:
    worker = services(compose)["worker"]
    grace = re.fullmatch(r"(\d+)s", worker["stop_grace_period"])
    assert grace is not None
    assert int(grace.group(1)) > float(worker["environment"]["FTJOBS_PREEMPT_S"])


def test_the_gpu_reservation_is_ready_to_enable() -> None:
    """Commented out (a CPU host would refuse it); uncommented, it is a valid device reservation."""
    text = (REPO / "deploy" / "compose.yaml").read_text()
    block = re.search(r"(?m)^(    # deploy:\n(?:    #.*\n)+)", text)
    assert block is not None
    uncommented = yaml.safe_load("\n".join(line.replace("# ", "", 1) for line in block.group(1).splitlines()))
    device = uncommented["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]


def test_the_images_run_as_a_non_root_user_with_health_checks_and_json_logs() -> None:
    stages = dockerfile_stages()
    assert {"api", "worker"} <= set(stages)
    base = dict(stages["base"])
    assert "FTJOBS_LOG_FORMAT=json" in base["ENV"]
    for target in ("api", "worker"):
        steps = stages[target]
        users = [rest for word, rest in steps if word == "USER"]
        assert users and users[-1] not in ("root", "0"), target
        checks = [rest for word, rest in steps if word == "HEALTHCHECK"]
        assert checks and "CMD" in checks[-1], target
        # Nothing installed after the switch to the unprivileged user would need root.
        last_user = max(i for i, (word, _) in enumerate(steps) if word == "USER")
        assert not any(word == "RUN" for word, _ in steps[last_user:]), target
    assert "/healthz" in dict(stages["api"])["HEALTHCHECK"]
    worker_run = " ".join(rest for word, rest in stages["worker"] if word == "RUN")
    makefile_torch = re.search(r"TORCH\s*:=\s*(torch==\S+)", (REPO / "Makefile").read_text())
    assert makefile_torch is not None and worker_run.count(makefile_torch.group(1)) == 2  # pinned in both installs


def test_dockerignore_keeps_environments_history_and_data_out_of_the_context() -> None:
    patterns = {line.strip().rstrip("/") for line in (REPO / ".dockerignore").read_text().splitlines()}
    for needed in (".venv", ".git", ".ftjobs", "**/__pycache__", ".pytest_cache", "*.egg-info"):
        assert needed in patterns, needed
    copied = re.findall(r"(?m)^COPY (\S+)", (REPO / "Dockerfile").read_text())
    assert copied and not any(path.rstrip("/") in patterns for path in copied)  # what the image needs stays in


def test_the_monitoring_profile_scrapes_the_api_replicas(compose: dict[str, Any]) -> None:
    prometheus = services(compose)["prometheus"]
    assert prometheus["profiles"] == ["monitoring"]
    config_mount = next(v for v in prometheus["volumes"] if v.endswith(":/etc/prometheus/prometheus.yml:ro"))
    config = yaml.safe_load((REPO / "deploy" / config_mount.split(":")[0]).read_text())
    names = {n for job in config["scrape_configs"] for sd in job.get("dns_sd_configs", []) for n in sd["names"]}
    assert names and names <= set(services(compose))  # compose's DNS answers each replica of these services

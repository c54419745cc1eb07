"""The deployment files agree with the code: `.env.example` names every setting, the systemd unit
verifies and is hardened, the Dockerfiles lint clean, and the compose file checks health and
keeps data in a volume. (Docker itself cannot run here; these are the checks that can.)"""

from __future__ import annotations

import configparser
import dataclasses
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bots.serve import SHUTDOWN_STEP_S
from bots.settings import ALIASES, Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
UNIT = DEPLOY / "systemd" / "bots.service"
DOCKERFILES = [DEPLOY / "Dockerfile", DEPLOY / "Dockerfile.cuda"]
HEALTH_URL = "http://127.0.0.1:8321/healthz"
# What the service manager must wait for: the grace period plus the shutdown steps after it.
STOP_NEEDS_S = Settings().server.shutdown_grace_s + 4 * SHUTDOWN_STEP_S


def setting_names() -> dict[str, set[str]]:
    """Each setting's dotted name -> the environment names that set it."""
    names: dict[str, set[str]] = {}
    defaults = Settings()
    for f in dataclasses.fields(defaults):
        section = getattr(defaults, f.name)
        if f.name == "root":
            continue
        if dataclasses.is_dataclass(section):
            for sub in dataclasses.fields(section):
                names[f"{f.name}.{sub.name}"] = {f"BOTS_{f.name}_{sub.name}".upper()}
        else:
            names[f.name] = {f"BOTS_{f.name}".upper()}
    for alias, (section, key) in ALIASES.items():
        names[f"{section}.{key}"].add(alias)
    return names


def test_env_example_names_every_setting_and_loads(tmp_path: Path) -> None:
    text = (ROOT / ".env.example").read_text()
    listed = set(re.findall(r"^(?:# )?([A-Z][A-Z0-9_]+)=", text, re.MULTILINE))
    names = setting_names()
    missing = [dotted for dotted, env in names.items() if not env & listed]
    assert missing == [], f".env.example lacks {missing}"
    unknown = listed - set().union(*names.values())
    assert unknown == set(), f".env.example names no setting: {unknown}"
    shutil.copy(ROOT / ".env.example", tmp_path / ".env")
    settings = load_settings(tmp_path, environ={})
    assert settings.secrets() == [] and settings.server.host == "127.0.0.1"


def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(UNIT)
    return parser


def test_systemd_unit_is_hardened_and_stops_gracefully() -> None:
    service = unit()["Service"]
    assert service["User"] == "bots" and service["ProtectSystem"] == "strict"
    assert service["NoNewPrivileges"] == "yes" and service["CapabilityBoundingSet"] == ""
    assert (
        service["StateDirectory"] == "bots" and "--data-dir /var/lib/bots" in service["ExecStart"]
    )
    assert service["Restart"] == "on-failure"
    assert service["KillSignal"] == "SIGTERM" and service["KillMode"] == "mixed"
    assert float(service["TimeoutStopSec"].removesuffix("s")) >= STOP_NEEDS_S


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_systemd_unit_verifies(tmp_path: Path) -> None:
    # verify checks that ExecStart exists: point it at this checkout's `bots`.
    bots = Path(sys.executable).parent / "bots"
    text = UNIT.read_text().replace("/opt/bots/.venv/bin/bots", str(bots))
    (tmp_path / "bots.service").write_text(text)
    result = subprocess.run(
        ["systemd-analyze", "verify", str(tmp_path / "bots.service")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_lints_clean_and_runs_unprivileged(dockerfile: Path) -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    result = subprocess.run(
        [str(hadolint), "--no-color", str(dockerfile)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    text = dockerfile.read_text()
    assert len(re.findall(r"^FROM ", text, re.MULTILINE)) == 2  # build, then runtime
    assert re.search(r"^USER 10001", text, re.MULTILINE)
    assert "GGML_NATIVE=OFF" in text and HEALTH_URL in text
    assert 'VOLUME ["/data"]' in text and '--data-dir", "/data"' in text
    assert (dockerfile.parent / f"{dockerfile.name}.dockerignore").is_file()


def test_compose_checks_health_keeps_data_and_stops_gracefully() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    bots = compose["services"]["bots"]
    assert HEALTH_URL in " ".join(bots["healthcheck"]["test"])
    assert bots["restart"] == "unless-stopped" and bots["read_only"] is True
    assert bots["ports"] == ["127.0.0.1:8321:8321"]
    assert "bots-data:/data" in bots["volumes"] and "bots-data" in compose["volumes"]
    assert {"../personas:/srv/bots/personas:ro", "../knowledge:/srv/bots/knowledge:ro"} <= set(
        bots["volumes"]
    )
    assert int(bots["stop_grace_period"].removesuffix("s")) >= STOP_NEEDS_S
    cuda = yaml.safe_load((DEPLOY / "compose.cuda.yaml").read_text())["services"]["bots"]
    assert cuda["build"]["dockerfile"] == "deploy/Dockerfile.cuda"
    assert (ROOT / cuda["build"]["dockerfile"]).is_file()


def test_compose_of_several_instances_shares_one_database_and_model() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.instances.yaml").read_text())
    services = compose["services"]
    instances = [s for name, s in services.items() if name.startswith("bots-")]
    assert len(instances) == 2
    urls = {s["environment"]["BOTS_DATABASE_URL"] for s in instances}
    endpoints = {s["environment"]["BOTS_MODEL_ENDPOINT"] for s in instances}
    assert len(urls) == 1 and urls.pop().startswith("postgresql://bots:")
    assert endpoints == {"http://llama-server:8080/v1"}
    assert "pg_isready" in services["postgres"]["healthcheck"]["test"]
    assert "bots-postgres" in compose["volumes"]
    for instance in instances:
        assert instance["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert "/healthz" in " ".join(instance["healthcheck"]["test"])
    ports = [instance["ports"][0] for instance in instances]
    assert len(set(ports)) == 2

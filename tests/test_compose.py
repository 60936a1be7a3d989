"""docker-compose.yml keeps its database and broker private and its users unprivileged."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_database_and_broker_are_unpublished_and_password_protected() -> None:
    services = _compose()["services"]
    for name in ("postgres", "redis"):
        assert "ports" not in services[name], f"{name} must not be published"
    assert "POSTGRES_PASSWORD" in services["postgres"]["environment"]
    assert "--requirepass" in services["redis"]["command"]
    assert "--appendonly" in services["redis"]["command"]


def test_digits_services_wait_for_healthy_dependencies_and_run_unprivileged() -> None:
    services = _compose()["services"]
    for name, svc in services.items():
        if name in ("postgres", "redis"):
            continue
        assert svc.get("user") not in (None, "root", "0", "0:0"), name
        deps = svc["depends_on"]
        assert deps["postgres"]["condition"] == "service_healthy", name
        if name != "migrate":
            assert deps["redis"]["condition"] == "service_healthy", name
            assert deps["migrate"]["condition"] == "service_completed_successfully", name


def test_gpu_workers_are_pinned_to_distinct_devices() -> None:
    services = _compose()["services"]
    devices = []
    for name, svc in services.items():
        if name.startswith("worker-gpu"):
            reservation = svc["deploy"]["resources"]["reservations"]["devices"]
            assert len(reservation) == 1
            assert len(reservation[0]["device_ids"]) == 1
            devices.append(reservation[0]["device_ids"][0])
    assert devices
    assert len(devices) == len(set(devices))

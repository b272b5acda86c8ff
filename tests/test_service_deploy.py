"""Deployment files (there is no Docker engine here: they are parsed and checked, not run)."""

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_service_port_healthcheck_and_model_cache():
    services = compose()["services"]
    service = services["service"]
    assert "8000:8000" in service["ports"]
    assert service["environment"]["SSDLITE_HOST"] == "0.0.0.0"  # reachable from outside the container
    check = service["healthcheck"]
    assert check["test"][0] == "CMD" and "http://127.0.0.1:8000/readyz" in " ".join(check["test"])
    assert {"interval", "timeout", "retries", "start_period"} <= set(check)
    cache = service["environment"]["SSDLITE_HOME"]
    assert any(volume.split(":")[1] == cache for volume in service["volumes"])
    assert "model-cache" in compose()["volumes"]
    assert "profiles" not in service  # `docker compose up` starts it


def test_compose_train_profile_reserves_a_gpu():
    train = compose()["services"]["train"]
    assert train["profiles"] == ["train"]
    assert train["entrypoint"] == ["python", "-m", "train.coco"]
    (device,) = train["deploy"]["resources"]["reservations"]["devices"]
    assert device["capabilities"] == ["gpu"]


def test_dockerfile_serves_the_app_on_port_8000():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert dockerfile.startswith("#") and "\nFROM python:3.11" in dockerfile
    assert "EXPOSE 8000" in dockerfile and "SSDLITE_HOST=0.0.0.0" in dockerfile
    assert 'CMD ["python", "-m", "service"]' in dockerfile
    assert "HEALTHCHECK" in dockerfile and "/readyz" in dockerfile
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored

"""Deployment files (there is no Docker engine here: they are parsed and checked, not run)."""

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def nginx_conf() -> str:
    return (ROOT / "deploy" / "nginx.conf").read_text()


def test_compose_detector_replicas_healthcheck_and_model_cache():
    services = compose()["services"]
    assert "service" not in services
    detector = services["detector"]
    assert "ports" not in detector  # replicas (`--scale detector=N`) cannot share a host port
    assert detector["expose"] == ["8000"]
    assert "container_name" not in detector  # a fixed name would make scaling fail
    assert detector["environment"]["SSDLITE_HOST"] == "0.0.0.0"  # reachable from outside the container
    check = detector["healthcheck"]
    assert check["test"][0] == "CMD" and "http://127.0.0.1:8000/readyz" in " ".join(check["test"])
    assert {"interval", "timeout", "retries", "start_period"} <= set(check)
    cache = detector["environment"]["SSDLITE_HOME"]
    assert any(volume.split(":")[1] == cache for volume in detector["volumes"])
    assert "model-cache" in compose()["volumes"]
    assert "profiles" not in detector  # `docker compose up` starts it


def test_compose_proxy_serves_the_nginx_conf_in_front_of_the_replicas():
    proxy = compose()["services"]["proxy"]
    assert proxy["image"].startswith("nginx:")
    assert "profiles" not in proxy
    assert "./deploy/nginx.conf:/etc/nginx/nginx.conf:ro" in proxy["volumes"]
    listen = re.search(r"^\s*listen (\d+);", nginx_conf(), re.MULTILINE).group(1)
    assert f"8000:{listen}" in proxy["ports"]
    assert proxy["depends_on"] == {"detector": {"condition": "service_healthy"}}


def directive(conf: str, name: str) -> list[str]:
    """The values of every ``name ...;`` directive in ``conf``, comments dropped."""
    conf = re.sub(r"#.*", "", conf)
    pattern = rf"(?:^|[{{;\s]){name}(?:\s+([^;]*))?;"
    return [(m.group(1) or "").strip() for m in re.finditer(pattern, conf, re.MULTILINE)]


def location_for(conf: str, path: str) -> str:
    """The body of the ``location`` block nginx picks for ``path``: exact, else first regex, else longest prefix."""
    blocks = re.findall(r"location\s+(=|~\*?)?\s*(\S+)\s*\{([^}]*)\}", conf)
    exact = [body for kind, pattern, body in blocks if kind == "=" and pattern == path]
    regex = [body for kind, pattern, body in blocks if kind.startswith("~") and re.search(pattern, path)]
    prefix = sorted((len(p), body) for kind, p, body in blocks if not kind and path.startswith(p))
    assert exact or regex or prefix, f"no location for {path}"
    return (exact or regex or [prefix[-1][1]])[0]


def nginx_size(value: str) -> int:
    units = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
    number, unit = re.fullmatch(r"(\d+)([kmg]?)", value.lower()).groups()
    return int(number) * units[unit]


def test_nginx_conf_balances_retries_upgrades_and_limits_like_the_service():
    conf = nginx_conf()
    upstream = re.search(r"upstream detector \{(.*?)\}", conf, re.DOTALL).group(1)
    assert directive(upstream, "least_conn") == [""]
    (server,) = directive(upstream, "server")
    assert server.startswith("detector:8000 ") and "max_fails=" in server and "fail_timeout=" in server
    assert directive(upstream, "keepalive")
    assert directive(conf, "proxy_pass") and set(directive(conf, "proxy_pass")) == {"http://detector"}
    # WebSocket upgrade on HTTP/1.1; the Connection header comes from the map
    assert "map $http_upgrade $connection_upgrade" in conf
    assert directive(conf, "proxy_http_version") == ["1.1"]
    headers = directive(conf, "proxy_set_header")
    assert {"Upgrade $http_upgrade", "Connection $connection_upgrade"} <= set(headers)
    assert {"X-Forwarded-For $proxy_add_x_forwarded_for", "X-Forwarded-Proto $scheme", "X-Real-IP $remote_addr"} <= set(
        headers
    )
    assert not any(h.split()[0].lower() in ("authorization", "x-api-key") for h in headers)  # passed on, not reset
    assert "location = /ws" in conf
    # nginx's limit is the service's: the same uploads pass (and get 413) with or without the proxy
    from service.settings import Settings

    (limit,) = directive(conf, "client_max_body_size")
    assert nginx_size(limit) == Settings().max_body_size
    assert "error_page 413 @body_too_large" in conf and '"detail"' in conf
    assert directive(conf, "proxy_request_buffering") in ([], ["on"])
    (retry,) = directive(conf, "proxy_next_upstream")
    assert {"error", "timeout", "non_idempotent"} <= set(retry.split())
    # A retried status counts towards max_fails: retrying the service's overload 503 would let a load
    # spike mark every replica down ("no live upstreams" 502s for fail_timeout).
    assert "http_503" not in retry.split()
    (tries,) = directive(conf, "proxy_next_upstream_tries")
    assert 1 < int(tries) <= 5
    for path in ("/readyz", "/healthz", "/detect", "/ws"):  # every route reaches the replicas
        assert directive(location_for(conf, path), "proxy_pass") == ["http://detector"], path
    assert directive(location_for(conf, "/ws"), "proxy_read_timeout")  # a stream outlives the default 60 s


def test_nginx_conf_renders_for_loopback_or_fails_loudly(tmp_path):
    from bench.nginx import render_conf

    rendered = render_conf(nginx_conf(), [8001, 8002], 9000, tmp_path)
    assert "detector:8000" not in rendered and "/var/" not in rendered and "listen 80;" not in rendered
    assert re.findall(r"server 127\.0\.0\.1:(\d+) max_fails=", rendered) == ["8001", "8002"]
    assert "listen 127.0.0.1:9000;" in rendered and f"client_body_temp_path {tmp_path / 'client_body'};" in rendered
    # the rest is the deployed file
    assert rendered.split("listen 127.0.0.1:9000;", 1)[1] == nginx_conf().split("listen 80;", 1)[1]
    with pytest.raises(ValueError, match="listen"):
        render_conf(nginx_conf().replace("listen 80;", "listen 8080;"), [8001], 9000, tmp_path)


def kubernetes() -> dict[str, dict]:
    return {doc["kind"]: doc for doc in yaml.safe_load_all((ROOT / "deploy" / "kubernetes.yaml").read_text())}


def test_kubernetes_deployment_probes_resources_service_and_autoscaler():
    docs = kubernetes()
    assert set(docs) == {"Deployment", "Service", "HorizontalPodAutoscaler"}
    deployment = docs["Deployment"]
    assert deployment["spec"]["replicas"] >= 2
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "ssdlite:latest"
    port = container["ports"][0]
    assert port["containerPort"] == 8000

    def probe_path(name):
        check = container[name]["httpGet"]
        assert check["port"] in (8000, port.get("name"))
        return check["path"]

    assert probe_path("readinessProbe") == "/readyz"
    assert probe_path("livenessProbe") == "/healthz"
    assert probe_path("startupProbe") == "/readyz"
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 180  # the first model fetch, as in compose
    resources = container["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"]) and {"cpu", "memory"} <= set(resources["limits"])
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["SSDLITE_MODEL"] == "auto"  # the INT8 person detector on a CPU node
    assert int(env["SSDLITE_THREADS"]) == int(resources["requests"]["cpu"])  # one inference thread per core
    service = docs["Service"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["ports"][0]["targetPort"] in (8000, port.get("name"))
    hpa = docs["HorizontalPodAutoscaler"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Resource" and metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"]["type"] == "Utilization"
    assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


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

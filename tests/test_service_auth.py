"""API keys, CORS and keeping keys out of logs."""

import subprocess
import sys

import httpx
import pytest
from fastapi.testclient import TestClient
from starlette.testclient import WebSocketDenialResponse

import service.auth
from service import Settings, create_app
from service.auth import ApiKeyConfigError, load_api_keys

from .service_helpers import ROOT, ServiceProcess, photo, scripted_detector, small_checkpoint

KEYS = ["k3y-one", "k3y-two"]
GUARDED = [
    ("POST", "/detect"),
    ("POST", "/detect/render"),
    ("POST", "/detect/batch"),
    ("GET", "/model"),
    ("GET", "/metrics"),
]


@pytest.fixture
def client():
    with TestClient(create_app(Settings(api_keys=KEYS), detector=scripted_detector())) as client:
        yield client


@pytest.mark.parametrize(("method", "path"), GUARDED)
def test_guarded_endpoints_answer_401_without_a_key_or_with_a_wrong_one(client, method, path):
    missing = client.request(method, path, content=photo())
    assert missing.status_code == 401 and missing.headers["www-authenticate"].startswith("Bearer")
    assert "missing API key" in missing.json()["detail"] and "X-API-Key" in missing.json()["detail"]
    for headers in ({"Authorization": "Bearer k3y-on"}, {"X-API-Key": "k3y-one "[::-1]}, {"Authorization": "k3y-one"}):
        wrong = client.request(method, path, content=photo(), headers=headers)
        assert wrong.status_code == 401, headers


@pytest.mark.parametrize(
    "headers", [{"Authorization": "Bearer k3y-one"}, {"authorization": "bearer k3y-two"}, {"X-API-Key": "k3y-two"}]
)
def test_either_header_with_any_configured_key_is_accepted(client, headers):
    response = client.post("/detect", content=photo(), headers=headers)
    assert response.status_code == 200 and len(response.json()["detections"]) == 1
    assert client.get("/model", headers=headers).json()["classes"] == ["person", "car"]
    assert client.get("/metrics", headers=headers).status_code == 200


def test_health_readiness_and_the_page_stay_open(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}
    assert client.get("/").status_code == 200 and client.get("/static/app.js").status_code == 200
    assert client.get("/openapi.json").status_code == 200


def test_metrics_can_be_left_open_for_a_scraper():
    app = create_app(Settings(api_keys=KEYS, metrics_require_key=False), detector=scripted_detector())
    with TestClient(app) as client:
        assert client.get("/metrics").status_code == 200
        assert client.get("/model").status_code == 401


def test_websocket_takes_the_key_as_query_parameter_or_subprotocol(client):
    with pytest.raises(WebSocketDenialResponse) as refused, client.websocket_connect("/ws"):
        pass
    assert refused.value.status_code == 401 and "missing API key" in refused.value.json()["detail"]
    with pytest.raises(WebSocketDenialResponse) as wrong, client.websocket_connect("/ws?api_key=nope"):
        pass
    assert wrong.value.status_code == 401 and wrong.value.json()["detail"] == "invalid API key"

    with client.websocket_connect("/ws?api_key=k3y-one") as ws:
        ws.send_bytes(photo())
        assert len(ws.receive_json()["detections"]) == 1
    with client.websocket_connect("/ws", subprotocols=["ssdlite", "ssdlite.key.k3y-two"]) as ws:
        assert ws.accepted_subprotocol == "ssdlite"  # never the key
        ws.send_bytes(photo())
        assert len(ws.receive_json()["detections"]) == 1


def test_no_keys_no_guard():
    with TestClient(create_app(Settings(), detector=scripted_detector())) as client:
        assert client.post("/detect", content=photo()).status_code == 200
        assert client.get("/model").status_code == 200
        with client.websocket_connect("/ws") as ws:
            assert ws.accepted_subprotocol is None


def test_every_key_is_compared_whatever_matched(monkeypatch):
    guard = service.auth.ApiKeyGuard(("a", "b", "c"))
    compared = []
    real = service.auth.hmac.compare_digest
    monkeypatch.setattr(service.auth.hmac, "compare_digest", lambda x, y: compared.append(y) or real(x, y))
    assert guard.accepts("a") and len(compared) == 3
    compared.clear()
    assert not guard.accepts("zzz") and len(compared) == 3
    assert not guard.accepts("") and not guard.accepts("a ")


def test_keys_from_a_file_with_comments(tmp_path):
    keys_file = tmp_path / "keys.txt"
    keys_file.write_text("# team keys\nfile-key-1\n\n  file-key-2  \n")
    assert load_api_keys(Settings(api_keys=["env-key"], api_keys_file=keys_file)) == (
        "env-key",
        "file-key-1",
        "file-key-2",
    )
    app = create_app(Settings(api_keys_file=keys_file), detector=scripted_detector())
    with TestClient(app) as client:
        assert client.get("/model", headers={"X-API-Key": "file-key-2"}).status_code == 200
        assert client.get("/model", headers={"X-API-Key": "# team keys"}).status_code == 401


def test_unusable_key_settings_are_refused_without_echoing_the_key(tmp_path):
    with pytest.raises(ApiKeyConfigError, match="cannot read SSDLITE_API_KEYS_FILE .*missing.txt"):
        load_api_keys(Settings(api_keys_file=tmp_path / "missing.txt"))
    (tmp_path / "empty.txt").write_text("# nothing yet\n")
    with pytest.raises(ApiKeyConfigError, match="holds no key"):
        load_api_keys(Settings(api_keys_file=tmp_path / "empty.txt"))
    with pytest.raises(ApiKeyConfigError, match="API key #2 has characters") as error:
        load_api_keys(Settings(api_keys=["fine", "sec ret"]))
    assert "sec ret" not in str(error.value)


def test_env_variables_split_on_commas(monkeypatch):
    monkeypatch.setenv("SSDLITE_API_KEYS", " a1, b2 ,,")
    monkeypatch.setenv("SSDLITE_CORS_ORIGINS", "https://a.example,https://b.example")
    settings = Settings()
    assert settings.api_keys == ["a1", "b2"] and settings.cors_origins == ["https://a.example", "https://b.example"]


def test_cli_refuses_a_missing_keys_file_in_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "service"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "SSDLITE_API_KEYS_FILE": str(tmp_path / "nope.txt"), "SSDLITE_MODEL": "x.pt"},
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().startswith("error: cannot read SSDLITE_API_KEYS_FILE")


def test_cors_is_off_by_default_and_follows_the_setting():
    preflight = {
        "Origin": "https://app.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "x-api-key",
    }
    with TestClient(create_app(Settings(), detector=scripted_detector())) as client:
        response = client.options("/detect", headers=preflight)
        assert "access-control-allow-origin" not in response.headers
        assert (
            "access-control-allow-origin"
            not in client.get("/healthz", headers={"Origin": "https://app.example"}).headers
        )
    settings = Settings(cors_origins=["https://app.example"], api_keys=KEYS)
    with TestClient(create_app(settings, detector=scripted_detector())) as client:
        allowed = client.options("/detect", headers=preflight)  # a preflight carries no key
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == "https://app.example"
        assert "x-api-key" in allowed.headers["access-control-allow-headers"].lower()
        other = client.options("/detect", headers={**preflight, "Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers
        # Errors carry the header too, so the page can read them.
        refused = client.post("/detect", content=photo(), headers={"Origin": "https://app.example"})
        assert refused.status_code == 401 and refused.headers["access-control-allow-origin"] == "https://app.example"


def test_keys_never_reach_the_logs_or_metrics(tmp_path):
    from websockets.sync.client import connect

    secret = "s3cret-key-do-not-log"
    model = small_checkpoint(tmp_path / "small.pt")
    with ServiceProcess(model, api_keys=secret, access_log="true", log_level="debug") as server:
        base = server.url
        assert httpx.post(f"{base}/detect", content=photo(), headers={"X-API-Key": secret}).status_code == 200
        assert httpx.get(f"{base}/model", headers={"Authorization": f"Bearer {secret}"}).status_code == 200
        assert httpx.get(f"{base}/model?api_key={secret}").status_code == 401  # HTTP takes headers only
        assert httpx.get(f"{base}/model", headers={"X-API-Key": secret + "x"}).status_code == 401
        ws_url = base.replace("http", "ws")
        for url, protocols in (
            (f"{ws_url}/ws?api_key={secret}", None),
            (f"{ws_url}/ws", ["ssdlite", f"ssdlite.key.{secret}"]),
        ):
            with connect(url, subprotocols=protocols, open_timeout=30) as ws:
                ws.send(photo())
                assert "detections" in ws.recv(timeout=30)
        metrics = httpx.get(f"{base}/metrics", headers={"X-API-Key": secret}).text
    output = server.output
    assert "/ws?api_key=[redacted]" in output  # the WebSocket line, and the access log's:
    assert '"GET /model?api_key=[redacted] HTTP/1.1" 401' in output
    assert "ssdlite.key.[redacted]" in output  # the handshake's headers, logged at debug level
    assert secret not in output and secret not in metrics

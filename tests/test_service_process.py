"""A real ``python -m service`` process on 127.0.0.1, serving the converted TF person detector."""

import json
import socket
import subprocess
import sys

import httpx
import pytest
from websockets.sync.client import connect

from .service_helpers import ROOT, SMALL_BODY_LIMIT, bad_inputs, photo, photo_640x480, read_raw_response, shared_service

# Hand-drawn boxes around the person in each photo (x1, y1, x2, y2).
PEOPLE = {"astronaut.jpg": (0, 30, 390, 512), "grace_hopper.jpg": (0, 0, 512, 600)}


@pytest.fixture
def server(person_checkpoint):
    return shared_service(person_checkpoint, max_body_size=SMALL_BODY_LIMIT)


def iou(a, b) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union


@pytest.mark.parametrize("name", sorted(PEOPLE))
def test_finds_the_person_in_a_real_photo(server, name):
    response = httpx.post(f"{server.url}/detect", files={"file": (name, photo(name), "image/jpeg")}, timeout=30)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "tf-pedestrian"  # the cached file's name, not its server path
    best = body["detections"][0]
    assert best["label"] == "person" and best["score"] >= 0.5
    assert iou(best["box"], PEOPLE[name]) >= 0.6, best


def test_render_over_http(server):
    response = httpx.post(f"{server.url}/detect/render", content=photo(), timeout=30)
    assert response.status_code == 200 and response.content[:3] == b"\xff\xd8\xff"
    assert int(response.headers["x-detections"]) >= 1


def test_every_bad_input_gets_its_4xx_and_the_server_keeps_serving(server):
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for name, (body, statuses) in bad_inputs().items():
            response = client.post("/detect", files={"file": ("upload.jpg", body, "image/jpeg")})
            assert response.status_code in statuses, (name, response.text)
            assert response.json()["detail"], name
            good = client.post("/detect", content=photo())
            assert good.status_code == 200 and good.json()["detections"], name
        assert client.post("/detect?max_detections=many", content=photo()).status_code == 422
    assert server.process.poll() is None
    assert "Traceback" not in server.output


def test_oversized_body_is_refused_before_it_is_sent(server):
    # Declare 50 MB, send only 64 KB: the 413 must come back without the server waiting for the rest.
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(
            f"POST /detect HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\n"
            f"Content-Length: {50 * 2**20}\r\n\r\n".encode()
            + b"\xff\xd8\xff"
            + b"\0" * 65_536
        )
        status, body = read_raw_response(sock)
    assert status == 413, body
    assert f"limit is {SMALL_BODY_LIMIT} bytes" in body["detail"]
    assert httpx.post(f"{server.url}/detect", content=photo(), timeout=30).status_code == 200


def test_websocket_stream_over_loopback(server):
    frame = photo_640x480()
    with connect(f"ws://127.0.0.1:{server.port}/ws", compression=None) as ws:
        for frame_id in range(1, 6):
            ws.send(frame)
            reply = json.loads(ws.recv(timeout=30))
            assert reply["frame_id"] == frame_id and (reply["width"], reply["height"]) == (640, 480)
            assert reply["detections"][0]["label"] == "person"
            assert 0 <= reply["latency_ms"] < 5000
        for _ in range(30):  # faster than inference: stale frames are dropped, the last one is answered
            ws.send(frame)
        replies = [json.loads(ws.recv(timeout=30))]
        while replies[-1]["frame_id"] < 35:
            replies.append(json.loads(ws.recv(timeout=30)))
        assert len(replies) < 30 and replies[-1]["dropped_frames"] == 30 - len(replies)


def test_operations_endpoints(server):
    assert httpx.get(f"{server.url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{server.url}/readyz").json() == {"status": "ready"}
    info = httpx.get(f"{server.url}/model").json()
    assert info["classes"] == ["person"] and info["input_size"] == 300 and info["backend"] == "onnxruntime"
    metrics = httpx.get(f"{server.url}/metrics").text
    assert 'route="/detect",status="200"' in metrics and "ssdlite_inference_batch_size_bucket" in metrics
    assert httpx.get(f"{server.url}/docs").status_code == 200


def test_an_unloadable_model_exits_with_one_clear_line(tmp_path):
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a checkpoint")
    result = subprocess.run(
        [sys.executable, "-m", "service", "--model", str(bad), "--port", "0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "error: cannot load model" in result.stderr and str(bad) in result.stderr
    assert "Traceback" not in result.stderr

"""Faults cost nothing but the failed request: a failing model, clients that leave, slow clients, big bodies."""

import asyncio
import contextlib
import http.client
import json
import logging
import socket
import threading
import time
import urllib.error
import urllib.request

import httpx
import pytest
from fastapi.testclient import TestClient

from service import Settings, create_app

from .service_helpers import ServiceProcess, photo, read_raw_response, scripted_detector, small_checkpoint


def failing_detector(delay: float = 0.0):
    """A scripted detector whose next forward pass raises once ``detector.fail_next`` is set."""
    detector = scripted_detector(delay=delay)
    scripted = detector.backend
    detector.fail_next = False
    detector.failing = threading.Event()  # set while the failing call runs

    def backend(batch):
        if detector.fail_next:
            detector.fail_next = False
            detector.failing.set()
            time.sleep(delay)
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return scripted(batch)

    detector.backend = backend
    return detector


def live_tasks(client: TestClient) -> set:
    async def tasks():
        return {task for task in asyncio.all_tasks() if not task.done()} - {asyncio.current_task()}

    return client.portal.call(tasks)


def test_a_failing_inference_answers_500_for_its_batch_only(caplog):
    detector = failing_detector(delay=0.4)
    with TestClient(create_app(Settings(max_batch_size=4), detector=detector)) as client:
        detector.fail_next = True
        responses = {}

        def post(name):
            responses[name] = client.post("/detect", content=photo())

        first = threading.Thread(target=post, args=("failing",))
        first.start()
        assert detector.failing.wait(10)  # the failing batch is in inference; these two queue for the next one
        others = [threading.Thread(target=post, args=(name,)) for name in ("second", "third")]
        for thread in others:
            thread.start()
        for thread in (first, *others):
            thread.join(30)
        failed = responses["failing"]
        assert failed.status_code == 500
        assert failed.json() == {"detail": "inference failed (RuntimeError); the server log has the details"}
        for name in ("second", "third"):
            assert responses[name].status_code == 200 and len(responses[name].json()["detections"]) == 1
        assert client.post("/detect", content=photo()).status_code == 200
        assert client.get("/readyz").json() == {"status": "ready"}
    logged = [r for r in caplog.records if r.name == "service.engine" and r.levelno == logging.ERROR]
    assert len(logged) == 1 and "illegal memory access" in str(logged[0].exc_info[1])


def test_a_failing_frame_gets_500_and_the_stream_goes_on():
    detector = failing_detector()
    with TestClient(create_app(Settings(), detector=detector)) as client, client.websocket_connect("/ws") as ws:
        detector.fail_next = True
        ws.send_bytes(photo())
        failed = ws.receive_json()
        assert failed["status"] == 500 and "inference failed" in failed["error"]
        ws.send_bytes(photo())
        assert len(ws.receive_json()["detections"]) == 1


def http_scope(client: TestClient, path: str, headers: dict) -> dict:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 5000),
        "server": ("testserver", 80),
        "state": client.app_state.copy(),
    }


@pytest.mark.parametrize("multipart", [False, True], ids=["raw body", "multipart"])
def test_a_client_that_leaves_mid_upload_leaves_nothing_behind(caplog, multipart):
    app = create_app(Settings(), detector=scripted_detector())
    data = photo()
    if multipart:
        boundary = "leaving"
        content_type = f"multipart/form-data; boundary={boundary}"
        data = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n'
                "Content-Type: image/jpeg\r\n\r\n"
            ).encode()
            + data
            + f"\r\n--{boundary}--\r\n".encode()
        )
    else:
        content_type = "image/jpeg"
    with TestClient(app) as client:
        before = live_tasks(client)
        scope = http_scope(client, "/detect", {"content-type": content_type, "content-length": str(len(data))})
        messages = [
            {"type": "http.request", "body": data[: len(data) // 3], "more_body": True},
            {"type": "http.disconnect"},
        ]
        sent = []

        async def leave_mid_upload():
            async def receive():
                return messages.pop(0) if messages else {"type": "http.disconnect"}

            async def send(message):
                sent.append(message)

            await app(scope, receive, send)

        client.portal.call(leave_mid_upload)
        assert live_tasks(client) == before
        runtime = client.app_state["runtime"]
        assert runtime.engine.queue_depth == 0 and client.post("/detect", content=photo()).status_code == 200
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], "a client leaving is not a server error"
    assert all(m.get("status", 499) == 499 for m in sent if m["type"] == "http.response.start")


def test_a_websocket_client_that_leaves_mid_frame_leaves_nothing_behind():
    """Driven over raw ASGI messages: unlike TestClient, a server does not cancel the endpoint when a client leaves."""
    detector = scripted_detector(delay=0.5)
    app = create_app(Settings(), detector=detector)
    with TestClient(app) as client:
        before = live_tasks(client)
        warm_up_calls = len(detector.batch_sizes)
        upload = threading.Thread(target=client.post, args=("/detect",), kwargs={"content": photo()})
        upload.start()
        time.sleep(0.15)  # the upload is in inference
        scope = {**http_scope(client, "/ws", {}), "type": "websocket", "scheme": "ws", "subprotocols": []}
        sent = []

        async def stream_then_leave():
            messages = [{"type": "websocket.connect"}, {"type": "websocket.receive", "bytes": photo()}]

            async def receive():
                if messages:
                    return messages.pop(0)
                await asyncio.sleep(0.15)  # the frame waits behind the upload; then the client is gone
                return {"type": "websocket.disconnect", "code": 1006}

            async def send(message):
                sent.append(message["type"])

            await app(scope, receive, send)

        client.portal.call(stream_then_leave)
        upload.join(10)
        assert sent == ["websocket.accept"]
        assert live_tasks(client) == before
        runtime = client.app_state["runtime"]
        assert runtime.engine.queue_depth == 0 and runtime.ready
        time.sleep(0.7)
        assert len(detector.batch_sizes) == warm_up_calls + 1, "the frame of a client that had left was inferred"
        assert client.post("/detect", content=photo()).status_code == 200


@pytest.fixture(scope="module")
def strict_server(tmp_path_factory):
    """A served small model with the default 10 MB body limit and a 1.5 s body read timeout."""
    model = small_checkpoint(tmp_path_factory.mktemp("model") / "small.pt")
    with ServiceProcess(model, read_timeout=1.5) as server:
        yield server


def test_slow_clients_get_408_and_hold_nobody_back(strict_server):
    host, port = "127.0.0.1", strict_server.port
    slow = []
    for _ in range(20):
        sock = socket.create_connection((host, port), timeout=10)
        sock.sendall(
            b"POST /detect HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
            b"Content-Length: 100000\r\n\r\n" + photo()[:100]
        )
        slow.append(sock)
    stop = threading.Event()

    def trickle():
        while not stop.is_set():
            for sock in slow:
                with contextlib.suppress(OSError):
                    sock.send(b"\x00")
            time.sleep(0.2)

    trickler = threading.Thread(target=trickle, daemon=True)
    trickler.start()
    try:
        started = time.monotonic()
        response = httpx.post(f"{strict_server.url}/detect", content=photo(), timeout=10)
        assert response.status_code == 200 and time.monotonic() - started < 1.0
        for sock in slow:
            status, body = read_raw_response(sock)
            assert status == 408 and "not received within 1.5 s" in body["detail"]
        assert time.monotonic() - started < 5
    finally:
        stop.set()
        trickler.join()
        for sock in slow:
            sock.close()
    assert "Traceback" not in strict_server.output


def test_urllib_reads_the_413_of_a_12_mb_upload(strict_server):
    """urllib sends the whole body before it reads: the server reads and discards it, then closes."""
    body = b"\xff\xd8\xff" + bytes(12 * 1024 * 1024)
    request = urllib.request.Request(f"{strict_server.url}/detect", data=body, headers={"Content-Type": "image/jpeg"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)
    assert refused.value.code == 413
    assert "request body too large: 12582915 bytes" in json.loads(refused.value.read())["detail"]


def test_http_client_reads_the_413_of_a_chunked_upload(strict_server):
    """No Content-Length: the limit trips while reading, mid-body."""
    connection = http.client.HTTPConnection("127.0.0.1", strict_server.port, timeout=30)
    chunks = (bytes(1024 * 1024) for _ in range(12))
    connection.request("POST", "/detect", body=chunks, headers={"Content-Type": "image/jpeg"}, encode_chunked=True)
    response = connection.getresponse()
    assert response.status == 413 and response.getheader("connection") == "close"
    assert "over 10485760 bytes received" in json.loads(response.read())["detail"]
    connection.close()
    assert httpx.post(f"{strict_server.url}/detect", content=photo(), timeout=10).status_code == 200

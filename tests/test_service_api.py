"""The HTTP/WebSocket API through FastAPI's TestClient (the lifespan runs), with scripted detectors."""

import io
import threading

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service import Settings, create_app
from ssdlite.runtime import default_model

from .service_helpers import bad_inputs, encode, photo, scripted_detector, small_checkpoint

BOX = (0.25, 0.5, 0.75, 1.0)  # what the scripted detector always sees, normalised


@pytest.fixture(scope="module")
def client():
    with TestClient(create_app(Settings(), detector=scripted_detector(BOX))) as client:
        yield client


def image(width=640, height=480) -> bytes:
    rng = np.random.default_rng(0)
    return encode(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def expected_box(width, height):
    return [BOX[0] * width, BOX[1] * height, BOX[2] * width, BOX[3] * height]


def test_detect_multipart_returns_boxes_in_original_pixels(client):
    response = client.post("/detect", files={"file": ("frame.jpg", image(640, 480), "image/jpeg")})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["width"], body["height"], body["model"]) == (640, 480, default_model())
    (det,) = body["detections"]
    assert det["label"] == "person" and det["class_id"] == 1 and det["score"] > 0.99
    np.testing.assert_allclose(det["box"], expected_box(640, 480), atol=0.01)
    assert set(body["timing_ms"]) == {"decode", "queue", "inference", "total", "batch_size"}


@pytest.mark.parametrize("content_type", ["image/jpeg", "application/octet-stream", "image/png", None])
def test_raw_body_format_comes_from_the_bytes_not_the_content_type(client, content_type):
    headers = {"content-type": content_type} if content_type else {}
    response = client.post("/detect", content=image(300, 200), headers=headers)
    assert response.status_code == 200, response.text
    np.testing.assert_allclose(response.json()["detections"][0]["box"], expected_box(300, 200), atol=0.01)


@pytest.mark.parametrize("image_format", ["PNG", "WEBP", "BMP", "TIFF"])
def test_other_formats(client, image_format):
    data = encode(np.full((50, 80, 3), 128, np.uint8), image_format)
    response = client.post("/detect", files={"file": ("x", data, "image/jpeg")})
    assert response.status_code == 200, response.text
    assert (response.json()["width"], response.json()["height"]) == (80, 50)


def test_exif_orientation_is_applied(client):
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 40 wide x 20 high, shown rotated 90 degrees clockwise
    data = encode(np.zeros((20, 40, 3), np.uint8), exif=exif.tobytes())
    body = client.post("/detect", content=data).json()
    assert (body["width"], body["height"]) == (20, 40)
    np.testing.assert_allclose(body["detections"][0]["box"], expected_box(20, 40), atol=0.01)


def test_query_options(client):
    data = image(200, 100)
    assert client.post("/detect?classes=car", content=data).json()["detections"] == []
    assert len(client.post("/detect?classes=car,person", content=data).json()["detections"]) == 1
    assert len(client.post("/detect?classes=car&classes=person", content=data).json()["detections"]) == 1
    assert client.post("/detect?max_detections=1&score_threshold=0.2", content=data).status_code == 200
    unknown = client.post("/detect?classes=zebra", content=data)
    assert unknown.status_code == 422 and "zebra" in unknown.json()["detail"]


@pytest.mark.parametrize(
    "query",
    [
        "score_threshold=abc",
        "score_threshold=nan",
        "score_threshold=1.5",
        "score_threshold=-0.1",
        "max_detections=0",
        "max_detections=ten",
        "max_detections=1e9",
        "render=maybe",
    ],
)
def test_malformed_query_values_get_422(client, query):
    response = client.post(f"/detect?{query}", content=image(64, 64))
    assert response.status_code == 422
    assert "detail" in response.json()
    assert client.post("/detect", content=image(64, 64)).status_code == 200


@pytest.mark.parametrize("path", ["/detect?render=true", "/detect/render"])
def test_render_returns_the_image_with_boxes_as_jpeg(client, path):
    plain = np.full((120, 160, 3), 255, np.uint8)
    response = client.post(path, content=encode(plain, "PNG"))
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
    assert response.headers["x-detections"] == "1"
    rendered = np.asarray(Image.open(io.BytesIO(response.content)))
    assert rendered.shape == (120, 160, 3)
    assert (rendered < 200).any(), "a box should have been drawn on the white image"


def test_batch(client):
    small_png = encode(np.zeros((30, 40, 3), np.uint8), "PNG")
    files = [("files", ("a.jpg", image(640, 480), "image/jpeg")), ("files", ("b.png", small_png, "image/png"))]
    response = client.post("/detect/batch", files=files)
    assert response.status_code == 200, response.text
    first, second = response.json()["results"]
    assert (first["filename"], first["width"], second["filename"], second["height"]) == ("a.jpg", 640, "b.png", 30)
    np.testing.assert_allclose(second["detections"][0]["box"], expected_box(40, 30), atol=0.01)


def test_batch_errors_name_the_bad_file(client):
    files = [("files", ("good.jpg", image(), "image/jpeg")), ("files", ("bad.jpg", b"not an image", "image/jpeg"))]
    response = client.post("/detect/batch", files=files)
    assert response.status_code == 415
    assert "files[1] (bad.jpg)" in response.json()["detail"]
    assert client.post("/detect/batch", data={"files": "text"}, files={"x": ("x.txt", b"1")}).status_code == 422
    assert client.post("/detect/batch", content=photo()).status_code == 415
    assert client.post("/detect/batch", files=files[:1]).status_code == 200


@pytest.mark.parametrize("name", list(bad_inputs()))
@pytest.mark.parametrize("how", ["multipart", "raw"])
def test_bad_input_gets_4xx_json_and_the_next_request_succeeds(client, name, how):
    body, statuses = bad_inputs()[name]
    if how == "multipart":
        response = client.post("/detect", files={"file": ("upload.jpg", body, "image/jpeg")})
    else:
        response = client.post("/detect", content=body, headers={"content-type": "image/jpeg"})
    assert response.status_code in statuses, response.text
    assert isinstance(response.json()["detail"], str) and response.json()["detail"]
    assert client.post("/detect", content=photo()).status_code == 200


def test_multipart_without_a_file_field(client):
    assert client.post("/detect", files={"image": ("x.jpg", photo(), "image/jpeg")}).status_code == 422
    text_field = client.post("/detect", data={"file": "not a file"}, files={"x": ("x.txt", b"1")})
    assert text_field.status_code == 422 and "text field" in text_field.json()["detail"]
    two = [("file", ("a.jpg", photo(), "image/jpeg")), ("file", ("b.jpg", photo(), "image/jpeg"))]
    assert client.post("/detect", files=two).status_code == 422


def test_body_limit_answers_413_json_declared_or_streamed():
    settings = Settings(max_body_size=50_000)
    with TestClient(create_app(settings, detector=scripted_detector())) as client:
        declared = client.post("/detect", content=b"\xff\xd8\xff" + b"\0" * 60_000)
        assert declared.status_code == 413 and "limit is 50000 bytes" in declared.json()["detail"]

        def chunks():  # no Content-Length: the limit applies while the body streams in
            for _ in range(10):
                yield b"\0" * 10_000

        streamed = client.post("/detect", content=chunks())
        assert streamed.status_code == 413 and "detail" in streamed.json()
        assert client.post("/detect", content=image(64, 64)).status_code == 200


def test_pixel_limit_is_checked_before_decoding():
    with TestClient(create_app(Settings(max_pixels=100 * 100), detector=scripted_detector())) as client:
        response = client.post("/detect", content=encode(np.zeros((101, 100, 3), np.uint8), "PNG"))
        assert response.status_code == 413 and "10100 pixels" in response.json()["detail"]
        assert client.post("/detect", content=encode(np.zeros((100, 100, 3), np.uint8), "PNG")).status_code == 200


def test_full_queue_answers_503_with_retry_after():
    settings = Settings(queue_size=1, max_batch_size=1)
    with TestClient(create_app(settings, detector=scripted_detector(delay=0.5))) as client:
        responses = []

        def post():
            responses.append(client.post("/detect", content=image(64, 64)))

        threads = [threading.Thread(target=post) for _ in range(5)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        statuses = sorted(r.status_code for r in responses)
        assert 200 in statuses and 503 in statuses, statuses
        busy = next(r for r in responses if r.status_code == 503)
        assert busy.headers["retry-after"] == "1" and "busy" in busy.json()["detail"]
        assert client.post("/detect", content=image(64, 64)).status_code == 200


def test_not_ready_without_lifespan():
    client = TestClient(create_app(Settings(), detector=scripted_detector()))  # no `with`: no lifespan
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 503
    loading = client.post("/detect", content=photo())
    assert loading.status_code == 503 and loading.headers["retry-after"] == "5"


def test_operations_endpoints(client):
    client.post("/detect", content=image(64, 64))
    client.post("/detect", content=b"junk")
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}
    info = client.get("/model").json()
    assert info["classes"] == ["person", "car"] and info["input_size"] == 160 and info["name"] == default_model()
    metrics = client.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    assert 'ssdlite_http_requests_total{method="POST",route="/detect",status="200"}' in text
    assert 'ssdlite_http_requests_total{method="POST",route="/detect",status="415"}' in text
    for name in (
        "ssdlite_http_request_duration_seconds_bucket",
        "ssdlite_inference_batch_size_bucket",
        "ssdlite_inference_duration_seconds_bucket",
        "ssdlite_queue_depth",
        "ssdlite_ready 1.0",
    ):
        assert name in text
    assert client.get("/docs").status_code == 200
    assert "/detect/batch" in client.get("/openapi.json").json()["paths"]


def test_page_and_static_files(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'src="/static/app.js"' in page.text and 'id="overlay"' in page.text and 'id="upload-form"' in page.text
    script = client.get("/static/app.js").text
    assert "getUserMedia" in script and "/ws" in script


def test_websocket_answers_each_frame_and_survives_bad_ones(client):
    with client.websocket_connect("/ws?score_threshold=0.3") as ws:
        ws.send_bytes(image(640, 480))
        reply = ws.receive_json()
        assert reply["frame_id"] == 1 and (reply["width"], reply["height"]) == (640, 480)
        np.testing.assert_allclose(reply["detections"][0]["box"], expected_box(640, 480), atol=0.01)
        assert reply["latency_ms"] >= 0 and reply["dropped_frames"] == 0
        ws.send_bytes(b"garbage")
        assert ws.receive_json() | {"latency_ms": 0} == {
            "frame_id": 2,
            "status": 415,
            "error": ws_error(b"garbage"),
            "latency_ms": 0,
            "dropped_frames": 0,
        }
        ws.send_text("hello")
        assert ws.receive_json()["status"] == 415
        ws.send_bytes(photo())
        assert ws.receive_json()["frame_id"] == 4


def ws_error(data: bytes) -> str:
    from service.decoding import ImageError, sniff_format

    with pytest.raises(ImageError) as error:
        sniff_format(data)
    return error.value.detail


def test_websocket_rejects_bad_parameters(client):
    with client.websocket_connect("/ws?classes=zebra") as ws:
        assert ws.receive_json()["status"] == 422


def test_websocket_drops_stale_frames_when_inference_is_slower():
    with TestClient(create_app(Settings(), detector=scripted_detector(delay=0.2))) as client:
        with client.websocket_connect("/ws") as ws:
            for _ in range(10):
                ws.send_bytes(image(64, 64))
            replies = []
            while not replies or replies[-1]["frame_id"] < 10:
                replies.append(ws.receive_json())
        ids = [r["frame_id"] for r in replies]
        assert ids == sorted(ids) and len(ids) < 10, ids
        assert replies[-1]["dropped_frames"] == 10 - len(ids)
        assert all(r["latency_ms"] < 1000 for r in replies)
        assert 'ssdlite_ws_frames_total{outcome="dropped"}' in client.get("/metrics").text


def test_serves_a_checkpoint_path_with_onnxruntime(tmp_path):
    path = small_checkpoint(tmp_path / "small.pt")
    settings = Settings(model=str(path), backend="onnxruntime", threads=1)
    with TestClient(create_app(settings)) as client:
        info = client.get("/model").json()
        assert (info["backend"], info["name"], info["input_size"]) == ("onnxruntime", "small", 160)  # no server path
        assert info["precision"] == "float32"
        response = client.post("/detect?score_threshold=0.01&max_detections=5", content=photo())
        assert response.status_code == 200
        detections = response.json()["detections"]
        assert len(detections) <= 5
        for det in detections:
            x1, y1, x2, y2 = det["box"]
            assert 0 <= x1 <= x2 <= 512 and 0 <= y1 <= y2 <= 512 and det["label"] in ("person", "car")


@pytest.mark.parametrize("precision", ["float32", "int8"])
def test_serves_an_exported_onnx_file(tmp_path, precision):
    from ssdlite import export_onnx, load_checkpoint
    from ssdlite.deploy.int8 import load_calibration_images
    from ssdlite.images import SAMPLE_PHOTOS
    from ssdlite.runtime import ModelLoadError

    model, class_names = load_checkpoint(small_checkpoint(tmp_path / "small.pt"))
    onnx_path = tmp_path / "small.onnx"
    calibration = load_calibration_images(SAMPLE_PHOTOS, model.config).images if precision == "int8" else None
    export_onnx(model, class_names, onnx_path, calibration=calibration)
    refused = pytest.raises(ModelLoadError, match="small.onnx: the onnx format runs on onnxruntime, not on torch")
    with refused, TestClient(create_app(Settings(model=str(onnx_path), backend="torch"))):
        pass
    with TestClient(create_app(Settings(model=str(onnx_path)))) as client:
        info = client.get("/model").json()
        assert info["backend"] == "onnxruntime"  # .onnx files run there
        assert info["precision"] == precision
        assert client.post("/detect", content=photo()).status_code == 200


@pytest.mark.parametrize(
    ("backend", "device", "cuda", "expected"),
    [
        ("auto", "auto", False, ("onnxruntime", "cpu")),
        ("auto", "auto", True, ("torch", "cuda")),
        ("auto", "cpu", True, ("onnxruntime", "cpu")),
        ("onnxruntime", "auto", True, ("onnxruntime", "cpu")),
        ("torch", "auto", False, ("torch", "cpu")),
        ("torch", "cuda:1", True, ("torch", "cuda:1")),
    ],
)
def test_backend_choice(monkeypatch, backend, device, cuda, expected):
    import torch

    from ssdlite.runtime.loading import choose_backend

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2 if cuda else 0)
    settings = Settings(backend=backend, device=device)
    assert choose_backend(settings.model, settings.backend, settings.device) == expected


@pytest.mark.parametrize("model", ["tf-pedestrian-int8", "/models/mine.onnx"])
def test_onnx_models_run_on_onnxruntime_whatever_the_backend_setting(monkeypatch, model):
    import torch

    from ssdlite.runtime.loading import choose_backend

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert choose_backend(model, "auto", Settings().device) == ("onnxruntime", "cpu")
    assert choose_backend("tf-pedestrian", "auto", Settings().device) == ("torch", "cuda")


@pytest.mark.parametrize(
    ("environment", "cuda", "expected"),
    [
        ({}, False, "tf-pedestrian-int8"),  # a CPU: the INT8 build
        ({}, True, "tf-pedestrian"),  # a GPU: float on torch
        ({"SSDLITE_MODEL": "tf-pedestrian"}, False, "tf-pedestrian"),  # float is one setting away
        ({"SSDLITE_BACKEND": "torch"}, False, "tf-pedestrian"),  # torch cannot run the INT8 .onnx file
        ({"SSDLITE_DEVICE": "cpu"}, True, "tf-pedestrian-int8"),
        ({"SSDLITE_MODEL": "auto"}, False, "tf-pedestrian-int8"),
    ],
)
def test_default_model_is_int8_on_a_cpu_and_named_as_served(monkeypatch, environment, cuda, expected):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    assert settings.model == expected
    with TestClient(create_app(settings, detector=scripted_detector())) as client:
        assert client.get("/model").json()["name"] == expected


def test_settings_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("SSDLITE_MODEL", "/models/mine.onnx")
    monkeypatch.setenv("SSDLITE_PORT", "9000")
    monkeypatch.setenv("SSDLITE_MAX_BATCH_SIZE", "2")
    settings = Settings()
    assert (settings.model, settings.port, settings.max_batch_size, settings.host) == (
        "/models/mine.onnx",
        9000,
        2,
        "127.0.0.1",
    )
    monkeypatch.setenv("SSDLITE_QUEUE_SIZE", "zero")
    with pytest.raises(ValueError, match="queue_size"):
        Settings()


def test_batch_refuses_more_files_than_allowed():
    with TestClient(create_app(Settings(max_files=2), detector=scripted_detector())) as client:
        files = [("files", (f"{i}.jpg", image(32, 32), "image/jpeg")) for i in range(3)]
        response = client.post("/detect/batch", files=files)
        assert 400 <= response.status_code < 500 and "files" in response.json()["detail"].lower()
        assert client.post("/detect/batch", files=files[:2]).status_code == 200

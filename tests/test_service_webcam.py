"""``python -m service.webcam`` on a video file, headless, detecting locally and through the service."""

import json

import cv2
import numpy as np
import pytest

from service.webcam import main

from .service_helpers import PHOTOS, SMALL_BODY_LIMIT, free_port, shared_service, small_checkpoint


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """Eight 640x480 frames of a photo of a person, as MP4."""
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    image = cv2.resize(cv2.imread(str(PHOTOS / "grace_hopper.jpg")), (640, 480))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (640, 480))
    for shift in range(8):
        writer.write(np.roll(image, 8 * shift, axis=1))
    writer.release()
    return path


def frames_in(path) -> int:
    capture = cv2.VideoCapture(str(path))
    count = 0
    while capture.read()[0]:
        count += 1
    capture.release()
    return count


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_local_model_writes_an_annotated_video(clip, tmp_path, capsys):
    model = small_checkpoint(tmp_path / "small.pt")
    output = tmp_path / "out.mp4"
    argv = [
        "--source",
        str(clip),
        "--model",
        str(model),
        "--no-display",
        "--output",
        str(output),
        "--json",
        "--score-threshold",
        "0.01",
        "--max-frames",
        "5",
    ]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert [line["frame"] for line in json_lines(captured.out)] == [1, 2, 3, 4, 5]
    assert "5 frames" in captured.err
    assert frames_in(output) == 5


def test_through_the_service_finds_the_person(clip, person_checkpoint, tmp_path, capsys):
    server = shared_service(person_checkpoint, max_body_size=SMALL_BODY_LIMIT)
    assert main(["--source", str(clip), "--url", server.url, "--no-display", "--json"]) == 0
    lines = json_lines(capsys.readouterr().out)
    assert len(lines) == 8
    assert all(line["detections"] and line["detections"][0]["label"] == "person" for line in lines)


def test_bad_source_url_and_threshold_end_with_a_message(clip, capsys):
    assert main(["--source", "/no/such/video.mp4", "--no-display"]) == 2
    assert "cannot open video file or stream" in capsys.readouterr().err
    assert main(["--source", str(clip), "--url", f"http://127.0.0.1:{free_port()}", "--no-display"]) == 2
    assert "cannot reach the service" in capsys.readouterr().err
    assert main(["--source", str(clip), "--score-threshold", "2", "--no-display"]) == 2


def test_through_a_service_with_api_keys(clip, person_checkpoint, capsys):
    server = shared_service(person_checkpoint, max_body_size=SMALL_BODY_LIMIT, api_keys="page-key-1")
    argv = ["--source", str(clip), "--url", server.url, "--no-display", "--json", "--max-frames", "2"]
    assert main(argv) == 2
    assert "needs an API key (--api-key or SSDLITE_API_KEY)" in capsys.readouterr().err
    assert main([*argv, "--api-key", "wrong"]) == 2
    assert "refused the API key" in capsys.readouterr().err
    assert main([*argv, "--api-key", "page-key-1"]) == 0
    assert [line["frame"] for line in json_lines(capsys.readouterr().out)] == [1, 2]

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
    assert [line["frame"] for line in json_lines(captured.out)] == [0, 1, 2, 3, 4]  # the source's frame numbers
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
    assert "cannot open '/no/such/video.mp4': no such file or folder" in capsys.readouterr().err
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
    assert [line["frame"] for line in json_lines(capsys.readouterr().out)] == [0, 1]


@pytest.fixture(scope="module")
def crossing_clip(tmp_path_factory):
    """20 frames at 10 FPS on grey: Grace Hopper walks down across the middle row, her mirror image walks up."""
    path = tmp_path_factory.mktemp("video") / "crossing.avi"
    background = np.full((480, 640, 3), 110, dtype=np.uint8)
    person = cv2.resize(cv2.imread(str(PHOTOS / "grace_hopper.jpg")), (150, 190))
    walkers = [(person, 60, 0, 14), (person[:, ::-1], 420, 290, -14)]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (640, 480))
    for frame in range(20):
        image = background.copy()
        for crop, x, y0, dy in walkers:
            y = y0 + dy * frame
            image[y : y + 190, x : x + 150] = crop
        writer.write(image)
    writer.release()
    return path


def test_tracks_and_counts_people_crossing_a_line(crossing_clip, person_checkpoint, tmp_path, capsys):
    events, output = tmp_path / "events.csv", tmp_path / "tracked.mp4"
    argv = ["--source", str(crossing_clip), "--model", str(person_checkpoint), "--no-display", "--json"]
    argv += ["--track", "--line", "0,0.5,1,0.5", "--zone", "0,0,320,0,320,480,0,480", "--events", str(events)]
    assert main([*argv, "--output", str(output)]) == 0
    lines = json_lines(capsys.readouterr().out)
    assert len(lines) == 20 and frames_in(output) == 20
    ids = {d["track_id"] for line in lines for d in line["detections"]}
    assert len(ids) == 2, ids  # two people, two identities from start to end
    counts = lines[-1]["counts"]
    assert counts["lines"] == [{"in": 1, "out": 1, "classes": {"person": {"in": 1, "out": 1}}}]
    assert (counts["zones"][0]["inside"], counts["zones"][0]["entered"]) == (1, 1)  # the one on the left
    rows = [row.split(",") for row in events.read_text().splitlines()]
    assert rows[0] == ["time", "frame", "track_id", "label", "kind", "index", "direction", "seconds_inside"]
    assert sorted((row[4], row[6]) for row in rows[1:]) == [("line", "in"), ("line", "out"), ("zone", "enter")]


def test_vid_stride_processes_every_nth_frame(crossing_clip, person_checkpoint, capsys):
    argv = ["--source", str(crossing_clip), "--model", str(person_checkpoint), "--no-display", "--json"]
    assert main([*argv, "--vid-stride", "3", "--track", "--line", "0,0.5,1,0.5"]) == 0
    lines = json_lines(capsys.readouterr().out)
    assert [line["frame"] for line in lines] == list(range(0, 20, 3))
    assert [line["time"] for line in lines] == pytest.approx([f / 10 for f in range(0, 20, 3)])
    assert lines[-1]["counts"]["lines"][0]["in"] == 1  # the tracker sees the gaps and still follows both


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--track", "--line", "5,5,5,5"], "line '5,5,5,5': its two points are equal"),
        (["--track", "--zone", "1,2,3,4"], "zone '1,2,3,4': give at least 3 points, x1,y1,x2,y2,x3,y3,..."),
        (["--line", "0,0.5,1,0.5"], "--line and --zone count tracked objects: add --track"),
        (["--vid-stride", "0"], "--vid-stride must be at least 1 (every Nth frame), got 0"),
        (["--track", "--lost-seconds", "-1"], "--lost-seconds must be 0 or more, got -1.0"),
        (["--events", "e.csv"], "--events writes line and zone counts: give a --line or --zone"),
    ],
)
def test_bad_tracking_options_end_with_one_line(clip, extra, message, capsys):
    assert main(["--source", str(clip), "--no-display", *extra]) == 2
    assert capsys.readouterr().err == f"error: {message}\n"


def test_bad_sources_end_with_one_line(tmp_path, capsys):
    assert main(["--source", "ftp://cam.local/live", "--no-display"]) == 2
    assert "unsupported URL scheme 'ftp' in 'ftp://cam.local/live'" in capsys.readouterr().err
    assert main(["--source", f"http://127.0.0.1:{free_port()}/live.mjpg", "--reconnects", "1", "--no-display"]) == 2
    retry, error = capsys.readouterr().err.splitlines()
    assert retry.startswith("cannot open http://127.0.0.1:") and retry.endswith("trying again in 0.5 s (1/1)")
    assert error.startswith("error: cannot open 'http://127.0.0.1:") and error.endswith(
        "could not reconnect in 1 tries"
    )


def test_a_zone_outside_the_video_is_refused(clip, tmp_path, capsys):
    small = small_checkpoint(tmp_path / "small.pt")
    argv = ["--source", str(clip), "--model", str(small), "--no-display", "--track", "--zone", "0,0,900,0,900,900"]
    assert main(argv) == 1
    assert capsys.readouterr().err == "error: zone '0,0,900,0,900,900' lies outside the 640x480 frame\n"


def test_tracks_and_counts_through_the_service(crossing_clip, person_checkpoint, tmp_path, capsys):
    server = shared_service(person_checkpoint, max_body_size=SMALL_BODY_LIMIT)
    events = tmp_path / "events.csv"
    argv = ["--source", str(crossing_clip), "--url", server.url, "--no-display", "--json", "--events", str(events)]
    assert main([*argv, "--track", "--line", "0,0.5,1,0.5"]) == 0
    lines = json_lines(capsys.readouterr().out)
    assert len({d["track_id"] for line in lines for d in line["detections"]}) == 2
    assert (lines[-1]["counts"]["lines"][0]["in"], lines[-1]["counts"]["lines"][0]["out"]) == (1, 1)
    rows = events.read_text().splitlines()[1:]
    assert sorted(row.split(",")[6] for row in rows) == ["in", "out"]

"""``ssdlite.video``: trackers on scripted boxes, line and zone counts, frame sources (files, folders, live)."""

import re
import threading
import time
import tomllib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import metadata
from pathlib import Path

import cv2
import numpy as np
import pytest

from bench.video import SyntheticCamera
from ssdlite.video import (
    TRACKERS,
    Counter,
    CountingError,
    FrameSource,
    SourceError,
    SourceOptions,
    Tracker,
    TrackerOptions,
    TrackingError,
    parse_region,
    track,
)

from .service_helpers import scripted_detector

pytest.importorskip("trackers", reason="tracking needs: pip install 'ssdlite[track]' && pip install --no-deps trackers")


def person(box, score=0.9) -> dict:
    return {"box": [float(v) for v in box], "score": score, "class_id": 1, "label": "person"}


def walk(start, step, frames):
    """Boxes of a 40x100 person from ``start`` (x, y) moving ``step`` pixels a frame."""
    return [
        (start[0] + step[0] * f, start[1] + step[1] * f, start[0] + step[0] * f + 40, start[1] + step[1] * f + 100)
        for f in range(frames)
    ]


def run_tracker(options: TrackerOptions, frames: list[list[dict]], fps: float = 15.0) -> list[list[dict]]:
    tracker = Tracker(options)
    return [tracker.update(detections, index / fps) for index, detections in enumerate(frames)]


@pytest.mark.parametrize("name", TRACKERS)
def test_each_tracker_keeps_identities_on_a_clean_clip(name):
    a, b = walk((20, 50), (6, 0), 30), walk((500, 300), (-6, 0), 30)
    results = run_tracker(TrackerOptions(tracker=name), [[person(x), person(y)] for x, y in zip(a, b, strict=True)])
    later = results[5:]
    assert all(len(frame) == 2 for frame in later)
    by_position = {(round(d["box"][1]) < 200): d["track_id"] for d in later[0]}
    for frame in later:
        for d in frame:
            assert d["track_id"] == by_position[round(d["box"][1]) < 200]


def occlusion_clip(fps=15.0):
    """A walks right, B stands; A passes in front of B, hiding it completely for 11 frames."""
    front = walk((100, 100), (8, 0), 45)
    back = (300, 100, 340, 200)
    frames = []
    for box in front:
        hidden = box[0] < back[2] and box[2] > back[0]  # A overlaps B: B is not detected
        frames.append([{**person(box), "who": "A"}] + ([] if hidden else [{**person(back, 0.8), "who": "B"}]))
    hidden_frames = sum(len(f) == 1 for f in frames)
    return frames, hidden_frames


def test_ocsort_keeps_an_identity_through_an_occlusion_shorter_than_a_second():
    frames, hidden = occlusion_clip()
    assert 9 <= hidden <= 11  # under a second at 15 FPS
    results = run_tracker(TrackerOptions(tracker="ocsort", frame_rate=15), frames)
    ids = {who: {d["track_id"] for frame in results for d in frame if d["who"] == who} for who in "AB"}
    # SORT, ByteTrack and BoT-SORT give B's identity to A for the frame A covers B exactly.
    assert len(ids["A"]) == 1 and len(ids["B"]) == 1 and ids["A"] != ids["B"], ids


def test_ids_are_never_reused_and_each_class_has_its_own_tracks():
    tracker = Tracker(TrackerOptions(tracker="sort", lost_seconds=0.1, confirm_frames=1))
    first = [tracker.update([person((10, 10, 50, 110))], t / 30) for t in range(5)]
    gap = [tracker.update([], t / 30) for t in range(5, 20)]  # longer than lost_seconds: the track is forgotten
    car = {"box": [10.0, 10.0, 50.0, 110.0], "score": 0.9, "class_id": 3, "label": "car"}
    again = [tracker.update([person((10, 10, 50, 110)), car], t / 30) for t in range(20, 25)]
    assert {d["track_id"] for f in first for d in f} == {1}
    assert gap[-1] == []
    ids = {(d["label"], d["track_id"]) for f in again for d in f}
    assert ids == {("person", 2), ("car", 3)}  # same place, but a new person and a car of its own


def test_tracker_rejects_bad_options_and_time_going_back():
    with pytest.raises(TrackingError, match="unknown tracker 'deepsort'"):
        TrackerOptions(tracker="deepsort")
    with pytest.raises(TrackingError, match="--match-iou must be between 0 and 1"):
        TrackerOptions(match_iou=2)
    tracker = Tracker()
    tracker.update([], 1.0)
    with pytest.raises(TrackingError, match="timestamps must increase"):
        tracker.update([], 1.0)


def count(counter: Counter, frames: list[list[dict]], size=(640, 480), fps=15.0):
    events = []
    for index, tracked in enumerate(frames):
        events += counter.update(tracked, index, index / fps, *size)
    return events


def tracked(box, track_id, label="person") -> dict:
    return {**person(box), "track_id": track_id, "label": label}


def test_line_counts_each_direction_and_only_within_the_segment():
    line = parse_region("line", "0,0.5,0.5,0.5")  # the left half of the middle row, pointing right
    counter = Counter([line])
    down = walk((100, 100), (0, 10), 20)  # centre crosses y=240 inside the segment: in
    up = walk((200, 300), (0, -10), 20)  # crosses upwards: out
    beside = walk((500, 100), (0, 10), 20)  # crosses y=240 right of the segment: not counted
    frames = [[tracked(a, 1), tracked(b, 2), tracked(c, 3, "car")] for a, b, c in zip(down, up, beside, strict=True)]
    events = count(counter, frames)
    assert sorted((e.track_id, e.direction) for e in events) == [(1, "in"), (2, "out")]
    assert counter.counts()["lines"] == [{"in": 1, "out": 1, "classes": {"person": {"in": 1, "out": 1}}}]


def test_zone_occupancy_entries_exits_and_time_inside():
    zone = parse_region("zone", "200,0,400,0,400,480,200,480")
    counter = Counter(zones=[zone], lost_seconds=0.5)
    passer = walk((100, 200), (20, 0), 20)  # crosses the zone left to right
    stayer = (280, 50, 320, 150)  # enters at frame 0 and is lost at frame 10 (inside)
    frames = [[tracked(passer[f], 1)] + ([tracked(stayer, 2)] if f < 10 else []) for f in range(20)]
    events = count(counter, frames, fps=10.0)
    assert [(e.track_id, e.direction) for e in events] == [(2, "enter"), (1, "enter"), (1, "exit"), (2, "exit")]
    passer_exit = next(e for e in events if e.track_id == 1 and e.direction == "exit")
    assert passer_exit.seconds_inside == pytest.approx(1.1)  # its centre is inside from frame 4 to 14, at 10 FPS
    zone_counts = counter.counts(time=2.0)["zones"][0]
    assert (zone_counts["inside"], zone_counts["entered"], zone_counts["exited"]) == (0, 2, 2)
    middle = Counter(zones=[zone])
    count(middle, frames[:5], fps=10.0)
    assert middle.counts(time=0.4)["zones"][0]["seconds_inside"] == {"2": 0.4, "1": 0.0}


@pytest.mark.parametrize(
    ("kind", "text", "message"),
    [
        ("line", "10,10,10,10", "its two points are equal"),
        ("line", "1,2,3", "x,y pairs"),
        ("line", "1,2,3,4,5,6", "exactly two points"),
        ("zone", "0,0,1,1", "at least 3 points"),
        ("zone", "0,0,x,1,1,1", "comma-separated numbers"),
        ("line", "0,0,nan,5", "finite"),
    ],
)
def test_bad_regions_name_the_value(kind, text, message):
    with pytest.raises(CountingError, match=message) as error:
        parse_region(kind, text)
    assert repr(text) in str(error.value)


def test_regions_in_fractions_and_outside_the_frame():
    np.testing.assert_allclose(parse_region("line", "0,0.5,1,0.5").resolve(640, 480), [[0, 240], [640, 240]])
    np.testing.assert_allclose(parse_region("line", "0,240,640,240").resolve(640, 480), [[0, 240], [640, 240]])
    with pytest.raises(CountingError, match="zone '0,0,900,0,900,900' lies outside the 640x480 frame"):
        Counter(zones=[parse_region("zone", "0,0,900,0,900,900")]).resolve(640, 480)


@pytest.fixture(scope="module")
def numbered_video(tmp_path_factory):
    """12 frames at 10 FPS whose brightness encodes the frame number (frame i: 20 * i)."""
    path = tmp_path_factory.mktemp("video") / "numbered.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (160, 120))
    for index in range(12):
        writer.write(np.full((120, 160, 3), 20 * index, dtype=np.uint8))
    writer.release()
    return path


def brightness_index(image) -> int:
    return round(float(image.mean()) / 20)


def test_a_video_file_is_read_in_full_with_a_stride(numbered_video):
    with FrameSource(str(numbered_video), SourceOptions(vid_stride=3)) as source:
        frames = list(source)
    assert [f.index for f in frames] == [0, 3, 6, 9]
    assert [brightness_index(f.image) for f in frames] == [0, 3, 6, 9]
    assert [f.time for f in frames] == pytest.approx([0.0, 0.3, 0.6, 0.9])
    assert source.fps == pytest.approx(10)


def test_a_folder_of_images_is_a_clip(tmp_path):
    for index in range(5):
        cv2.imwrite(str(tmp_path / f"frame_{index:03d}.png"), np.full((40, 60, 3), 20 * index, dtype=np.uint8))
    (tmp_path / "notes.txt").write_text("not an image")
    with FrameSource(str(tmp_path), SourceOptions(vid_stride=2)) as source:
        assert [(f.index, brightness_index(f.image)) for f in source] == [(0, 0), (2, 2), (4, 4)]


def test_max_fps_paces_a_file(numbered_video):
    started = time.monotonic()
    with FrameSource(str(numbered_video), SourceOptions(max_fps=40)) as source:
        assert len(list(source)) == 12
    assert time.monotonic() - started >= 11 / 40 * 0.9


@pytest.mark.parametrize(
    ("spec", "options", "message"),
    [
        ("ftp://camera.local/stream", {}, "unsupported URL scheme 'ftp' in 'ftp://camera.local/stream'"),
        ("/no/such/clip.mp4", {}, "cannot open '/no/such/clip.mp4': no such file or folder"),
        ("{video}", {"vid_stride": 0}, "--vid-stride must be at least 1"),
        ("{video}", {"max_fps": 0}, "--max-fps must be positive"),
        ("{empty}", {}, "holds no images"),
        ("{text}", {}, "cannot read"),
    ],
)
def test_bad_sources_are_one_clear_error(spec, options, message, numbered_video, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "clip.mp4").write_text("not a video")
    spec = spec.format(video=numbered_video, empty=tmp_path / "empty", text=tmp_path / "clip.mp4")
    with pytest.raises(SourceError, match=message.replace("(", r"\(")):
        FrameSource(spec, SourceOptions(**options))


class MJPEGServer:
    """An MJPEG-over-HTTP camera on loopback: each connection gets ``frames`` frames at ``fps``, then ends.

    After ``connections`` connections the server shuts down, so reconnecting is refused.
    """

    def __init__(self, frames: int, connections: int, fps: float = 30.0):
        served = []
        lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                with lock:
                    served.append(1)
                    last = len(served) >= connections
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                for index in range(frames):
                    _, jpeg = cv2.imencode(".jpg", np.full((120, 160, 3), 20 * (index % 12), dtype=np.uint8))
                    head = b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(jpeg)
                    self.wfile.write(head + jpeg.tobytes() + b"\r\n")
                    time.sleep(1 / fps)
                if last:  # refuse what comes next (a bound socket nobody accepts on would hang the client)
                    threading.Thread(target=owner.close, daemon=True).start()

            def log_message(self, *args):
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        self.server, self.served = server, served
        self.url = f"http://127.0.0.1:{server.server_address[1]}/video.mjpg"
        threading.Thread(target=server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_a_dropped_stream_is_reopened_then_given_up_with_one_line():
    camera = MJPEGServer(frames=8, connections=2)
    try:
        seen = []
        options = SourceOptions(reconnects=2, reconnect_delay=0.05)
        with pytest.raises(SourceError) as error, FrameSource(camera.url, options) as source:  # noqa: PT012
            for frame in source:  # the error comes mid-iteration
                seen.append(frame.index)
                time.sleep(0.01)
        assert str(error.value) == f"lost {camera.url!r} and could not reconnect in 2 tries"
        assert len(camera.served) == 2  # the stream came back once, then the server was gone
        assert seen == sorted(seen) and len(seen) > 8  # frames from both connections, numbered on
    finally:
        camera.close()


def test_a_missing_camera_is_an_error_at_once():
    class Closed:
        def isOpened(self):  # noqa: N802 - cv2.VideoCapture's name
            return False

        def release(self):
            pass

    started = time.monotonic()
    with pytest.raises(SourceError, match=r"cannot open camera 3 \(is one connected, and free\?\)"):
        FrameSource("3", SourceOptions(reconnects=5, reconnect_delay=1.0), open_capture=lambda spec: Closed())
    assert time.monotonic() - started < 0.5


def test_a_live_source_that_cannot_open_gives_up():
    with pytest.raises(SourceError, match=r"cannot open 'http://127\.0\.0\.1:9/x\.mjpg' and could not reconnect in 1"):
        FrameSource("http://127.0.0.1:9/x.mjpg", SourceOptions(reconnects=1, reconnect_delay=0.01))


def test_a_live_source_keeps_latency_under_two_inference_times():
    inference = 0.1  # three camera frames per inference
    camera = SyntheticCamera(30.0, np.zeros((48, 64, 3), dtype=np.uint8))
    ages = []
    with FrameSource("0", SourceOptions(), open_capture=lambda spec: camera) as source:
        for count, frame in enumerate(source):
            time.sleep(inference)  # "inference"
            ages.append(time.monotonic() - frame.time)  # how old the frame is when its result is shown
            if count == 15:
                break
    assert max(ages) < 2 * inference, ages
    assert camera.frames > 30  # the camera ran at its own rate; most frames were skipped


def test_track_over_a_file_gives_ids_and_counts(numbered_video):
    detector = scripted_detector((0.0, 0.3, 0.2, 0.7), step=(0.07, 0.0))  # walks right across x = 0.5
    frames = list(track(str(numbered_video), detector, lines=["0.5,0,0.5,1"], zones=["0,0,0.5,0,0.5,1,0,1"]))
    assert len(frames) == 12
    ids = {d["track_id"] for f in frames for d in f.detections}
    assert ids == {1}
    line = frames[-1].counts["lines"][0]
    # The line points down the picture, so walking right crosses from its right to its left: out.
    assert (line["in"], line["out"]) == (0, 1)
    assert [(e.kind, e.direction) for f in frames for e in f.events] == [
        ("zone", "enter"),
        ("line", "out"),
        ("zone", "exit"),
    ]


def test_counting_needs_a_tracker(numbered_video):
    with pytest.raises(CountingError, match="needs tracking"):
        next(track(str(numbered_video), scripted_detector(), tracker=None, lines=["0,0.5,1,0.5"]))


def requirement_names(requirements) -> set[str]:
    return {re.match(r"[A-Za-z0-9_.-]+", r).group(0).lower().replace("_", "-") for r in requirements}


def test_the_track_extra_installs_what_trackers_needs_except_its_opencv():
    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    provided = requirement_names(project["dependencies"]) | requirement_names(project["optional-dependencies"]["track"])
    needed = requirement_names(r for r in metadata.requires("trackers") if "extra ==" not in r)
    assert needed - provided == {"opencv-python"}
    with pytest.raises(metadata.PackageNotFoundError):  # one OpenCV wheel owns cv2: the headless one
        metadata.distribution("opencv-python")

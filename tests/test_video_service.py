"""``/ws?track=true``: per-connection trackers and counts, identities through dropped frames, bad options."""

import threading
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from service import Settings, create_app

from .service_helpers import encode, scripted_detector

pytest.importorskip("trackers", reason="tracking needs: pip install 'ssdlite[track]' && pip install --no-deps trackers")

FRAME = encode(np.full((240, 320, 3), 128, dtype=np.uint8))


def stream(client, query: str, frames: int, interval: float = 0.0) -> list[dict]:
    """Sends ``frames`` frames, one each ``interval`` seconds (as a camera would), and returns the replies."""
    with client.websocket_connect(f"/ws?{query}") as ws:
        replies = []
        started = time.perf_counter()
        for index in range(frames):
            time.sleep(max(0.0, started + index * interval - time.perf_counter()))
            ws.send_bytes(FRAME)
            replies.append(ws.receive_json())
    return replies


def walker():
    """One person walking right across x = 0.5 at 0.9 of the frame a second, from x 0.05-0.25.

    Its motion follows the clock, not the detector's calls: the tracker's clock is each frame's
    arrival, and a person moving per call would seem to speed up and slow down with the machine.
    """
    return scripted_detector((0.05, 0.3, 0.25, 0.7), velocity=(0.9, 0.0))


WALK = {"frames": 16, "interval": 0.05}  # 0.75 s: the centre goes from 0.15 to about 0.83


def test_each_connection_has_its_own_tracker_and_counts():
    detector = walker()
    with TestClient(create_app(Settings(), detector=detector)) as client:
        detector.walk_started = None  # the walk starts at the first frame, not at the warm-up
        results: dict[str, list[dict]] = {}

        def run(name: str):
            results[name] = stream(client, "track=true&line=0.5,1,0.5,0&zone=0,0,0.5,0,0.5,1,0,1", **WALK)

        threads = [threading.Thread(target=run, args=(name,)) for name in ("a", "b")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    for replies in results.values():
        ids = {d["track_id"] for r in replies for d in r["detections"]}
        assert len(ids) == 1, ids  # one object, one identity
        assert "counts" in replies[-1] and "events" in replies[-1]
    # The two streams share the one detector: each stream's IDs start at 1, and each counts its own
    # one crossing and zone visit.
    for replies in results.values():
        assert {d["track_id"] for r in replies for d in r["detections"]} == {1}
        counts = replies[-1]["counts"]
        assert (counts["lines"][0]["in"], counts["lines"][0]["out"]) == (1, 0), counts
        assert (counts["zones"][0]["entered"], counts["zones"][0]["exited"]) == (1, 1), counts


@pytest.mark.parametrize("tracker", ["ocsort", "bytetrack", "sort", "botsort"])
def test_one_stream_counts_a_crossing_and_a_zone_visit(tracker):
    detector = walker()
    with TestClient(create_app(Settings(), detector=detector)) as client:
        detector.walk_started = None
        replies = stream(client, f"track=true&tracker={tracker}&line=0.5,1,0.5,0&zone=0,0,0.5,0,0.5,1,0,1", **WALK)
    counts = replies[-1]["counts"]
    # The line points up the picture, so a walk to the right crosses from its left to its right: in.
    assert counts["lines"] == [{"in": 1, "out": 0, "classes": {"person": {"in": 1, "out": 0}}}]
    zone = counts["zones"][0]
    assert (zone["inside"], zone["entered"], zone["exited"]) == (0, 1, 1)
    events = [(e["kind"], e["direction"]) for r in replies for e in r["events"]]
    assert events == [("zone", "enter"), ("line", "in"), ("zone", "exit")]


def test_identities_survive_dropped_frames():
    # Inference slower than the frames: most frames are dropped, the tracker sees the time gaps.
    detector = scripted_detector((0.1, 0.3, 0.3, 0.7), delay=0.05, step=(0.01, 0.0))
    with (
        TestClient(create_app(Settings(), detector=detector)) as client,
        client.websocket_connect("/ws?track=true") as ws,
    ):
        for _ in range(30):
            ws.send_bytes(FRAME)
        replies = []
        while not replies or replies[-1]["frame_id"] < 30:
            replies.append(ws.receive_json())
    assert replies[-1]["dropped_frames"] > 0
    ids = {d["track_id"] for r in replies for d in r["detections"]}
    assert ids == {1}


def test_without_track_no_ids_and_no_counts():
    with TestClient(create_app(Settings(), detector=scripted_detector())) as client:
        (reply,) = stream(client, "", 1)
    assert "track_id" not in reply["detections"][0] and "counts" not in reply


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("track=true&tracker=deepsort", "unknown tracker 'deepsort'"),
        ("track=true&line=10,10,10,10", "its two points are equal"),
        ("track=true&line=1,2,3", "x,y pairs"),
        ("track=true&zone=0,0,1,1", "at least 3 points"),
        ("track=true&zone=a,b,c,d,e,f", "comma-separated numbers"),
        ("line=0,0.5,1,0.5", "add track=true"),
    ],
)
def test_bad_tracking_options_are_refused_before_any_frame(query, message):
    with (
        TestClient(create_app(Settings(), detector=scripted_detector())) as client,
        client.websocket_connect(f"/ws?{query}") as ws,
    ):
        reply = ws.receive_json()
        assert reply["status"] == 422 and message in reply["error"], reply
        with pytest.raises(WebSocketDisconnect):
            ws.receive_json()


def test_a_zone_outside_the_frame_is_refused_at_the_first_frame():
    with (
        TestClient(create_app(Settings(), detector=scripted_detector())) as client,
        client.websocket_connect("/ws?track=true&zone=0,0,900,0,900,900") as ws,
    ):
        ws.send_bytes(FRAME)
        reply = ws.receive_json()
        assert reply == {
            "frame_id": 1,
            "status": 422,
            "error": "zone '0,0,900,0,900,900' lies outside the 320x240 frame",
        }
        with pytest.raises(WebSocketDisconnect):
            ws.receive_json()

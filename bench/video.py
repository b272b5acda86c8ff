"""The video pipeline's speed: webcam-script FPS with and without tracking, and frame age on a live source.

``python -m bench.video [--output-dir runs/bench_video] [--model tf-pedestrian-int8] [--rounds 2]``

1. A 640 x 480 clip of real people (``bench.clips``' line-crossing clip, looped to ``--frames``
   frames) is written to an .mp4 and run through ``python -m service.webcam --no-display`` as a
   user would, plainly and with ``--track --line 0,0.5,1,0.5 --zone ...``, alternating (ABBA...)
   for ``--rounds`` rounds in one run; the script's own closing line gives frames per second.
2. A synthetic 30 FPS camera (:class:`SyntheticCamera`, read through ``FrameSource`` like a real
   one) feeds ``ssdlite.video.track`` with a detector slowed to about ``--inference-ms`` per frame
   (slower than the camera): the age of each frame when its result is ready (now minus its capture
   time) against the inference time. The live reader keeps only the newest frame, so the age stays
   under two inference times.
"""

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from ssdlite.runtime import Detector
from ssdlite.video import FrameSource, SourceOptions, track

from . import clips
from .common import machine_description, write_json

WEBCAM_SUMMARY = re.compile(r"(\d+) frames in ([\d.]+) s \(([\d.]+) FPS\)")
TRACK_ARGS = ["--track", "--line", "0,0.5,1,0.5", "--zone", "0.25,0.25,0.75,0.25,0.75,0.75,0.25,0.75"]


class SyntheticCamera:
    """A ``cv2.VideoCapture`` stand-in delivering ``fps`` frames a second in real time (``read`` blocks until due)."""

    def __init__(self, fps: float = 30.0, image: np.ndarray | None = None):
        self.fps, self.interval = fps, 1 / fps
        self.image = np.zeros((480, 640, 3), dtype=np.uint8) if image is None else image
        self.next_due = time.monotonic()
        self.frames = 0

    def isOpened(self) -> bool:  # noqa: N802 - cv2.VideoCapture's name
        return True

    def get(self, prop) -> float:
        return self.fps

    def read(self):
        delay = self.next_due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        self.next_due += self.interval
        self.frames += 1
        return True, self.image.copy()

    def release(self):
        pass


def webcam_fps(clip_path: Path, model: str, extra: list[str]) -> float:
    command = [sys.executable, "-m", "service.webcam", "--source", str(clip_path), "--model", model, "--no-display"]
    completed = subprocess.run([*command, *extra], capture_output=True, text=True, check=True)
    match = WEBCAM_SUMMARY.search(completed.stderr)
    if match is None:
        raise RuntimeError(f"service.webcam printed no summary: {completed.stderr[-500:]}")
    return float(match.group(3))


def live_frame_age(model: str, inference_ms: float, frames: int) -> dict:
    detector = Detector.load(model)
    image = clips.line_crossing().frames[20]

    def slow_detector(frame_bgr):
        started = time.monotonic()
        detections = detector.predict(cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2RGB), score_threshold=0.5)
        time.sleep(max(0.0, inference_ms / 1000 - (time.monotonic() - started)))
        return detections

    camera = SyntheticCamera(30.0, image)
    source = FrameSource("0", SourceOptions(), open_capture=lambda spec: camera)
    ages, durations = [], []
    tick = time.monotonic()
    for index, frame in enumerate(track(source, slow_detector, tracker=None)):
        now = time.monotonic()
        ages.append(now - frame.time)
        durations.append(now - tick)
        tick = now
        if index + 1 == frames:
            break
    ages, durations = ages[2:], durations[2:]  # the first frames wait on the camera's start
    inference = statistics.median(durations)
    return {
        "camera_fps": 30.0,
        "frames_captured": camera.frames,
        "frames_processed": frames,
        "inference_ms_p50": round(inference * 1000, 1),
        "age_ms_p50": round(statistics.median(ages) * 1000, 1),
        "age_ms_max": round(max(ages) * 1000, 1),
        "age_max_over_inference": round(max(ages) / inference, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.video", description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", default="runs/bench_video")
    parser.add_argument("--model", default="tf-pedestrian-int8")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--frames", type=int, default=180, help="frames of the webcam clip (default 180)")
    parser.add_argument("--inference-ms", type=float, default=80.0)
    args = parser.parse_args(argv)

    clip = clips.line_crossing()
    looped = clips.Clip("looped", [clip.frames[i % len(clip.frames)] for i in range(args.frames)], [], clip.fps)
    results: dict = {"machine": machine_description(), "model": args.model, "webcam": []}
    with tempfile.TemporaryDirectory() as folder:
        path = clips.write_clip(looped, Path(folder) / "people_640x480.mp4")
        for round_index in range(args.rounds):
            modes = [("detect", []), ("track", TRACK_ARGS)]
            for name, extra in modes if round_index % 2 == 0 else reversed(modes):  # ABBA: neither always first
                fps = webcam_fps(path, args.model, extra)
                results["webcam"].append({"round": round_index, "mode": name, "fps": fps})
                print(f"round {round_index + 1}: service.webcam {name:6s} {fps:6.1f} FPS", flush=True)
    plain = [r["fps"] for r in results["webcam"] if r["mode"] == "detect"]
    tracked = [r["fps"] for r in results["webcam"] if r["mode"] == "track"]
    added_ms = 1000 / statistics.median(tracked) - 1000 / statistics.median(plain)
    results["webcam_summary"] = {"detect_fps": plain, "track_fps": tracked, "track_adds_ms": round(added_ms, 2)}
    print(f"--track with a line and a zone adds {added_ms:.2f} ms a frame (medians of {args.rounds} rounds)")

    results["live"] = live_frame_age(args.model, args.inference_ms, frames=60)
    live = results["live"]
    print(
        f"live 30 FPS camera, inference {live['inference_ms_p50']} ms: frame age p50 {live['age_ms_p50']} ms, "
        f"max {live['age_ms_max']} ms = {live['age_max_over_inference']}x the inference time "
        f"({live['frames_captured']} frames captured, {live['frames_processed']} processed)"
    )
    Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    write_json(str(Path(args.output_dir) / "video.json"), results)
    return 0


if __name__ == "__main__":
    sys.exit(main())

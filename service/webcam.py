"""Webcam demo: boxes, track IDs, counts and FPS on camera, video, stream or image-folder frames.

``python -m service.webcam --source 0|video.mp4|rtsp://...|frames/ [--track] [--line x1,y1,x2,y2]
[--zone x1,y1,...] [--url http://host:8000] [--output out.mp4] [--json] [--events events.csv]``
reads frames from a camera index, a video file, a stream URL or a folder of images, detects objects
locally (``--model``; on a CPU the zoo's INT8 person detector) or through a running service's
WebSocket (``--url``), optionally tracks and counts them, draws boxes and FPS, and shows the result
in a window and/or writes it to a video. Headless machines: ``--no-display --output out.mp4``.
"""

import argparse
import contextlib
import csv
import dataclasses
import json
import os
import sys
import time
from urllib.parse import urlencode, urlsplit, urlunsplit

import cv2

from ssdlite import Detector, SSDLiteError, draw_detections
from ssdlite.cli.common import show_library_logs
from ssdlite.runtime import BACKENDS, default_model
from ssdlite.video import (
    DEFAULT_LOST_SECONDS,
    DEFAULT_TRACKER,
    TRACKERS,
    CountEvent,
    FrameSource,
    SourceOptions,
    TrackerOptions,
    VideoFrame,
    check_available,
    draw_counts,
    regions,
    track,
)


class RemoteDetector:
    """Detection (and tracking, with ``query``) through a running service's ``/ws``: one JPEG out, one JSON back."""

    def __init__(self, url: str, query: dict, jpeg_quality: int = 80, api_key: str | None = None):
        from websockets.exceptions import InvalidStatus
        from websockets.sync.client import connect

        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme not in ("http", "https", "ws", "wss"):
            raise ValueError(f"--url must be http(s)://host:port, got {url!r}")
        scheme = "wss" if parts.scheme in ("https", "wss") else "ws"
        self.endpoint = urlunsplit(
            (scheme, parts.netloc, parts.path.rstrip("/") + "/ws", urlencode(query, doseq=True), "")
        )
        self.jpeg_quality = jpeg_quality
        self.last_reply: dict = {}
        self._connection = contextlib.ExitStack()
        try:
            headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
            self.socket = self._connection.enter_context(
                connect(self.endpoint, compression=None, max_size=None, open_timeout=10, additional_headers=headers)
            )
        except InvalidStatus as error:
            if error.response.status_code != 401:
                raise ConnectionError(f"{self.endpoint} did not accept a WebSocket: {error}") from None
            problem = "refused the API key" if api_key else "needs an API key"
            raise ConnectionError(f"the service at {self.endpoint} {problem} (--api-key or SSDLITE_API_KEY)") from None
        except (OSError, TimeoutError) as error:
            raise ConnectionError(f"cannot reach the service at {self.endpoint}: {error}") from None
        except Exception as error:  # websockets' handshake errors (HTTP status, bad response)
            raise ConnectionError(f"{self.endpoint} did not accept a WebSocket: {error}") from None

    def __call__(self, frame_bgr) -> list[dict]:
        from websockets.exceptions import ConnectionClosed

        ok, jpeg = cv2.imencode(".jpg", frame_bgr, [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
        if not ok:
            raise ValueError("cannot encode the frame as JPEG")
        try:
            self.socket.send(jpeg.tobytes())
            reply = json.loads(self.socket.recv(timeout=30))
        except ConnectionClosed as error:
            raise ConnectionError(f"the service at {self.endpoint} closed the stream: {error}") from None
        self.last_reply = reply
        if "error" in reply:
            what = f"frame {reply['frame_id']}" if "frame_id" in reply else "the stream's options"
            raise ValueError(f"the service refused {what}: {reply['error']}")
        return reply["detections"]

    def close(self):
        self._connection.close()


def annotate(frame: VideoFrame, fps: float, lines, zones):
    """The frame in BGR with boxes (and track IDs), lines and zones with their counts, and the FPS."""
    rgb = cv2.cvtColor(frame.image, cv2.COLOR_BGR2RGB)
    drawn = cv2.cvtColor(draw_detections(rgb, frame.detections), cv2.COLOR_RGB2BGR)
    if frame.counts is not None:
        draw_counts(drawn, lines, zones, frame.counts)
    text = f"{fps:5.1f} FPS  {len(frame.detections)} detections"
    cv2.putText(drawn, text, (10, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (0, 0, 0), 4, cv2.LINE_AA)
    cv2.putText(drawn, text, (10, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (255, 255, 255), 2, cv2.LINE_AA)
    return drawn


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m service.webcam", description=__doc__.splitlines()[0])
    source = parser.add_argument_group("source")
    source.add_argument(
        "--source", default="0", help="camera index, video file, rtsp/rtmp/http(s) URL or folder of images (default 0)"
    )
    source.add_argument("--vid-stride", type=int, default=1, help="process every Nth frame (default 1)")
    source.add_argument("--max-fps", type=float, help="process at most this many frames per second")
    source.add_argument(
        "--reconnects", type=int, default=5, help="times a dropped camera or stream is reopened before giving up"
    )
    source.add_argument("--max-frames", type=int, help="stop after this many frames")
    detection = parser.add_argument_group("detection")
    detection.add_argument("--url", help="detect through a running service (http://host:8000) instead of locally")
    detection.add_argument(
        "--api-key",
        default=os.environ.get("SSDLITE_API_KEY"),
        help="the service's API key, if it wants one (default: $SSDLITE_API_KEY)",
    )
    detection.add_argument(
        "--model",
        default="auto",
        help="local model: zoo name or a .pt/.onnx/.tflite/.pte path (default auto: tf-pedestrian-int8 on the CPU, "
        "tf-pedestrian on a GPU or with --backend torch)",
    )
    detection.add_argument(
        "--backend", choices=("auto", *BACKENDS), default="auto", help="local backend (auto: onnxruntime on the CPU)"
    )
    detection.add_argument("--score-threshold", type=float, default=0.5)
    tracking = parser.add_argument_group("tracking and counting")
    tracking.add_argument("--track", action="store_true", help="give each object a track ID that stays while in view")
    tracking.add_argument("--tracker", choices=TRACKERS, default=DEFAULT_TRACKER, help="default %(default)s")
    tracking.add_argument(
        "--lost-seconds", type=float, default=DEFAULT_LOST_SECONDS, help="keep an unseen track this long (%(default)s)"
    )
    tracking.add_argument("--match-iou", type=float, help="least IoU to match a track (default: the tracker's)")
    tracking.add_argument("--confirm-frames", type=int, help="frames before a new track gets an ID (tracker's)")
    tracking.add_argument(
        "--line", action="append", default=[], metavar="X1,Y1,X2,Y2", help="count crossings (pixels or 0-1 fractions)"
    )
    tracking.add_argument(
        "--zone", action="append", default=[], metavar="X1,Y1,X2,Y2,X3,Y3,...", help="count occupancy"
    )
    tracking.add_argument("--events", metavar="CSV", help="write each count event (line crossing, zone entry or exit)")
    output = parser.add_argument_group("output")
    output.add_argument("--output", help="write the annotated video here (.mp4 or .avi)")
    output.add_argument("--no-display", action="store_true", help="do not open a window")
    output.add_argument("--json", action="store_true", help="print one JSON line per frame")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    show_library_logs()  # model fetches and reconnections
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)  # our one-line errors say it; not OpenCV's WARNs
    try:
        return run(args)
    except (SSDLiteError, ValueError, OSError, TimeoutError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


def check_arguments(args) -> tuple[list, list, TrackerOptions | None]:
    """The parsed lines and zones and the tracker options; a bad value raises with its name."""
    if not 0 <= args.score_threshold <= 1:
        raise ValueError("--score-threshold must be between 0 and 1")
    lines, zones = regions(args.line, args.zone)
    if (lines or zones) and not args.track:
        raise ValueError("--line and --zone count tracked objects: add --track")
    if args.events and not (lines or zones):
        raise ValueError("--events writes line and zone counts: give a --line or --zone")
    if not args.track:
        return lines, zones, None
    check_available()
    options = TrackerOptions(
        tracker=args.tracker,
        lost_seconds=args.lost_seconds,
        track_threshold=args.score_threshold,
        match_iou=args.match_iou,
        confirm_frames=args.confirm_frames,
    )
    return lines, zones, options


def run(args) -> int:
    try:
        lines, zones, tracker = check_arguments(args)
        source_options = SourceOptions(vid_stride=args.vid_stride, max_fps=args.max_fps, reconnects=args.reconnects)
        frames = FrameSource(args.source, source_options)
    except (SSDLiteError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    with contextlib.ExitStack() as cleanup:
        cleanup.enter_context(frames)
        remote: RemoteDetector | None = None
        try:
            if args.url:
                query: dict = {"score_threshold": args.score_threshold}
                if tracker is not None:
                    query.update(track="true", tracker=tracker.tracker, line=args.line, zone=args.zone)
                remote = RemoteDetector(args.url, query, api_key=args.api_key)
                cleanup.callback(remote.close)
                detector = remote
            else:
                model = default_model(backend=args.backend) if args.model == "auto" else args.model
                detector = Detector.load(model, backend=args.backend)
        except Exception as error:  # noqa: BLE001 - a bad URL or model ends the demo with its reason
            print(f"error: {error}", file=sys.stderr)
            return 2
        if tracker is not None and not remote:
            tracker = dataclasses.replace(tracker, frame_rate=frames.fps)
        events_file = None
        if args.events:
            events_file = cleanup.enter_context(open(args.events, "w", newline=""))
            events = csv.writer(events_file)
            events.writerow(CountEvent.CSV_HEADER)
        results = track(
            frames,
            detector,
            tracker=None if remote else tracker,
            lines=() if remote else lines,
            zones=() if remote else zones,
            score_threshold=args.score_threshold,
        )
        display = not args.no_display
        writer = None
        processed, fps, started = 0, 0.0, time.perf_counter()
        if display:
            cleanup.callback(cv2.destroyAllWindows)
        try:
            tick = time.perf_counter()
            for frame in results:
                if remote is not None:
                    adopt_remote_counts(frame, remote.last_reply)
                elapsed = time.perf_counter() - tick
                tick = time.perf_counter()
                fps = 1 / max(elapsed, 1e-6) if processed == 0 else 0.9 * fps + 0.1 / max(elapsed, 1e-6)
                processed += 1
                if args.json:
                    print(json.dumps(frame_record(frame)), flush=True)
                if events_file is not None:
                    events.writerows(event.csv_row() for event in frame.events)
                    events_file.flush()
                if args.output or display:  # drawing costs a few ms a frame: only for someone to see
                    drawn = annotate(frame, fps, lines, zones)
                    if args.output:
                        if writer is None:
                            size = drawn.shape[1], drawn.shape[0]
                            writer = open_writer(args.output, frames.fps / args.vid_stride, *size)
                            cleanup.callback(writer.release)
                        writer.write(drawn)
                    if display:
                        display = show(drawn)
                        if display and cv2.waitKey(1) & 0xFF in (ord("q"), 27):
                            break
                if args.max_frames is not None and processed >= args.max_frames:
                    break
        except KeyboardInterrupt:
            pass
        finally:
            results.close()
    if not processed:
        print(f"error: no frames could be read from {args.source!r}", file=sys.stderr)
        return 1
    total = time.perf_counter() - started
    where = f" -> {args.output}" if args.output else ""
    print(f"{processed} frames in {total:.1f} s ({processed / max(total, 1e-9):.1f} FPS){where}", file=sys.stderr)
    return 0


def adopt_remote_counts(frame: VideoFrame, reply: dict):
    """Takes the service's counts and count events (it tracked and counted) into the frame."""
    frame.counts = reply.get("counts")
    frame.events = [
        CountEvent(frame.time, frame.index, e["track_id"], e["label"], e["kind"], e["index"], e["direction"])
        for e in reply.get("events", ())
    ]


def frame_record(frame: VideoFrame) -> dict:
    record: dict = {"frame": frame.index, "time": round(frame.time, 3), "detections": frame.detections}
    if frame.counts is not None:
        record["counts"] = frame.counts
    return record


def open_writer(path: str, fps: float, width: int, height: int) -> cv2.VideoWriter:
    fourcc = cv2.VideoWriter_fourcc(*("MJPG" if path.lower().endswith(".avi") else "mp4v"))
    writer = cv2.VideoWriter(path, fourcc, fps if 1 <= fps <= 240 else 15, (width, height))
    if not writer.isOpened():
        raise OSError(f"cannot write video {path!r} (use .mp4 or .avi)")
    return writer


def show(frame) -> bool:
    """Shows a frame; False (and a hint, once) where OpenCV has no GUI or there is no display."""
    try:
        cv2.imshow("ssdlite", frame)
        return True
    except cv2.error:
        print(
            "no display available (headless OpenCV or no screen): continuing without a window; "
            "use --no-display and --output out.mp4",
            file=sys.stderr,
        )
        return False


if __name__ == "__main__":
    sys.exit(main())

"""Webcam demo: boxes and FPS on camera, video-file or stream frames, detected locally or by the service.

``python -m service.webcam --source 0|video.mp4|URL [--url http://host:8000] [--output out.mp4] [--no-display]``
reads frames from a camera index, a video file or a stream URL, detects objects either locally
(``--model``, default the zoo's person detector) or through a running service's WebSocket
(``--url``), draws boxes and FPS, and shows the result in a window and/or writes it to a video.
Headless machines: ``--no-display --output out.mp4`` (and ``--json`` for one JSON line per frame).
"""

import argparse
import contextlib
import json
import os
import sys
import time
from urllib.parse import urlencode, urlsplit, urlunsplit

import cv2

from ssdlite import Detector, draw_detections
from ssdlite.runtime import BACKENDS


class RemoteDetector:
    """Detection through a running service's ``/ws``: one JPEG frame out, one JSON answer back."""

    def __init__(self, url: str, score_threshold: float, jpeg_quality: int = 80, api_key: str | None = None):
        from websockets.exceptions import InvalidStatus
        from websockets.sync.client import connect

        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme not in ("http", "https", "ws", "wss"):
            raise ValueError(f"--url must be http(s)://host:port, got {url!r}")
        scheme = "wss" if parts.scheme in ("https", "wss") else "ws"
        query = urlencode({"score_threshold": score_threshold})
        self.endpoint = urlunsplit((scheme, parts.netloc, parts.path.rstrip("/") + "/ws", query, ""))
        self.jpeg_quality = jpeg_quality
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
        ok, jpeg = cv2.imencode(".jpg", frame_bgr, [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
        if not ok:
            raise ValueError("cannot encode the frame as JPEG")
        self.socket.send(jpeg.tobytes())
        reply = json.loads(self.socket.recv(timeout=30))
        if "error" in reply:
            raise ValueError(f"the service refused frame {reply.get('frame_id')}: {reply['error']}")
        return reply["detections"]

    def close(self):
        self._connection.close()


class LocalDetector:
    """Detection in this process with an ``ssdlite.Detector``."""

    def __init__(self, model: str, backend: str, score_threshold: float):
        self.detector = Detector.load(model, backend=backend)
        self.score_threshold = score_threshold

    def __call__(self, frame_bgr) -> list[dict]:
        rgb = cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2RGB)
        return self.detector.predict(rgb, score_threshold=self.score_threshold)

    def close(self):
        pass


def open_source(source: str) -> cv2.VideoCapture:
    capture = cv2.VideoCapture(int(source) if source.isdigit() else source)
    if not capture.isOpened():
        kind = "camera" if source.isdigit() else "video file or stream"
        raise OSError(f"cannot open {kind} {source!r}")
    return capture


def annotate(frame_bgr, detections: list[dict], fps: float):
    drawn = cv2.cvtColor(draw_detections(cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2RGB), detections), cv2.COLOR_RGB2BGR)
    text = f"{fps:5.1f} FPS  {len(detections)} detections"
    cv2.putText(drawn, text, (10, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (0, 0, 0), 4, cv2.LINE_AA)
    cv2.putText(drawn, text, (10, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (255, 255, 255), 2, cv2.LINE_AA)
    return drawn


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m service.webcam", description=__doc__.splitlines()[0])
    parser.add_argument("--source", default="0", help="camera index, video file or stream URL (default 0)")
    parser.add_argument("--url", help="detect through a running service (http://host:8000) instead of locally")
    parser.add_argument(
        "--api-key",
        default=os.environ.get("SSDLITE_API_KEY"),
        help="the service's API key, if it wants one (default: $SSDLITE_API_KEY)",
    )
    parser.add_argument("--model", default="tf-pedestrian", help="local model: zoo name or checkpoint/.onnx path")
    parser.add_argument(
        "--backend", choices=("auto", *BACKENDS), default="auto", help="local backend (auto: onnxruntime on the CPU)"
    )
    parser.add_argument("--score-threshold", type=float, default=0.5)
    parser.add_argument("--output", help="write the annotated video here (.mp4 or .avi)")
    parser.add_argument("--no-display", action="store_true", help="do not open a window")
    parser.add_argument("--json", action="store_true", help="print one JSON line of detections per frame")
    parser.add_argument("--max-frames", type=int, help="stop after this many frames")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not 0 <= args.score_threshold <= 1:
        print("error: --score-threshold must be between 0 and 1", file=sys.stderr)
        return 2
    try:
        capture = open_source(args.source)
        if args.url:
            detect = RemoteDetector(args.url, args.score_threshold, api_key=args.api_key)
        else:
            detect = LocalDetector(args.model, args.backend, args.score_threshold)
    except Exception as error:  # noqa: BLE001 - a bad source, URL or model ends the demo with its reason
        print(f"error: {error}", file=sys.stderr)
        return 2

    display = not args.no_display
    writer = None
    frames, fps, started = 0, 0.0, time.perf_counter()
    try:
        while args.max_frames is None or frames < args.max_frames:
            ok, frame = capture.read()
            if not ok:
                break
            tick = time.perf_counter()
            detections = detect(frame)
            elapsed = time.perf_counter() - tick
            fps = 1 / elapsed if frames == 0 else 0.9 * fps + 0.1 / max(elapsed, 1e-6)
            frames += 1
            if args.json:
                print(json.dumps({"frame": frames, "detections": detections}), flush=True)
            drawn = annotate(frame, detections, fps)
            if args.output:
                if writer is None:
                    writer = open_writer(args.output, capture, drawn.shape[1], drawn.shape[0])
                writer.write(drawn)
            if display:
                display = show(drawn)
                if display and cv2.waitKey(1) & 0xFF in (ord("q"), 27):
                    break
    except KeyboardInterrupt:
        pass
    except (ValueError, OSError, TimeoutError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    finally:
        capture.release()
        detect.close()
        if writer is not None:
            writer.release()
        if display:
            cv2.destroyAllWindows()
    if not frames:
        print(f"error: no frames could be read from {args.source!r}", file=sys.stderr)
        return 1
    total = time.perf_counter() - started
    where = f" -> {args.output}" if args.output else ""
    print(f"{frames} frames in {total:.1f} s ({frames / max(total, 1e-9):.1f} FPS){where}", file=sys.stderr)
    return 0


def open_writer(path: str, capture: cv2.VideoCapture, width: int, height: int) -> cv2.VideoWriter:
    fps = capture.get(cv2.CAP_PROP_FPS)
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

"""Shared helpers for the service tests: scripted detectors, test images, a served subprocess."""

import atexit
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench.bad_inputs import bad_inputs as bad_inputs  # the corpus lives in bench, shared with bench.soak
from bench.service import free_port, wait_until_ready
from ssdlite import Detector, build_model, get_config, save_checkpoint
from ssdlite.core.boxes import encode_boxes
from ssdlite.images import SAMPLE_PHOTOS

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = SAMPLE_PHOTOS
CLASS_NAMES = ["person", "car"]
SMALL_BODY_LIMIT = 2_000_000  # what the shared served process runs with


def scripted_detector(box=(0.25, 0.5, 0.75, 1.0), delay: float = 0.0, step=(0.0, 0.0), velocity=(0.0, 0.0)) -> Detector:
    """A Detector whose forward pass always "sees" one person at ``box`` (normalised x1, y1, x2, y2).

    ``delay`` seconds per call stand in for a slow model; ``step`` (normalised x, y) moves the box
    after each call; ``velocity`` (normalised x, y per second) moves it with the time since the first
    call since ``detector.walk_started`` was reset to ``None`` (after the warm-up, say), as a real
    object moves whenever the frames happen to be taken; ``detector.batch_sizes`` records each call.
    """
    config = get_config("ssdlite320_mobilenet_v2", num_classes=len(CLASS_NAMES) + 1, image_size=160)
    detector = Detector(None, config, CLASS_NAMES)
    anchors = detector.anchors
    detector.batch_sizes = []

    def outputs(box):
        target = torch.tensor(box, dtype=torch.float32)
        deltas = encode_boxes(target.expand(anchors.shape[0], 4), anchors, config.postprocess.box_weights)
        logits = torch.full((anchors.shape[0], config.num_classes), -10.0)
        logits[:, 0] = 10.0
        centre = (target[:2] + target[2:]) / 2
        best = torch.argmin((anchors[:, :2] - centre).norm(dim=1))
        logits[best, 0], logits[best, 1] = -10.0, 10.0
        return deltas, logits

    detector.walk_started = None

    def forward(batch):
        calls = len(detector.batch_sizes)
        detector.batch_sizes.append(batch.shape[0])
        if detector.walk_started is None:
            detector.walk_started = time.perf_counter()
        seconds = time.perf_counter() - detector.walk_started
        if delay:
            time.sleep(delay)
        n = batch.shape[0]
        shift = (step[0] * calls + velocity[0] * seconds, step[1] * calls + velocity[1] * seconds) * 2
        deltas, logits = outputs([v + d for v, d in zip(box, shift, strict=True)])
        return deltas.expand(n, -1, -1), logits.expand(n, -1, -1)

    detector.backend = forward
    return detector


def small_checkpoint(path: Path) -> Path:
    """A small random SSDLite checkpoint (fast to export and run) that knows CLASS_NAMES."""
    torch.manual_seed(0)
    model = build_model("ssdlite320_mobilenet_v2", num_classes=len(CLASS_NAMES) + 1, width_mult=0.5, image_size=160)
    return save_checkpoint(path, model.eval(), CLASS_NAMES)


def encode(image: np.ndarray | Image.Image, image_format: str = "JPEG", **options) -> bytes:
    image = Image.fromarray(image) if isinstance(image, np.ndarray) else image
    buffer = io.BytesIO()
    image.save(buffer, image_format, **options)
    return buffer.getvalue()


def photo(name: str = "astronaut.jpg") -> bytes:
    return (PHOTOS / name).read_bytes()


def photo_640x480(name: str = "astronaut.jpg") -> bytes:
    return encode(Image.open(PHOTOS / name).convert("RGB").resize((640, 480)), quality=90)


def read_raw_response(sock: socket.socket) -> tuple[int, dict]:
    """(status, JSON body) of one HTTP response read from a raw socket; Content-Length says where it ends."""
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"the server closed the connection after {received!r}")
        received += chunk
    head, body = received.split(b"\r\n\r\n", 1)
    lines = head.split(b"\r\n")
    length = next(int(line.split(b":", 1)[1]) for line in lines if line.lower().startswith(b"content-length:"))
    while len(body) < length and (chunk := sock.recv(65536)):
        body += chunk
    return int(head.split()[1]), json.loads(body)


class ServiceProcess:
    """``python -m service`` on 127.0.0.1 and a free port, for as long as the context lasts."""

    def __init__(self, model: str | os.PathLike, timeout: float = 120, **settings):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "SSDLITE_MODEL": str(model),
            "SSDLITE_PORT": str(self.port),
            "SSDLITE_HOST": "127.0.0.1",
            "SSDLITE_ACCESS_LOG": "false",
            "PYTHONUNBUFFERED": "1",
        }
        self.env.update({f"SSDLITE_{k.upper()}": str(v) for k, v in settings.items()})
        self.timeout = timeout
        self.log: list[str] = []

    def __enter__(self) -> "ServiceProcess":
        self.process = subprocess.Popen(
            [sys.executable, "-m", "service"],
            cwd=ROOT,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        threading.Thread(target=lambda: self.log.extend(self.process.stdout), daemon=True).start()
        try:
            wait_until_ready(self.process, self.url, self.timeout)
        except (RuntimeError, TimeoutError) as error:
            self.__exit__()
            raise type(error)(f"service {error}:\n{self.output}") from None
        return self

    def __exit__(self, *exc):
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    @property
    def output(self) -> str:
        return "".join(self.log)


_shared: dict[tuple, ServiceProcess] = {}


def shared_service(model: str | os.PathLike, **settings) -> ServiceProcess:
    """One served process per (model, settings) for the whole test session (each start costs seconds)."""
    key = (str(model), tuple(sorted(settings.items())))
    if key not in _shared or _shared[key].process.poll() is not None:
        server = ServiceProcess(model, **settings).__enter__()
        atexit.register(server.__exit__)
        _shared[key] = server
    return _shared[key]

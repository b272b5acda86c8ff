"""Routes: detection over HTTP, the WebSocket stream, operations endpoints and the page."""

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.datastructures import UploadFile

from ssdlite import SSDLiteError, draw_detections
from ssdlite.runtime import UnknownClassError, check_classes
from ssdlite.video import DEFAULT_TRACKER, Counter, CountingError, Tracker, TrackerOptions, regions

from .auth import SUBPROTOCOL
from .decoding import ImageError, decode_image, encode_jpeg
from .engine import DetectOptions, EngineStoppedError, InferenceError, QueueFullError
from .runtime import Runtime, RuntimeDep
from .schemas import BatchResponse, DetectResponse, Health, ModelInfo, Problem

STATIC_DIR = Path(__file__).parent / "static"

# One router per access rule: create_app puts the API-key guard on the first four as configured.
detection = APIRouter(tags=["detection"])
stream = APIRouter(tags=["stream"])
model = APIRouter(tags=["operations"])
monitoring = APIRouter(tags=["operations"])
health = APIRouter(tags=["operations"])
page = APIRouter(include_in_schema=False)

ScoreThreshold = Annotated[
    float | None, Query(ge=0, le=1, description="minimum score (default: the server's SSDLITE_SCORE_THRESHOLD)")
]
MaxDetections = Annotated[int | None, Query(ge=1, le=1000, description="most detections per image")]
Classes = Annotated[
    list[str] | None, Query(description="class names to keep, repeated or comma-separated (default: all)")
]

Track = Annotated[bool, Query(description="give each object a track_id that stays while it stays in view")]
TrackerName = Annotated[str, Query(description="ocsort, bytetrack, sort or botsort (with track=true)")]
Lines = Annotated[
    list[str] | None, Query(description="count crossings of x1,y1,x2,y2 (pixels or 0-1 fractions), repeatable")
]
Zones = Annotated[list[str] | None, Query(description="count objects in x1,y1,x2,y2,x3,y3,... (repeatable)")]

IMAGE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"file": {"type": "string", "format": "binary"}},
                    "required": ["file"],
                }
            },
            "image/*": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}
BATCH_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["files"],
                    "properties": {"files": {"type": "array", "items": {"type": "string", "format": "binary"}}},
                }
            }
        },
    }
}
ERRORS = {status: {"model": Problem} for status in (401, 408, 413, 415, 422, 500, 503)}


@dataclass(frozen=True)
class DetectQuery:
    """The detection options a request's query string carries, as given (``None``: not given)."""

    score_threshold: float | None
    max_detections: int | None
    classes: tuple[str, ...] | None


async def detect_query(  # async: FastAPI runs a plain def dependency on its thread pool, a hop per request
    score_threshold: ScoreThreshold = None, max_detections: MaxDetections = None, classes: Classes = None
) -> DetectQuery:
    names = tuple(dict.fromkeys(n.strip() for item in classes or () for n in item.split(",") if n.strip()))
    return DetectQuery(score_threshold, max_detections, names or None)


DetectQueryDep = Annotated[DetectQuery, Depends(detect_query)]


def resolve_options(runtime: Runtime, query: DetectQuery) -> DetectOptions:
    """Fills in the server defaults and checks class names against the model's.

    Raises:
        UnknownClassError: a class name the model does not know.
    """
    if query.classes:
        check_classes(query.classes, runtime.detector.class_names)
    settings = runtime.settings
    return DetectOptions(
        score_threshold=settings.score_threshold if query.score_threshold is None else query.score_threshold,
        max_detections=settings.max_detections if query.max_detections is None else query.max_detections,
        classes=query.classes,
    )


async def detect_options(runtime: RuntimeDep, query: DetectQueryDep) -> DetectOptions:
    """The options of an HTTP detection request (422 for an unknown class name)."""
    try:
        return resolve_options(runtime, query)
    except UnknownClassError as error:
        raise HTTPException(422, str(error)) from None


DetectOptionsDep = Annotated[DetectOptions, Depends(detect_options)]


async def run_detection(runtime: Runtime, data: bytes, options: DetectOptions):
    """Decodes (on the decode threads) and detects (on the inference thread); returns (image, result, timing)."""
    if not runtime.ready:
        raise EngineStoppedError("the model is not loaded yet or the server is shutting down")
    started = time.perf_counter()
    loop = asyncio.get_running_loop()
    image = await loop.run_in_executor(runtime.decoder, decode_image, data, runtime.settings.max_pixels)
    decoded = time.perf_counter()
    result = await runtime.engine.detect(image, options)
    timing = {
        "decode": round((decoded - started) * 1000, 2),
        "queue": round(result.queue_ms, 2),
        "inference": round(result.inference_ms, 2),
        "total": round((time.perf_counter() - started) * 1000, 2),
        "batch_size": result.batch_size,
    }
    return image, result, timing


async def read_images(request: Request, field: str, many: bool, max_files: int) -> list[tuple[str | None, bytes]]:
    """The uploaded images: multipart parts named ``field`` (``file`` also works), or the raw body."""
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        if many:
            raise HTTPException(415, f"send the images as multipart/form-data file parts named '{field}'")
        return [(None, await request.body())]
    names = (field, "file") if many else (field,)
    async with request.form(max_files=max_files, max_fields=100) as form:
        uploads = [value for key, value in form.multi_items() if key in names and isinstance(value, UploadFile)]
        if not uploads:
            plain = [key for key, value in form.multi_items() if key in names]
            problem = "is a text field, not a file" if plain else "is missing"
            raise HTTPException(422, f"multipart field '{field}' {problem}; upload the image as a file part")
        if not many and len(uploads) > 1:
            raise HTTPException(422, f"one image per request in '{field}'; use /detect/batch for several")
        return [(upload.filename, await upload.read()) for upload in uploads]


def render_response(image, detections, quality: int) -> Response:
    jpeg = encode_jpeg(draw_detections(image, detections), quality)
    return Response(jpeg, media_type="image/jpeg", headers={"X-Detections": str(len(detections))})


@detection.post(
    "/detect",
    response_model=DetectResponse,
    responses={**ERRORS, 200: {"content": {"image/jpeg": {}}, "description": "JSON, or a JPEG with render=true"}},
    openapi_extra=IMAGE_BODY,
)
async def detect(
    request: Request,
    runtime: RuntimeDep,
    options: DetectOptionsDep,
    render: Annotated[bool, Query(description="answer with the image and its boxes drawn, as JPEG")] = False,
):
    """Detects objects in one image: a multipart field ``file``, or the raw image as the body.

    The image's own bytes decide its format (JPEG, PNG, WebP, BMP, TIFF). Boxes are
    ``[x1, y1, x2, y2]`` in the uploaded image's pixels, after its EXIF orientation.
    """
    ((_, data),) = await read_images(request, "file", many=False, max_files=runtime.settings.max_files)
    image, result, timing = await run_detection(runtime, data, options)
    if render:
        loop = asyncio.get_running_loop()
        quality = runtime.settings.jpeg_quality
        return await loop.run_in_executor(runtime.decoder, render_response, image, result.detections, quality)
    return {
        "width": image.shape[1],
        "height": image.shape[0],
        "model": runtime.model_info.name,
        "detections": result.detections,
        "timing_ms": timing,
    }


@detection.post(
    "/detect/render",
    response_class=Response,
    responses={**ERRORS, 200: {"content": {"image/jpeg": {}}, "description": "the image with boxes drawn"}},
    openapi_extra=IMAGE_BODY,
)
async def detect_render(request: Request, runtime: RuntimeDep, options: DetectOptionsDep):
    """Like ``POST /detect?render=true``: the image with its detections drawn, as JPEG."""
    return await detect(request, runtime, options, render=True)


@detection.post("/detect/batch", response_model=BatchResponse, responses=ERRORS, openapi_extra=BATCH_BODY)
async def detect_batch(request: Request, runtime: RuntimeDep, options: DetectOptionsDep):
    """Detects objects in several images (multipart fields ``files``); one bad image fails the request."""
    uploads = await read_images(request, "files", many=True, max_files=runtime.settings.max_files)

    async def one(index: int, filename: str | None, data: bytes):
        try:
            image, result, timing = await run_detection(runtime, data, options)
        except ImageError as error:
            raise ImageError(error.status, f"files[{index}] ({filename}): {error.detail}") from None
        return {
            "filename": filename,
            "width": image.shape[1],
            "height": image.shape[0],
            "detections": result.detections,
            "timing_ms": timing,
        }

    tasks = [asyncio.ensure_future(one(i, name, data)) for i, (name, data) in enumerate(uploads)]
    try:
        results = await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
    return {"model": runtime.model_info.name, "results": results}


class StreamTracking:
    """One connection's tracker and counts (``/ws?track=true``): nothing is shared between connections."""

    def __init__(self, tracker: str, score_threshold: float, lines: list[str], zones: list[str]):
        line_regions, zone_regions = regions(lines, zones)
        self.tracker = Tracker(TrackerOptions(tracker=tracker, track_threshold=score_threshold))
        self.counter = Counter(line_regions, zone_regions, self.tracker.options.lost_seconds)

    def update(self, reply: dict, frame_id: int, arrived: float, image):
        """Replaces the reply's detections with the tracked ones and adds the counts.

        Frames dropped before detection are gaps in ``arrived``, the tracker's clock; ``image`` is
        for BoT-SORT's camera-motion compensation.
        """
        reply["detections"] = self.tracker.update(reply["detections"], arrived, image)
        if self.counter:
            events = self.counter.update(reply["detections"], frame_id, arrived, reply["width"], reply["height"])
            reply["counts"] = self.counter.counts(arrived)
            reply["events"] = [
                {"track_id": e.track_id, "label": e.label, "kind": e.kind, "index": e.index, "direction": e.direction}
                for e in events
            ]


@stream.websocket("/ws")
async def detect_stream(
    websocket: WebSocket,
    runtime: RuntimeDep,
    query: DetectQueryDep,
    track: Track = False,
    tracker: TrackerName = DEFAULT_TRACKER,
    line: Lines = None,
    zone: Zones = None,
):
    """Binary JPEG frames in, one JSON message per answered frame out.

    Frames are numbered from 1 in arrival order (``frame_id``). While a frame is being
    detected only the newest waiting frame is kept: older ones are dropped (counted in
    ``dropped_frames``), so latency stays bounded when frames come faster than inference.
    A bad frame gets ``{"frame_id", "status", "error"}`` and the stream goes on.
    With ``track=true`` each detection carries ``track_id`` and, with ``line``/``zone``, each
    reply carries ``counts`` and the frame's count ``events``; bad tracking options get one
    ``{"status": 422, "error"}`` message before any frame, and the connection is closed.
    """
    # A browser that offered subprotocols (the API key travels as one) needs one selected back.
    await websocket.accept(subprotocol=SUBPROTOCOL if SUBPROTOCOL in websocket.scope.get("subprotocols", []) else None)
    tracking: StreamTracking | None = None
    try:
        options = resolve_options(runtime, query)
        if track:
            tracking = StreamTracking(tracker, options.score_threshold, line or [], zone or [])
            options = replace(options, score_threshold=tracking.tracker.options.detection_threshold)
        elif line or zone:
            raise CountingError("line= and zone= count tracked objects: add track=true")
    except SSDLiteError as error:  # an unknown class, tracker, or a bad line or zone; the library missing
        await websocket.send_json({"status": 422, "error": str(error)})
        await websocket.close(1008)
        return
    frames = runtime.metrics.ws_frames
    latest: tuple[int, bytes, float] | None = None
    received = dropped = 0
    closed = False
    wake = asyncio.Event()

    async def receive_frames():
        nonlocal latest, received, dropped, closed
        try:
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    return
                received += 1
                if latest is not None:
                    dropped += 1
                    frames.labels("dropped").inc()
                payload = message.get("bytes")
                if payload is None:  # a text message: answered with an error in turn
                    payload = b""
                latest = (received, payload, time.perf_counter())
                wake.set()
        finally:
            closed = True
            wake.set()

    receiver = asyncio.create_task(receive_frames())
    detection: asyncio.Future | None = None
    try:
        while True:
            await wake.wait()
            wake.clear()
            if closed:
                break
            if latest is None:
                continue
            frame_id, data, arrived = latest
            latest = None
            reply: dict = {"frame_id": frame_id}
            try:
                if not data:
                    raise ImageError(415, "send each frame as one binary message holding a JPEG (or PNG/WebP)")
                detection = asyncio.ensure_future(run_detection(runtime, data, options))
                await asyncio.wait((detection, receiver), return_when=asyncio.FIRST_COMPLETED)
                if not detection.done():  # the client left: its frame is not worth an inference
                    detection.cancel()
                    break
                image, result, timing = detection.result()
                reply.update(
                    width=image.shape[1], height=image.shape[0], detections=result.detections, timing_ms=timing
                )
                if tracking is not None:
                    try:
                        tracking.update(reply, frame_id, arrived, image)
                    except CountingError as error:  # a zone outside this frame: the stream cannot count
                        await websocket.send_json({"frame_id": frame_id, "status": 422, "error": str(error)})
                        await websocket.close(1008)
                        break
                frames.labels("answered").inc()
            except ImageError as error:
                reply.update(status=error.status, error=error.detail)
                frames.labels("error").inc()
            except (QueueFullError, EngineStoppedError) as error:
                reply.update(status=503, error=str(error))
                frames.labels("error").inc()
            except InferenceError as error:
                reply.update(status=500, error=str(error))
                frames.labels("error").inc()
            reply.update(latency_ms=round((time.perf_counter() - arrived) * 1000, 2), dropped_frames=dropped)
            await websocket.send_text(json.dumps(reply))
    except (WebSocketDisconnect, RuntimeError):
        pass  # the client went away mid-reply
    finally:
        if detection is not None:
            detection.cancel()
        receiver.cancel()
        with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect, RuntimeError):
            await receiver


@health.get("/healthz", response_model=Health)
async def healthz():
    """Liveness: the process answers."""
    return {"status": "ok"}


@health.get("/readyz", response_model=Health, responses={503: {"model": Health}})
async def readyz(request: Request):
    """Readiness: the model is loaded and warmed up, and the server is not shutting down."""
    runtime = getattr(request.state, "runtime", None)
    if runtime is not None and runtime.ready:
        return {"status": "ready"}
    return JSONResponse({"status": "not ready"}, 503)


@model.get("/model", response_model=ModelInfo, responses={401: {"model": Problem}, 503: {"model": Problem}})
async def model_info(runtime: RuntimeDep):
    """The served model: name, classes, input size, backend."""
    return runtime.model_info


@monitoring.get("/metrics", response_class=Response, responses={401: {"model": Problem}, 503: {"model": Problem}})
async def metrics(runtime: RuntimeDep):
    """Prometheus text format."""
    body, content_type = runtime.metrics.render()
    return Response(body, media_type=content_type)


@page.get("/")
async def index():
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

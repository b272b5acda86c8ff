"""Inference engine: a bounded queue in front of one inference thread, with dynamic batching.

Like Triton's dynamic batcher, the worker takes whatever is queued (up to ``max_batch_size``)
the moment it is free, so an idle server never waits; ``max_wait_ms`` optionally holds a
non-full batch open a little longer. A full queue refuses new work at once (HTTP 503) rather
than letting latency grow without bound. With ``max_batch_size=1`` this is simply a bounded
queue in front of one inference thread (``settings.py`` says what batching gained here).
"""

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np


class QueueFullError(RuntimeError):
    """The engine already has ``queue_size`` images waiting."""


class EngineStoppedError(RuntimeError):
    """The engine is not running (starting up or shutting down)."""


class InferenceError(RuntimeError):
    """The model raised on a batch; every request of that batch gets this, the next batch runs as usual."""


logger = logging.getLogger("service.engine")


@dataclass(frozen=True)
class DetectOptions:
    score_threshold: float
    max_detections: int
    classes: tuple[str, ...] | None = None


@dataclass
class Result:
    detections: list[dict]
    queue_ms: float
    inference_ms: float
    batch_size: int


@dataclass
class _Request:
    image: np.ndarray
    options: DetectOptions
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)


class InferenceEngine:
    """Serialises inference on one thread and batches concurrent requests.

    Args:
        predict_batch: ``Detector.predict_batch``-like callable (images, **options) -> detections.
        max_batch_size: most images per call.
        queue_size: most images waiting; more raise :class:`QueueFullError`.
        max_wait_ms: how long to hold a non-full batch open for more images (0: never).
        on_batch: called with (batch size, seconds) after each inference call (metrics).
        on_queue_depth: called with the queue depth whenever it changes (metrics).
    """

    def __init__(
        self,
        predict_batch: Callable[..., list[list[dict]]],
        *,
        max_batch_size: int = 1,
        queue_size: int = 32,
        max_wait_ms: float = 0.0,
        on_batch: Callable[[int, float], None] | None = None,
        on_queue_depth: Callable[[int], None] | None = None,
    ):
        self.predict_batch = predict_batch
        self.max_batch_size = max_batch_size
        self.queue_size = queue_size
        self.max_wait = max_wait_ms / 1000
        self._on_batch = on_batch or (lambda size, seconds: None)
        self._on_queue_depth = on_queue_depth or (lambda depth: None)
        self._queue: asyncio.Queue[_Request] | None = None
        self._worker: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._in_flight: list[_Request] = []

    @property
    def running(self) -> bool:
        return self._worker is not None and not self._worker.done()

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize() if self._queue else 0

    async def start(self):
        self._queue = asyncio.Queue(self.queue_size)
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="inference")
        self._worker = asyncio.create_task(self._run(), name="inference-worker")

    async def stop(self):
        """Stops the worker; requests still queued or in inference fail with EngineStoppedError."""
        if self._worker:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        waiting = list(self._in_flight)
        while self._queue and not self._queue.empty():
            waiting.append(self._queue.get_nowait())
        for request in waiting:
            if not request.future.done():
                request.future.set_exception(EngineStoppedError("the server is shutting down"))
        if self._executor:
            self._executor.shutdown(wait=True)
        self._worker = self._executor = None
        self._in_flight = []

    async def detect(self, image: np.ndarray, options: DetectOptions) -> Result:
        """Queues one image and waits for its detections.

        Raises:
            QueueFullError: too many images are waiting already.
            EngineStoppedError: the engine is not running.
        """
        if not self.running:
            raise EngineStoppedError("the model is not loaded yet or the server is shutting down")
        request = _Request(image, options, asyncio.get_running_loop().create_future())
        try:
            self._queue.put_nowait(request)
        except asyncio.QueueFull:
            raise QueueFullError(f"{self.queue_size} images are already waiting") from None
        self._on_queue_depth(self._queue.qsize())
        return await request.future

    async def _run(self):
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            self._on_queue_depth(self._queue.qsize())
            # A client that went away cancelled its future: skip its image.
            self._in_flight = batch = [request for request in batch if not request.future.done()]
            if not batch:
                continue
            started = time.perf_counter()
            try:
                outputs = await loop.run_in_executor(self._executor, self._infer, batch)
            except Exception as error:  # noqa: BLE001 - reported to each waiting request
                self._in_flight = []
                logger.exception("inference failed on a batch of %d image(s)", len(batch))
                detail = f"inference failed ({type(error).__name__}); the server log has the details"
                for request in batch:
                    if not request.future.done():
                        request.future.set_exception(InferenceError(detail))
                continue
            self._in_flight = []  # (left set when stop() cancels us here: it fails them)
            elapsed = time.perf_counter() - started
            self._on_batch(len(batch), elapsed)
            for request, detections in zip(batch, outputs, strict=True):
                if not request.future.done():
                    request.future.set_result(
                        Result(detections, (started - request.enqueued) * 1000, elapsed * 1000, len(batch))
                    )

    async def _collect(self) -> list[_Request]:
        batch = [await self._queue.get()]
        deadline = time.perf_counter() + self.max_wait
        while len(batch) < self.max_batch_size:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                break
            # Polling, not wait_for(queue.get()): on Python 3.11 a timeout can lose a dequeued item.
            await asyncio.sleep(min(remaining, 0.001))
        return batch

    def _infer(self, batch: Sequence[_Request]) -> list[list[dict]]:
        # One call per distinct set of options; in practice a batch shares them.
        outputs: list[list[dict] | None] = [None] * len(batch)
        groups: dict[DetectOptions, list[int]] = {}
        for index, request in enumerate(batch):
            groups.setdefault(request.options, []).append(index)
        for options, indices in groups.items():
            results = self.predict_batch(
                [batch[i].image for i in indices],
                score_threshold=options.score_threshold,
                max_detections=options.max_detections,
                classes=options.classes,
            )
            for i, detections in zip(indices, results, strict=True):
                outputs[i] = detections
        return outputs

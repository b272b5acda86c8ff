"""Inference engine: a bounded queue in front of the inference threads, with dynamic batching.

Like Triton's dynamic batcher, a worker takes whatever is queued (up to ``max_batch_size``)
the moment it is free, so an idle server never waits; ``max_wait_ms`` optionally holds a
non-full batch open a little longer. A full queue refuses new work at once (HTTP 503) rather
than letting latency grow without bound. With ``max_batch_size=1`` and one worker this is simply
a bounded queue in front of one inference thread. Several workers (``workers``) run inference
calls at once from the one queue, like Triton's model instances: on a CPU, two ONNX Runtime calls
at once keep two cores busy, where one call at a time leaves a core idle during its pre- and
postprocessing (``settings.py`` says what each choice measured).
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
    """Runs inference on ``workers`` threads and batches concurrent requests.

    One dispatcher takes batches off the queue and hands each to an idle worker; a worker is a
    thread of its own, and the one that finished last is the one picked next (a lone stream of
    requests stays on one thread and its warm caches: alternating between two threads cost a
    WebSocket stream 7% of its frames per second here).

    Args:
        predict_batch: ``Detector.predict_batch``-like callable (images, **options) -> detections.
        max_batch_size: most images per call.
        queue_size: most images waiting; more raise :class:`QueueFullError`.
        max_wait_ms: how long to hold a non-full batch open for more images (0: never).
        on_batch: called with (batch size, seconds) after each inference call (metrics).
        on_queue_depth: called with the queue depth whenever it changes (metrics).
        workers: inference calls at once (``predict_batch`` must be thread-safe for more than 1, as
            ONNX Runtime sessions are).
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
        workers: int = 1,
    ):
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.predict_batch = predict_batch
        self.workers = workers
        self.max_batch_size = max_batch_size
        self.queue_size = queue_size
        self.max_wait = max_wait_ms / 1000
        self._on_batch = on_batch or (lambda size, seconds: None)
        self._on_queue_depth = on_queue_depth or (lambda depth: None)
        self._queue: asyncio.Queue[_Request] | None = None
        self._worker: asyncio.Task | None = None  # the dispatcher
        self._executors: list[ThreadPoolExecutor] = []  # one thread per worker
        self._idle: list[int] = []  # workers free to run a batch, the last one freed on top
        self._freed = asyncio.Event()
        self._inferences: set[asyncio.Task] = set()
        self._in_flight: list[list[_Request]] = []  # per worker: the batch it is running

    @property
    def running(self) -> bool:
        return self._worker is not None and not self._worker.done()

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize() if self._queue else 0

    async def start(self):
        self._queue = asyncio.Queue(self.queue_size)
        self._executors = [ThreadPoolExecutor(1, thread_name_prefix=f"inference{slot}") for slot in range(self.workers)]
        self._idle = list(reversed(range(self.workers)))
        self._freed = asyncio.Event()
        self._in_flight = [[] for _ in range(self.workers)]
        self._worker = asyncio.create_task(self._run(), name="inference-dispatcher")

    async def stop(self):
        """Stops the workers; requests still queued or in inference fail with EngineStoppedError."""
        tasks = [task for task in (self._worker, *self._inferences) if task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        waiting = [request for batch in self._in_flight for request in batch]
        while self._queue and not self._queue.empty():
            waiting.append(self._queue.get_nowait())
        for request in waiting:
            if not request.future.done():
                request.future.set_exception(EngineStoppedError("the server is shutting down"))
        for executor in self._executors:
            executor.shutdown(wait=True)
        self._worker, self._executors, self._idle = None, [], []
        self._inferences = set()
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
        while True:
            while not self._idle:
                self._freed.clear()
                await self._freed.wait()
            batch = await self._collect()
            self._on_queue_depth(self._queue.qsize())
            # A client that went away cancelled its future: skip its image.
            batch = [request for request in batch if not request.future.done()]
            if not batch:
                continue
            slot = self._idle.pop()
            self._in_flight[slot] = batch
            task = asyncio.create_task(self._infer_on(slot, batch), name=f"inference-{slot}")
            self._inferences.add(task)
            task.add_done_callback(self._inferences.discard)

    async def _infer_on(self, slot: int, batch: list[_Request]):
        started = time.perf_counter()
        try:
            outputs = await asyncio.get_running_loop().run_in_executor(self._executors[slot], self._infer, batch)
        except asyncio.CancelledError:
            raise  # stop(): the batch stays in _in_flight, and stop() fails it
        except Exception as error:  # noqa: BLE001 - reported to each waiting request
            self._release(slot)
            logger.exception("inference failed on a batch of %d image(s)", len(batch))
            detail = f"inference failed ({type(error).__name__}); the server log has the details"
            for request in batch:
                if not request.future.done():
                    request.future.set_exception(InferenceError(detail))
            return
        self._release(slot)
        elapsed = time.perf_counter() - started
        self._on_batch(len(batch), elapsed)
        for request, detections in zip(batch, outputs, strict=True):
            if not request.future.done():
                request.future.set_result(
                    Result(detections, (started - request.enqueued) * 1000, elapsed * 1000, len(batch))
                )

    def _release(self, slot: int):
        self._in_flight[slot] = []
        self._idle.append(slot)
        self._freed.set()

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

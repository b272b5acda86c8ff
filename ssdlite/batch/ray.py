"""Corpus detection on Ray Data: decoding in Ray tasks, detection in a pool of actors, one model each.

``ray_detect`` yields the same :class:`~ssdlite.batch.records.Record` and
:class:`~ssdlite.batch.records.Problem` values as the local runner, in any order. It needs the
``ray`` extra (``pip install 'ssdlite[ray]'``); ``ssdlite detect`` imports this module for ``--ray`` only.
Model and image paths are made absolute, so on a multi-node cluster every node must see them
(a shared filesystem) and have ssdlite installed.
"""

import contextlib
import dataclasses
import json
import logging
import math
import os
import re
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import ray
import ray.data
import torch
from ray.data import ActorPoolStrategy, TaskPoolStrategy
from ray.util.debug import log_once

from ..errors import SSDLiteError
from ..images import read_image
from ..runtime import Detector, check_classes, model_file
from ..runtime.loading import choose_backend
from .records import Problem, Record, Source

logger = logging.getLogger(__name__)

# What a row that could not be decoded carries instead of pixels (Ray columns need a value).
_NO_IMAGE = np.zeros((1, 1, 3), np.uint8)

# A read task decodes this many inference batches: each Ray task costs a fixed overhead, and on 2 CPUs
# read tasks of 1 batch (8 images) capped a run at ~60 images/s where tasks of 4 batches reached ~80-130.
_BATCHES_PER_READ = 4
# Thousands of blocks would only add scheduling overhead; past this, blocks grow instead.
_MAX_BLOCKS = 2000

# How an ssdlite error raised on a worker shows in the traceback text Ray sends back.
_WORKER_ERROR = re.compile(r"^ssdlite(?:\.\w+)*\.\w+: (.+)$", re.MULTILINE)


class RaySetupError(SSDLiteError, ValueError):
    """Inputs, options or a Ray cluster that :func:`ray_detect` cannot run with."""


class RayWorkerError(SSDLiteError, RuntimeError):
    """An ssdlite error raised on a Ray worker, such as a model file the detector actors cannot load."""


def read_row(row: dict[str, Any]) -> dict[str, Any]:
    """Decodes the image of one ``{"index", "path", "key", "name"}`` row (a Ray Data ``map`` function).

    Args:
        row: ``index`` (int), ``path`` (absolute path to read), ``key`` (``Source.key``), ``name``.

    Returns:
        ``index``, ``key``, ``name``, ``image`` (RGB uint8 ``[H, W, 3]``) and ``error``: ``""``, or the
        reason the file could not be read, in which case ``image`` is a 1x1 placeholder.
    """
    result = {"index": row["index"], "key": row["key"], "name": row["name"]}
    try:
        return {**result, "image": read_image(row["path"]), "error": ""}
    except (OSError, ValueError) as error:
        # Name the file as the user gave it, as the local runner does, not by its absolute path.
        message = str(error).replace(str(row["path"]), str(row["key"]))
        return {**result, "image": _NO_IMAGE, "error": message}


class RayDetector:
    """Detects objects in batches of decoded rows; a callable class for ``Dataset.map_batches``.

    Ray Data creates one per actor, so each actor loads the model once.

    Args:
        model: zoo name or model file (see :meth:`ssdlite.Detector.load`).
        backend: ``"torch"``, ``"onnxruntime"``, ``"auto"`` or ``None`` (the file's own).
        device: ``"cpu"``, ``"cuda"``...
        threads: inference threads of this actor.
        score_threshold: minimum score (``None``: the model's default).
        max_detections: detections per image (``None``: the model's default).
        classes: class names to keep (``None``: all).
    """

    def __init__(
        self,
        model: str | os.PathLike,
        backend: str | None,
        device: str,
        threads: int | None,
        score_threshold: float | None,
        max_detections: int | None,
        classes: Sequence[str] | None,
    ):
        self.detector = Detector.load(model, backend=backend, device=device, threads=threads)
        if classes is not None:
            check_classes(classes, self.detector.class_names)  # fails the run now, not on every batch
        self.score_threshold = score_threshold
        self.max_detections = max_detections
        self.classes = list(classes) if classes is not None else None

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Detects on the rows of ``batch`` whose ``error`` is empty; passes the others through.

        Args:
            batch: columns ``index``, ``key``, ``name``, ``image``, ``error`` (see :func:`read_row`).

        Returns:
            Columns ``index``, ``key``, ``name``, ``width``, ``height``, ``detections`` (a JSON list of
            ``Detector.predict`` dicts; ``""`` for a row with an error) and ``error``.
        """
        count = len(batch["index"])
        readable = [i for i in range(count) if not batch["error"][i]]
        images = [batch["image"][i] for i in readable]
        found = self.detector.predict_batch(
            images,
            score_threshold=self.score_threshold,
            max_detections=self.max_detections,
            classes=self.classes,
        )
        width = np.zeros(count, np.int64)
        height = np.zeros(count, np.int64)
        detections = np.full(count, "", dtype=object)
        for i, image, dets in zip(readable, images, found, strict=True):
            height[i], width[i] = image.shape[:2]
            detections[i] = json.dumps(dets)
        return {
            "index": batch["index"],
            "key": batch["key"],
            "name": batch["name"],
            "width": width,
            "height": height,
            "detections": detections,
            "error": batch["error"],
        }


@dataclasses.dataclass(frozen=True)
class Pool:
    """How :func:`ray_detect` spreads a run over a Ray cluster's CPUs (see :func:`pool_for`)."""

    actors: int  # detector actors, one model each
    actor_cpus: float  # the CPUs each actor asks Ray for
    threads: int  # inference threads per actor, unless the caller gives them
    read_tasks: int  # read (decode) tasks running at once
    read_cpus: float  # the CPUs each read task asks Ray for


def pool_for(cpus: float, workers: int | None = None) -> Pool:
    """Sizes the detector actors and the read tasks for a Ray cluster of ``cpus`` CPUs.

    Args:
        cpus: the CPUs ``ray.cluster_resources()`` reports.
        workers: detector actors asked for (default: one per 2 CPUs); at most the CPUs.
    """
    # An actor holds its CPUs for the whole run, and the read tasks need CPU too: on a 2-CPU Ray,
    # 2 actors at 1 CPU each left none for reading and the run hung. So the actors ask for half the
    # CPUs between them and the read tasks for at most the rest. The read requests must also differ
    # from the actors': Ray Data fuses a task map into the next actor map when their resources match,
    # and each actor would then decode and infer in turn instead of decoding alongside.
    # The requests are scheduling shares, not limits: an actor runs CPUs / actors inference threads,
    # its share of the machine, and one read task per 4 CPUs keeps up (decoding a photo costs about
    # a quarter of detecting on it), without a Python process per read slot importing torch at start.
    # An actor per 2 CPUs by default: ONNX Runtime gains little past 2 threads on SSDLite, so more
    # actors beat more threads.
    actors = max(1, min(workers or int(cpus // 2), int(cpus)))
    actor_cpus = cpus / (2 * actors)
    return Pool(
        actors=actors,
        actor_cpus=actor_cpus,
        threads=max(1, int(cpus // actors)),
        read_tasks=max(1, int(cpus // 4)),
        read_cpus=min(0.5, actor_cpus / 2),
    )


def ray_detect(
    sources: Sequence[Source],
    *,
    model: str | os.PathLike,
    backend: str | None = None,
    device: str = "cpu",
    threads: int | None = None,
    score_threshold: float | None = None,
    max_detections: int | None = None,
    classes: Sequence[str] | None = None,
    batch_size: int = 8,
    address: str | None = None,
    workers: int | None = None,
    num_cpus: int | None = None,
) -> Iterator[Record | Problem]:
    """Detects objects in image files on Ray Data; yields one Record or Problem per source, in any order.

    Uses the Ray this process is already connected to, else joins ``address`` (or ``$RAY_ADDRESS``),
    else starts a local Ray, which it shuts down when done. Sources, options and the model are
    checked (and a zoo model fetched) before this returns, so setup errors are raised here.

    Args:
        sources: image files (a video frame cannot be read on Ray).
        model: zoo name or model file.
        backend: as :meth:`ssdlite.Detector.load`.
        device: as :meth:`ssdlite.Detector.load`; a CUDA device spreads the cluster's GPUs over the actors.
        threads: inference threads per actor (default: the actor's share of the cluster's CPUs).
        score_threshold: minimum score (default: the model's).
        max_detections: detections per image (default: the model's).
        classes: class names to keep (default: all).
        batch_size: images per inference call.
        address: Ray cluster to join (default: ``$RAY_ADDRESS``, else a local Ray).
        workers: detector actors (default: half the cluster's CPUs, at least 1); at most the CPUs.
        num_cpus: CPUs of a local Ray that this call starts (default: all cores).

    Raises:
        RaySetupError: a video frame among the sources, a bad option, or no usable Ray cluster.
        ModelLoadError, ZooError: the model or backend cannot be used.
    """
    if any(source.frame is not None for source in sources):
        raise RaySetupError("--ray reads image files; detect video frames without --ray")
    if batch_size < 1:
        raise RaySetupError(f"batch size must be at least 1, got {batch_size}")
    if workers is not None and workers < 1:
        raise RaySetupError(f"Ray workers must be at least 1, got {workers}")
    if not sources:
        return iter(())
    backend, device = choose_backend(model, backend, str(device))
    # Fetched here once, not by every actor at the same time.
    path, _ = model_file(model)
    options = {
        "model": str(Path(path).resolve()),
        "backend": backend,
        "device": device,
        "threads": threads,
        "score_threshold": score_threshold,
        "max_detections": max_detections,
        "classes": list(classes) if classes is not None else None,
    }
    return _run(list(sources), options, batch_size, address, workers, num_cpus)


def _run(
    sources: list[Source],
    options: dict[str, Any],
    batch_size: int,
    address: str | None,
    workers: int | None,
    num_cpus: int | None,
) -> Iterator[Record | Problem]:
    started = _connect(address, num_cpus)
    try:
        dataset = _dataset(sources, options, batch_size, workers)
        with _quiet_ray_data():
            for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
                yield from _results(batch)
    except ray.exceptions.RayError as error:
        # Ray sends a worker's exception back as traceback text; an ssdlite error in it is the
        # user's to fix (a model the actors cannot load, unknown classes): say it on one line.
        found = _WORKER_ERROR.search(str(error))
        if found is None:
            raise
        raise RayWorkerError(found.group(1)) from None
    finally:
        if started:
            ray.shutdown()  # stops a local Ray; only disconnects from a cluster


def _connect(address: str | None, num_cpus: int | None) -> bool:
    """Joins ``address`` or starts a local Ray unless already connected; True when it called ``ray.init``."""
    if ray.is_initialized():
        return False
    target = address or os.environ.get("RAY_ADDRESS") or None
    # Workers' output stays in Ray's session logs; the driver shows Ray's errors only.
    quiet: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.ERROR}
    if target is None:
        # "local": a new Ray even when `ray start` left one running here, which `ray.init()` would join.
        ray.init(address="local", num_cpus=num_cpus, **quiet)
        return True
    try:
        ray.init(address=target, **quiet)
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise RaySetupError(f"cannot join the Ray cluster at {target}: {error}") from None
    return True


@contextlib.contextmanager
def _quiet_ray_data() -> Iterator[None]:
    """Ray Data's INFO lines (execution started, finished) off the console, unless progress is shown."""
    if sys.stderr.isatty():
        yield
        return
    # Ray Data warns once per process that progress bars are off; they are off on purpose here.
    log_once("ray_data_progress_manager_disabled")
    ray_data = logging.getLogger("ray.data")
    level = ray_data.level
    ray_data.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        ray_data.setLevel(level)


def _dataset(sources: list[Source], options: dict[str, Any], batch_size: int, workers: int | None) -> ray.data.Dataset:
    resources = ray.cluster_resources()
    cpus = float(resources.get("CPU", 0))
    if cpus <= 0:
        raise RaySetupError("the Ray cluster has no CPUs to read images on")
    pool = pool_for(cpus, workers)
    if workers and pool.actors < workers:
        logger.info("Ray has %g CPUs: running %d detector actors, not %d", cpus, pool.actors, workers)
    options = {**options, "threads": options["threads"] or pool.threads}
    actor_gpus = None
    if torch.device(options["device"]).type == "cuda":
        gpus = float(resources.get("GPU", 0))
        if gpus <= 0:
            raise RaySetupError(f"device {options['device']} asked for, but the Ray cluster has no GPU")
        actor_gpus = gpus / pool.actors
    rows = [{"index": s.index, "path": str(Path(s.path).resolve()), "key": s.key, "name": s.name} for s in sources]
    # At least 2 blocks per actor, so that every actor gets work on a small run.
    blocks = max(math.ceil(len(rows) / (_BATCHES_PER_READ * batch_size)), 2 * pool.actors)
    blocks = min(len(rows), _MAX_BLOCKS, blocks)
    dataset = (
        ray.data.from_items(rows, override_num_blocks=blocks)
        .map(read_row, compute=TaskPoolStrategy(size=pool.read_tasks), num_cpus=pool.read_cpus)
        .map_batches(
            RayDetector,
            fn_constructor_kwargs=options,
            batch_size=batch_size,
            batch_format="numpy",
            compute=ActorPoolStrategy(size=pool.actors),
            num_cpus=pool.actor_cpus,
            num_gpus=actor_gpus,
        )
    )
    context = dataset.context  # this dataset's own copy: the caller's DataContext stays as it was
    context.enable_progress_bars = sys.stderr.isatty()
    context.print_on_execution_start = False
    logger.debug("Ray: %g CPUs, %s, %d blocks", cpus, pool, blocks)
    return dataset


def _results(batch: dict[str, np.ndarray]) -> Iterator[Record | Problem]:
    for i in range(len(batch["index"])):
        index, key = int(batch["index"][i]), str(batch["key"][i])
        if batch["error"][i]:
            yield Problem(index, key, str(batch["error"][i]))
        else:
            yield Record(
                index,
                key,
                str(batch["name"][i]),
                int(batch["width"][i]),
                int(batch["height"][i]),
                json.loads(batch["detections"][i]),
            )

"""Detection over a corpus: sources in batches, decoded ahead on threads, journaled for resume.

Batches are fixed by input order (batch k holds sources ``k*B .. k*B+B-1``), so a resumed run
redoes whole batches and its results equal an uninterrupted run's, bit for bit.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from ..runtime import Detector
from .inputs import ImageReader
from .journal import Journal
from .records import Problem, Record, Source
from .slicing import predict_sliced

# Called for each newly finished source, with its image when it could be read (annotated outputs).
ResultCallback = Callable[[Source, Record | Problem, np.ndarray | None], None]


@dataclass(frozen=True)
class CorpusOptions:
    """Per-image detection settings; ``None`` takes the model's default. ``slice_size`` turns on
    sliced inference (tiles of that size plus the whole image, see :mod:`ssdlite.batch.slicing`)."""

    score_threshold: float | None = None
    max_detections: int | None = None
    classes: tuple[str, ...] | None = None
    slice_size: int | None = None
    overlap: float = 0.2


def detect_sources(
    detector: Detector,
    sources: Sequence[Source],
    options: CorpusOptions | None = None,
    *,
    batch_size: int = 8,
    workers: int = 2,
    journal: Journal | None = None,
    on_result: ResultCallback | None = None,
    progress: bool = False,
) -> list[Record | Problem]:
    """Detects objects in every source; returns one Record (or Problem) per source, in input order.

    Args:
        detector: the model.
        sources: from :func:`ssdlite.batch.inputs.collect_sources`.
        options: thresholds, classes and slicing.
        batch_size: images per inference call.
        workers: threads decoding images ahead of the detector.
        journal: an opened :class:`Journal`; the batches it holds are skipped and each new one is added.
        on_result: called for each source this call detects (not for those the journal already held).
        progress: show a progress bar (images/s, ETA) on stderr.
    """
    options = options or CorpusOptions()
    done: dict[int, Record | Problem] = dict(journal.done) if journal else {}
    batches = [sources[i : i + batch_size] for i in range(0, len(sources), batch_size)]
    pending = [batch for batch in batches if not all(s.index in done for s in batch)]
    remaining = sum(len(batch) for batch in pending)
    with (
        ImageReader(workers) as reader,
        tqdm(total=len(sources), initial=len(sources) - remaining, unit="img", disable=not progress) as bar,
    ):
        ahead = [reader.submit(batch) for batch in pending[:2]]
        for k, batch in enumerate(pending):
            if k + 2 < len(pending):
                ahead.append(reader.submit(pending[k + 2]))
            results = _detect_batch(detector, batch, reader, ahead[k], options, on_result)
            if journal:
                journal.append(results)
            done.update((result.index, result) for result in results)
            ahead[k] = []  # let the decoded images go
            bar.update(len(batch))
    return [done[source.index] for source in sources]


def _detect_batch(detector, batch, reader, futures, options, on_result) -> list[Record | Problem]:
    readable: list[tuple[Source, np.ndarray]] = []
    results: dict[int, Record | Problem] = {}
    for source, image in reader.read(batch, futures):
        if isinstance(image, str):
            results[source.index] = Problem(source.index, source.key, image)
        else:
            readable.append((source, image))
    thresholds = {
        "score_threshold": options.score_threshold,
        "max_detections": options.max_detections,
        "classes": options.classes,
    }
    if options.slice_size:
        found = [
            predict_sliced(detector, image, options.slice_size, options.overlap, **thresholds) for _, image in readable
        ]
    else:
        found = detector.predict_batch([image for _, image in readable], **thresholds)
    for (source, image), detections in zip(readable, found, strict=True):
        height, width = image.shape[:2]
        results[source.index] = Record(source.index, source.key, source.name, width, height, detections, source.frame)
    ordered = [results[source.index] for source in batch]
    if on_result:
        images = {source.index: image for source, image in readable}
        for source, result in zip(batch, ordered, strict=True):
            on_result(source, result, images.get(source.index))
    return ordered

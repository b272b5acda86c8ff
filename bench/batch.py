"""Corpus detection throughput: the batched runner against the one-image-at-a-time loop, one run.

``python -m bench.batch [--images DIR] [--repeat 8] [--model tf-pedestrian-int8] [--batch-size 8]
[--workers 2] [--ray] [--json FILE]``: the photos of ``DIR`` (default: coco128's 128 photos) listed
``--repeat`` times, detected with the same loaded model by
- the loop ``ssdlite detect`` ran before it took folders: read one image, ``Detector.predict``, print;
- ``ssdlite.batch.runner.detect_sources``: batches of ``--batch-size``, ``--workers`` decode threads;
- with ``--ray``, ``ssdlite.batch.ray.ray_detect`` on a local Ray with 1 and 2 detector actors.
Each prints its JSON lines to /dev/null, as ``ssdlite detect`` does to a terminal.
"""

import argparse
import json
import os
import time
from pathlib import Path

import torch

from ssdlite.batch.inputs import collect_sources
from ssdlite.batch.records import Record, Source
from ssdlite.batch.runner import CorpusOptions, detect_sources
from ssdlite.images import read_image
from ssdlite.runtime import Detector

from .common import machine_description, write_json

COCO128 = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "coco128" / "train2017"


def repeated_sources(folder: Path, repeat: int) -> list[Source]:
    photos = collect_sources([str(folder)]).sources
    return [
        Source(round_ * len(photos) + p.index, p.path, f"{p.name}_{round_}") for round_ in range(repeat) for p in photos
    ]


def one_at_a_time(detector: Detector, sources: list[Source], score_threshold: float, sink) -> int:
    for source in sources:
        image = read_image(source.path)
        detections = detector.predict(image, score_threshold=score_threshold)
        line = {"image": source.key, "width": image.shape[1], "height": image.shape[0], "detections": detections}
        print(json.dumps(line), file=sink)
    return len(sources)


def batched(detector: Detector, sources: list[Source], score_threshold, batch_size, workers, sink) -> int:
    results = detect_sources(
        detector, sources, CorpusOptions(score_threshold=score_threshold), batch_size=batch_size, workers=workers
    )
    for result in results:
        if isinstance(result, Record):
            print(json.dumps(result.to_json()), file=sink)
    return len(results)


def timed(label: str, run, count: int, rows: dict):
    start = time.perf_counter()
    done = run()
    seconds = time.perf_counter() - start
    assert done == count, f"{label}: {done} of {count} images"
    rows[label] = {"images": count, "seconds": seconds, "images_per_second": count / seconds}
    print(f"{label:52s} {count / seconds:7.1f} img/s  ({seconds:.1f} s)", flush=True)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.batch", description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, default=COCO128, help="a folder of photos (default: coco128)")
    parser.add_argument("--repeat", type=int, default=8)
    parser.add_argument("--model", default="tf-pedestrian-int8")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--score-threshold", type=float, default=0.5)
    parser.add_argument("--ray", action="store_true", help="also time Ray Data with 1 and 2 actors")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    sources = repeated_sources(args.images, args.repeat)
    detector = Detector.load(args.model, backend="auto", threads=args.threads)
    if detector.backend.name == "onnxruntime":
        torch.set_num_threads(1)  # as ssdlite detect does: torch's threads would fight ONNX Runtime's
    detector.predict_batch([read_image(sources[0].path)] * args.batch_size)  # ONNX Runtime plans each shape once
    print(machine_description())
    print(
        f"{len(sources)} photos ({args.images}, x{args.repeat}), {args.model} on {detector.backend.name} "
        f"{detector.backend.precision}, {args.threads} threads, score >= {args.score_threshold}"
    )
    rows: dict[str, dict] = {}
    with open(os.devnull, "w") as sink:
        timed(
            "one at a time (read, predict, print)",
            lambda: one_at_a_time(detector, sources, args.score_threshold, sink),
            len(sources),
            rows,
        )
        timed(
            f"batched runner (batch {args.batch_size}, {args.workers} decode threads)",
            lambda: batched(detector, sources, args.score_threshold, args.batch_size, args.workers, sink),
            len(sources),
            rows,
        )
        if args.ray:
            from ssdlite.batch.ray import ray_detect  # the optional ray extra

            for actors in (1, 2):
                timed(
                    f"ray data, {actors} actor(s)",
                    lambda actors=actors: sum(
                        1
                        for _ in ray_detect(
                            sources,
                            model=args.model,
                            backend="auto",
                            score_threshold=args.score_threshold,
                            batch_size=args.batch_size,
                            workers=actors,
                        )
                    ),
                    len(sources),
                    rows,
                )
    base = rows["one at a time (read, predict, print)"]["images_per_second"]
    for label, row in rows.items():
        row["vs_one_at_a_time"] = row["images_per_second"] / base
        print(f"{label:52s} {row['vs_one_at_a_time']:.2f}x")
    result = {"machine": machine_description(), "images": len(sources), "model": args.model, "rows": rows}
    if args.json:
        write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()

"""``ssdlite detect INPUT... [-o OUT] [--format coco,yolo,labelstudio,jsonl,images]``: detect objects.

Inputs are image files, folders (recursive), glob patterns, ``.txt`` lists of paths and video files
(every Nth frame with ``--vid-stride``). Without ``--format`` it prints one JSON line per image and
``-o`` writes the annotated image (a directory for several). With ``--format`` the outputs go into
the directory ``-o``, each written whole or not at all, and a run killed and started again with the
same arguments resumes where it stopped.
"""

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

from ..batch.formats import OUTPUT_FORMATS, CocoImages, OutputContext, load_coco_images, parse_formats, write_outputs
from ..batch.inputs import collect_sources
from ..batch.journal import Journal
from ..batch.records import Problem, Record, Source
from ..batch.runner import CorpusOptions, detect_sources
from ..batch.slicing import check_slice
from ..errors import SSDLiteError
from ..images import draw_detections, write_image
from ..runtime import BACKENDS, CPU_RUNTIMES, Detector, check_classes, default_model
from .common import fail, stderr

DEFAULT_MODEL = "auto"  # default_model(--device, --backend): tf-pedestrian-int8 on the CPU, tf-pedestrian on CUDA
ANNOTATED_DIR = "annotated"


def build_parser(prog: str = "ssdlite detect") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="Detect objects in images, folders and videos.")
    parser.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="image or video files, folders, glob patterns ('photos/**/*.jpg'), .txt lists of paths",
    )
    parser.add_argument(
        "-o",
        "--output",
        help="with --format: the output directory; without: the annotated image (a directory for several images)",
    )
    formats = ", ".join(OUTPUT_FORMATS)
    parser.add_argument("--format", help=f"comma-separated outputs into -o DIR: {formats}")
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help="model-zoo name or checkpoint/.onnx/.tflite/.pte path (default auto: tf-pedestrian-int8 on the CPU, "
        "tf-pedestrian on a CUDA device or with --backend torch)",
    )
    parser.add_argument(
        "--backend",
        choices=("auto", *BACKENDS),
        default="auto",
        help="auto (default): onnxruntime on the CPU, torch on a GPU device",
    )
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    parser.add_argument("--threads", type=int, help="inference threads (default: all cores)")
    parser.add_argument("--score-threshold", type=float, default=0.5)
    parser.add_argument("--max-detections", type=int, default=100)
    parser.add_argument("--classes", help="comma-separated class names to keep (default: all)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per inference call (default 8)")
    parser.add_argument(
        "--workers", type=int, default=min(4, os.cpu_count() or 1), help="threads decoding images ahead of the detector"
    )
    parser.add_argument("--vid-stride", type=int, default=1, metavar="N", help="every Nth frame of a video (default 1)")
    parser.add_argument(
        "--slice",
        type=int,
        metavar="SIZE",
        help="sliced inference: tiles of SIZE px (at least the model input) plus the whole image",
    )
    parser.add_argument("--overlap", type=float, default=0.2, help="overlap of neighbouring tiles (default 0.2)")
    parser.add_argument(
        "--coco-images",
        metavar="ANN_JSON",
        help="coco: take image and category ids from this COCO file (results for COCOeval)",
    )
    parser.add_argument(
        "--image-url-prefix",
        help="labelstudio: task image URL = PREFIX + file name "
        "(e.g. /data/local-files/?d=photos/); default: the path as given",
    )
    parser.add_argument("--save-conf", action="store_true", help="yolo: a 6th column with the score")
    parser.add_argument("--ray", action="store_true", help="run on Ray Data (a local Ray, or --ray-address)")
    parser.add_argument(
        "--ray-address",
        default=os.environ.get("RAY_ADDRESS"),
        help="Ray cluster to join (default: $RAY_ADDRESS, else a local Ray)",
    )
    parser.add_argument("--ray-workers", type=int, help="detector actors on Ray (default: from the CPUs Ray reports)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("batch_size", "workers", "max_detections"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if not 0 <= args.score_threshold <= 1:
        parser.error("--score-threshold must be between 0 and 1")
    try:
        formats = parse_formats(args.format) if args.format else ()
        if formats and not args.output:
            parser.error("--format writes into a directory: give it with -o DIR")
        if args.ray and (not formats or "images" in formats or args.slice):
            parser.error(
                "--ray writes --format jsonl, coco, yolo or labelstudio into -o DIR, without --slice "
                "(images and tiles stay on the workers)"
            )
        inputs = collect_sources(args.inputs, args.vid_stride)
        if not inputs.sources and not inputs.missing:
            return fail("no image or video files in the inputs")
        coco_images = _coco_images(args.coco_images, inputs.sources) if args.coco_images else None
        if args.model == DEFAULT_MODEL:
            args.model = default_model(args.device, args.backend)
        detector = Detector.load(args.model, backend=args.backend, device=args.device, threads=args.threads)
        if detector.backend.name in CPU_RUNTIMES:
            # torch only resizes and post-processes here; its thread pool would fight the runtime's for
            # the cores, as in the service (bench.edge: ExecuTorch 1.7x slower beside 2 torch threads).
            torch.set_num_threads(1)
        classes = tuple(n.strip() for n in args.classes.split(",") if n.strip()) if args.classes else None
        if classes:
            check_classes(classes, detector.class_names)
        if args.slice:
            check_slice(args.slice, args.overlap, detector.config.image_size)
        options = CorpusOptions(args.score_threshold, args.max_detections, classes, args.slice, args.overlap)
        output = Path(args.output) if args.output else None
        if formats:
            assert output is not None
            return _run_to_directory(args, detector, inputs, formats, output, options, coco_images)
        return _run_to_stdout(args, detector, inputs, output, options)
    except SSDLiteError as error:
        return fail(error)
    except OSError as error:
        return fail(f"{error.filename or args.output}: {error.strerror or error}")


def _coco_images(path: str, sources: list[Source]) -> CocoImages:
    coco_images = load_coco_images(Path(path))
    coco_images.check([source.key for source in sources])
    return coco_images


def _run_to_stdout(args, detector, inputs, output: Path | None, options: CorpusOptions) -> int:
    """Today's behaviour: JSON lines on stdout, ``-o`` the annotated image or a directory of them."""
    single_file = output is not None and len(inputs.sources) == 1 and not output.is_dir()
    if output and not single_file:
        output.mkdir(parents=True, exist_ok=True)

    def show(source: Source, result: Record | Problem, image: np.ndarray | None):
        if isinstance(result, Problem):
            stderr(f"error: {result.error}")
            return
        line = {"image": result.image, "width": result.width, "height": result.height, "detections": result.detections}
        print(json.dumps(line), flush=True)
        if output is not None and image is not None:
            _write_annotated(output if single_file else output / source.file_name, image, result)

    results = _detect(args, detector, inputs.sources, options, journal=None, on_result=show)
    for problem in inputs.missing:
        stderr(f"error: {problem.error}")
    return _summary(inputs.missing + [r for r in results if isinstance(r, Problem)], quiet=True)


def _run_to_directory(args, detector, inputs, formats, output: Path, options, coco_images) -> int:
    output.mkdir(parents=True, exist_ok=True)
    arguments = {
        "inputs": hashlib.sha256("\n".join(s.key for s in inputs.sources).encode()).hexdigest(),
        "model": str(args.model),
        "backend": detector.backend.name,
        "score_threshold": args.score_threshold,
        "max_detections": args.max_detections,
        "classes": args.classes,
        "slice": args.slice,
        "overlap": args.overlap if args.slice else None,
        "batch_size": args.batch_size,
        "vid_stride": args.vid_stride,
    }
    journal = Journal(output, arguments).open()
    if journal.done:
        stderr(f"resuming: {len(journal.done)} of {len(inputs.sources)} images already done in {output}")

    def save(source: Source, result: Record | Problem, image: np.ndarray | None):
        if image is None or isinstance(result, Problem):
            return
        if "images" in formats:
            _write_annotated(output / ANNOTATED_DIR / source.file_name, image, result)
        if "yolo" in formats and source.frame is not None:  # a frame has no file of its own to link to
            _write_atomically(output / "images" / source.file_name, image)

    try:
        results = _detect(args, detector, inputs.sources, options, journal=journal, on_result=save)
    finally:
        journal.close()
    records = [r for r in results if isinstance(r, Record)]
    context = OutputContext(
        class_names=detector.class_names,
        model_version=Path(str(args.model)).stem,
        coco_images=coco_images,
        image_url_prefix=args.image_url_prefix,
        yolo_confidence=args.save_conf,
    )
    for path in write_outputs(formats, records, output, context):
        print(path)
    if "images" in formats:
        print(output / ANNOTATED_DIR)
    return _summary(inputs.missing + [r for r in results if isinstance(r, Problem)])


def _detect(args, detector, sources, options, journal, on_result):
    progress = sys.stderr.isatty()
    if not args.ray:
        return detect_sources(
            detector,
            sources,
            options,
            batch_size=args.batch_size,
            workers=args.workers,
            journal=journal,
            on_result=on_result,
            progress=progress,
        )
    try:
        from ..batch.ray import ray_detect  # ray is an optional extra
    except ModuleNotFoundError as error:
        raise SSDLiteError(f"--ray needs {error.name}, which is not installed: pip install 'ssdlite[ray]'") from None
    done = dict(journal.done) if journal else {}
    pending = [source for source in sources if source.index not in done]
    found = ray_detect(
        pending,
        model=args.model,
        backend=args.backend,
        device=args.device,
        threads=args.threads,
        score_threshold=options.score_threshold,
        max_detections=options.max_detections,
        classes=options.classes,
        batch_size=args.batch_size,
        address=args.ray_address,
        workers=args.ray_workers,
    )
    by_index = {source.index: source for source in pending}
    finished: list[Record | Problem] = []
    for result in found:
        done[result.index] = result
        on_result(by_index[result.index], result, None)
        finished.append(result)
        if journal and len(finished) == args.batch_size:  # one synced write per batch, as the local runner
            journal.append(finished)
            finished = []
    if journal and finished:
        journal.append(finished)
    return [done[source.index] for source in sources]


def _write_annotated(path: Path, image: np.ndarray, record: Record):
    _write_atomically(path, draw_detections(image, record.detections))


def _write_atomically(path: Path, image: np.ndarray):
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.stem}.partial{path.suffix}")
    write_image(partial, image)
    partial.replace(path)


def _summary(problems: list[Problem], quiet: bool = False) -> int:
    """Lists the inputs that could not be read (exit code 1 if any)."""
    if problems and not quiet:
        stderr(f"skipped {len(problems)} unreadable input(s):")
        for problem in problems:
            stderr(f"  {problem.error}")
    return 1 if problems else 0

"""Edge deployment in one run: ONNX Runtime, LiteRT and ExecuTorch, float32 and INT8, on the same input.

``python -m bench.edge [--model NAME|FILE] [--calibration DIR] [--iterations N] [--threads T]
[--no-memory] [--json FILE]``: exports the zoo person detector (default ``tf-pedestrian``) into a
temporary folder as ``.onnx``, ``.tflite`` and ``.pte``, each float32 and INT8 (calibrated on the
first 64 images of ``--calibration``, default coco128), with ``ssdlite.deploy.export_model``; loads
each with ``ssdlite.runtime.load_backend(path, threads=T)`` and times the raw backend call (a
preprocessed shipped photo in, box regression and class logits out), the backends taking turns in
blocks of 10 runs so drift in the machine's load hits all of them alike. Prints p50/p95 ms, the ratio to
ONNX Runtime float32, the file sizes, the issue's goals as met or missed, and then the memory
table of ``python -m bench.memory``. A format whose export or runtime is missing gets an
``n/a: <reason>`` row and the others still run.
"""

import argparse
import contextlib
import io
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import torch

from ssdlite.deploy import export_model
from ssdlite.deploy.int8 import DEFAULT_CALIBRATION_IMAGES, load_calibration_images
from ssdlite.errors import SSDLiteError
from ssdlite.images import IMAGE_SUFFIXES, SAMPLE_PHOTOS, preprocess, read_image
from ssdlite.runtime import load_backend, model_file
from ssdlite.weights import load_checkpoint

from .common import write_json

MB = 1e6
COCO128 = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "coco128"
BASELINE = "ONNX Runtime fp32"
FORMATS = (  # row label, file suffix, INT8?
    (BASELINE, ".onnx", False),
    ("ONNX Runtime INT8", ".onnx", True),
    ("LiteRT fp32", ".tflite", False),
    ("LiteRT INT8", ".tflite", True),
    ("ExecuTorch fp32", ".pte", False),
    ("ExecuTorch INT8", ".pte", True),
)


@dataclass(frozen=True)
class Goal:
    """``row``'s p50 over ``reference``'s p50 must be at most ``limit``."""

    row: str
    reference: str
    limit: float
    text: str


GOALS = (
    Goal("LiteRT INT8", "ONNX Runtime INT8", 1.15, "LiteRT INT8 within 1.15x of ONNX Runtime INT8's time"),
    Goal("ExecuTorch INT8", BASELINE, 0.6, "ExecuTorch INT8 at most 0.6x ONNX Runtime fp32's time"),
)


@dataclass
class Row:
    """One format: its file, its timings (ms) or why there are none."""

    label: str
    file_bytes: int | None = None
    times: list[float] = field(default_factory=list)
    missing: str | None = None  # "n/a: <reason>" or "failed: <error>"

    @property
    def p50(self) -> float:
        return statistics.median(self.times)

    @property
    def p95(self) -> float:
        ordered = sorted(self.times)
        return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def machine_description() -> str:
    """CPU model (from /proc/cpuinfo), cores this process may use, and the runtimes' versions."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    versions = [f"torch {torch.__version__}"]
    for package in ("onnxruntime", "ai-edge-litert", "executorch", "litert-torch"):
        try:
            versions.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{package} absent")
    return f"{cpu}, {usable} of {os.cpu_count()} cores, {', '.join(versions)}"


def why_missing(error: BaseException) -> str:
    """The one-line reason a format's row has no timings."""
    if isinstance(error, ImportError):
        return f"n/a: {error.name or 'a package'} is not installed ({error})"
    if isinstance(error, SSDLiteError):
        return f"n/a: {error}"
    return f"failed: {type(error).__name__}: {error}"


def interleave(
    calls: dict[str, Callable[[], object]], iterations: int, warmup: int, block: int = 10
) -> dict[str, list[float]]:
    """Times every call ``iterations`` times, in blocks of ``block`` runs taken in turn (the first
    backend rotating each round), each block after one untimed run.

    Blocks rather than single runs, each after an untimed one: the first run after another
    runtime's pays for waking its own threads and refilling the caches.
    """
    names = list(calls)
    if not names:
        return {}
    for _ in range(warmup):
        for name in names:
            calls[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    rounds = -(-iterations // block)
    for i in range(rounds):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            calls[name]()
            for _ in range(min(block, iterations - i * block)):
                start = time.perf_counter()
                calls[name]()
                times[name].append((time.perf_counter() - start) * 1000)
    return times


def goal_results(rows: list[Row]) -> list[dict]:
    """Each goal with its ratio and ``met``/``missed``/``n/a``."""
    by_label = {row.label: row for row in rows}
    results = []
    for goal in GOALS:
        row, reference = by_label.get(goal.row), by_label.get(goal.reference)
        absent = [r.label for r in (row, reference) if r is not None and not r.times]
        if row is None or reference is None or absent:
            status, ratio = f"n/a (no timings for {', '.join(absent) or 'a row'})", None
        else:
            ratio = row.p50 / reference.p50
            status = "met" if ratio <= goal.limit else "missed"
        results.append({"goal": goal.text, "limit": goal.limit, "ratio": ratio, "status": status})
    return results


def format_report(rows: list[Row]) -> str:
    """The timing table (ratios to ONNX Runtime fp32's p50) and the goals."""
    baseline = next((row for row in rows if row.label == BASELINE and row.times), None)
    lines = [f"{'format':20s} {'file MB':>8s} {'p50 ms':>8s} {'p95 ms':>8s} {'vs ORT fp32':>12s}"]
    for row in rows:
        size = f"{row.file_bytes / MB:8.2f}" if row.file_bytes is not None else f"{'-':>8s}"
        if not row.times:
            lines.append(f"{row.label:20s} {size} {row.missing or 'n/a'}")
            continue
        ratio = f"{row.p50 / baseline.p50:11.2f}x" if baseline else f"{'-':>12s}"
        lines.append(f"{row.label:20s} {size} {row.p50:8.2f} {row.p95:8.2f} {ratio}")
    lines.append("goals:")
    for result in goal_results(rows):
        ratio = f"{result['ratio']:.2f}x" if result["ratio"] is not None else "-"
        lines.append(f"  {result['goal']} (<= {result['limit']}x): {result['status']} ({ratio})")
    return "\n".join(lines)


def sample_input(size: int) -> torch.Tensor:
    """The first photo ssdlite ships, preprocessed to ``[1, 3, size, size]``."""
    photo = sorted(p for p in SAMPLE_PHOTOS.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[0]
    return preprocess([read_image(photo)], size)[0]


def export_and_load(model, class_names, label: str, suffix: str, calibration, folder: Path, threads: int):
    """Exports one format and loads it; returns (row, backend or ``None``)."""
    path = folder / f"{label.replace(' ', '_')}{suffix}"
    row = Row(label)
    try:
        options = {"calibration": calibration} if calibration is not None else {}
        with contextlib.redirect_stdout(io.StringIO()):  # converters' progress logs
            export_model(model, class_names, path, **options)
        row.file_bytes = path.stat().st_size
        return row, load_backend(path, threads=threads)
    except Exception as error:  # one format's failure is its row's, not the run's
        row.missing = why_missing(error).replace(f"{folder}{os.sep}", "")
        return row, None


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.edge", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tf-pedestrian", help="a zoo name or a .pt checkpoint")
    parser.add_argument("--calibration", type=Path, default=COCO128, help="a folder of INT8 calibration photos")
    parser.add_argument("--calibration-images", type=int, default=DEFAULT_CALIBRATION_IMAGES)
    parser.add_argument("--iterations", type=int, default=100, help="timed runs of each format")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-memory", action="store_true", help="skip the memory table (minutes)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"machine: {machine_description()}")

    path, found = model_file(args.model)
    if found.name != "checkpoint":
        parser.error(f"{args.model}: bench.edge exports from a checkpoint (.pt), not a {found.name} file")
    model, class_names = load_checkpoint(path)
    model.eval()
    size = model.config.image_size
    calibration = load_calibration_images(args.calibration, model.config, args.calibration_images)
    images = sample_input(size)
    print(
        f"model: {args.model} ({path.name}, {size}x{size}); INT8 calibrated on {len(calibration.files)} images "
        f"of {args.calibration}; {args.threads} threads; {args.iterations} runs each, in turns of 10, "
        f"after {args.warmup} warm-up runs"
    )

    rows, calls = [], {}
    with tempfile.TemporaryDirectory(prefix="ssdlite-edge-") as folder:
        for label, suffix, int8 in FORMATS:
            start = time.perf_counter()
            row, backend = export_and_load(
                model, class_names, label, suffix, calibration.images if int8 else None, Path(folder), args.threads
            )
            rows.append(row)
            if backend is not None:
                calls[label] = lambda b=backend: b(images)
                print(f"  {label}: exported and loaded in {time.perf_counter() - start:.0f} s")
            else:
                print(f"  {label}: {row.missing}")
        # The runtimes run on args.threads threads each; torch only copies the input around their calls
        # (as in the service, which gives it one thread beside a CPU runtime).
        torch.set_num_threads(1)
        for label, times in interleave(calls, args.iterations, args.warmup).items():
            next(row for row in rows if row.label == label).times = times
    print()
    print(format_report(rows))
    results = {
        "machine": machine_description(),
        "model": args.model,
        "rows": {
            row.label: {"file_bytes": row.file_bytes, "p50_ms": row.p50, "p95_ms": row.p95}
            if row.times
            else {"file_bytes": row.file_bytes, "missing": row.missing}
            for row in rows
        },
        "goals": goal_results(rows),
    }
    if not args.no_memory:
        from .memory import memory_table

        print("\npeak activation memory (python -m bench.memory):")
        memory_rows, table = memory_table(log=lambda line: None)
        print(table)
        results["memory"] = memory_rows
    write_json(args.json, results)
    return results


if __name__ == "__main__":
    main()

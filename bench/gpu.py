"""GPU check: the project's whole CUDA path in one command that fits a short GPU lease.

``python -m bench.gpu --output-dir DIR`` runs these steps in order, each timed, each recorded as
passed, failed or skipped, and one failing step does not stop the next:

1. ``environment``: torch, CUDA, the GPU and its memory, CPU count, the packages later steps import;
2. ``gpu_tests``: the CUDA-marked tests, ``python -m pytest -m gpu tests`` (junit XML in DIR);
3. ``bench_train``: ``python -m bench.train --device cuda``, our training step vs torchvision's at
   batch 64 and 256 in fp32 and bf16 (its JSON in DIR/bench_train.json);
4. ``train_epoch``: one ``python -m train.coco`` epoch with bf16 autocast on the embedded generated
   set, evaluated (val AP from its metrics.json);
5. ``resume``: a copy of that run (a fresh 1-epoch run if step 4 left none) continued with
   ``--resume RUN --epochs 2``, which must reach epoch 2 with both epochs in metrics.json.

It writes DIR/summary.json (after every step, so a killed run leaves what it had), the output of
every command in DIR/commands.log, prints a table, and exits 0 when nothing failed (skips are
fine), 1 otherwise. ``--time-budget`` (default 480 s) sizes the work and every command's timeout;
a command that runs out of time is stopped (SIGTERM, then SIGKILL) and its step is failed.

Without CUDA (or with ``--device cpu``) steps 2-3 are skipped, each with one line saying so (step 2
still runs pytest on tests/test_gpu.py, whose tests must all skip), and steps 4-5 run the same
commands on the CPU at smoke size (16 training images, batch 8), so the whole check is tested on
a 2-core machine in under a minute.
"""

import argparse
import contextlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import traceback
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from .common import machine_description, write_json

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TIME_BUDGET = 480.0
# Each command's timeout as a share of the time budget (the environment step takes seconds).
SHARES = {"gpu_tests": 0.2, "bench_train": 0.35, "train_epoch": 0.2, "resume": 0.25}
TAIL_LINES = 25
KILL_GRACE_S = 5
# Modules the later steps import that a bare GPU image may lack; the environment step names any missing.
NEEDED_MODULES = {
    "pytest": "gpu_tests",
    "pycocotools": "bench_train, train_epoch, resume",
    "albumentations": "bench_train, train_epoch, resume",
    "matplotlib": "train_epoch, resume",
    "yaml": "train_epoch, resume",
    "cv2": "all",
    "onnxruntime": "all",
    "onnx": "all",
    "tqdm": "all",
}
CPU_SMOKE = {"train_images": 16, "val_images": 8, "batch_size": 8}


class Skipped(Exception):
    """The step does not apply here (no CUDA); the message says why, ``figures`` what it saw."""

    def __init__(self, detail: str, **figures):
        super().__init__(detail)
        self.figures = figures


class Failed(Exception):
    """The step ran and something was wrong; ``figures`` keeps what it measured before that."""

    def __init__(self, detail: str, **figures):
        super().__init__(detail)
        self.figures = figures


@dataclass
class CommandResult:
    command: list[str]
    returncode: int | None  # None: stopped at its timeout
    seconds: float
    output: str  # everything it printed (stdout and stderr)
    timeout: float

    @property
    def timed_out(self) -> bool:
        return self.returncode is None

    def tail(self, lines: int = TAIL_LINES) -> str:
        return "\n".join(self.output.rstrip().splitlines()[-lines:])

    def describe(self) -> str:
        if self.timed_out:
            return f"timed out after {self.timeout:.0f} s"
        return f"exit code {self.returncode}"


def run_command(
    command: list[str], *, timeout: float, log: Path, env: dict[str, str] | None = None, cwd: Path = REPO_ROOT
) -> CommandResult:
    """Runs ``command`` with its output appended to ``log``; stops its whole process group at ``timeout``.

    Never raises for a failing command: the result says how it ended.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        out.write(f"\n==== {shlex_join(command)} (timeout {timeout:.0f} s)\n".encode())
        out.flush()
        start_offset = out.tell()
        started = time.perf_counter()
        # Its own session, so a timeout also stops the DataLoader workers it forked.
        process = subprocess.Popen(
            command,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            start_new_session=True,
        )
        returncode: int | None
        try:
            returncode = process.wait(timeout=max(timeout, 0.1))
        except subprocess.TimeoutExpired:
            _stop_group(process)
            returncode = None
        except BaseException:  # Ctrl-C: its own session would not see it, so it must not outlive us
            _stop_group(process)
            raise
        seconds = time.perf_counter() - started
        with open(log, "rb") as f:
            f.seek(start_offset)
            output = f.read().decode(errors="replace")
        ended = "timed out" if returncode is None else f"exit code {returncode}"
        out.write(f"==== {ended} after {seconds:.1f} s\n".encode())
    return CommandResult(list(command), returncode, seconds, output, timeout)


def _stop_group(process: subprocess.Popen):
    # SIGTERM first: the trainer saves last.pt on it; then SIGKILL whatever is left of the group.
    for sig, wait in ((signal.SIGTERM, KILL_GRACE_S), (signal.SIGKILL, KILL_GRACE_S)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # workers that outlived their parent


def shlex_join(command: list[str]) -> str:
    return shlex.join(str(part) for part in command)


def check_exit(result: CommandResult, what: str, **figures):
    """Raises :class:`Failed` with the end of the output unless ``result`` exited 0."""
    if result.returncode != 0:
        raise Failed(f"{what}: {result.describe()}; last lines:\n{result.tail()}", **figures)


def run_step(name: str, fn: Callable[[], dict | None]) -> dict:
    """Runs one step; returns its summary entry. Exceptions become a failed entry, never propagate."""
    started = time.perf_counter()
    figures: dict = {}
    try:
        figures = dict(fn() or {})
        status, detail = "passed", figures.pop("detail", "")
    except Skipped as error:
        status, detail, figures = "skipped", str(error), error.figures
    except Failed as error:
        status, detail, figures = "failed", str(error), error.figures
    except Exception as error:  # a bug or a broken environment: record it and go on
        status = "failed"
        detail = f"{type(error).__name__}: {error}\n" + "".join(traceback.format_exc().splitlines(True)[-6:])
    entry = {"name": name, "status": status, "seconds": round(time.perf_counter() - started, 2), "detail": detail}
    entry.update(figures)
    return entry


def run_steps(
    steps: list[tuple[str, Callable[[], dict | None]]], on_step: Callable[[list[dict]], object] | None = None
) -> list[dict]:
    """Runs every step in order whatever the earlier ones gave; ``on_step`` sees the results so far."""
    results: list[dict] = []
    for index, (name, fn) in enumerate(steps, start=1):
        print(f"[{index}/{len(steps)}] {name} ...", flush=True)
        entry = run_step(name, fn)
        results.append(entry)
        first_line, _, rest = entry["detail"].partition("\n")
        print(f"      {entry['status']} in {entry['seconds']:.1f} s: {first_line}", flush=True)
        if entry["status"] == "failed" and rest:
            print("\n".join("      | " + line for line in rest.splitlines()), flush=True)
        if on_step is not None:
            on_step(results)
    return results


def summarize(results: list[dict], **extra) -> dict:
    counts = {status: sum(r["status"] == status for r in results) for status in ("passed", "failed", "skipped")}
    return {"ok": counts["failed"] == 0, **counts, **extra, "steps": results}


def format_table(summary: dict) -> str:
    width = max([len(r["name"]) for r in summary["steps"]] + [4])
    lines = [f"{'step':{width}}  {'status':7}  {'seconds':>7}  detail"]
    for r in summary["steps"]:
        detail = r["detail"].partition("\n")[0]
        detail = detail if len(detail) <= 100 else detail[:97] + "..."
        lines.append(f"{r['name']:{width}}  {r['status']:7}  {r['seconds']:7.1f}  {detail}")
    lines.append(
        f"ok: {str(summary['ok']).lower()} ({summary['passed']} passed, {summary['skipped']} skipped, "
        f"{summary['failed']} failed) in {summary['seconds']:.1f} s"
    )
    return "\n".join(lines)


class GpuCheck:
    """The five steps, sharing the device choice, the output folders and the time budget."""

    def __init__(self, output_dir: Path, work_dir: Path, device: str, time_budget: float):
        self.output_dir = output_dir
        self.work_dir = work_dir
        self.device = device
        self.cuda = device == "cuda"
        self.why_not_cuda = "--device cpu" if torch.cuda.is_available() else "no CUDA device"
        self.time_budget = time_budget
        self.started = time.perf_counter()
        self.log = output_dir / "commands.log"
        if self.cuda:
            # Estimated at about half the budget on one H100 (not yet measured): the rest is margin.
            scale = time_budget / DEFAULT_TIME_BUDGET
            self.train_images = int(min(4000, max(256, round(2000 * scale, -2))))
            self.val_images = int(max(50, self.train_images // 20))
            self.batch_size = None  # the embedded recipe's
            self.bench_steps = int(min(30, max(5, round(20 * scale))))
            self.bench_warmup = max(2, self.bench_steps // 4)
        else:
            self.train_images = CPU_SMOKE["train_images"]
            self.val_images = CPU_SMOKE["val_images"]
            self.batch_size = CPU_SMOKE["batch_size"]

    def steps(self) -> list[tuple[str, Callable[[], dict | None]]]:
        return [
            ("environment", self.environment),
            ("gpu_tests", self.gpu_tests),
            ("bench_train", self.bench_train),
            ("train_epoch", self.train_epoch),
            ("resume", self.resume),
        ]

    def timeout(self, step: str) -> float:
        """The step's share of the budget, but never past the budget's end."""
        left = self.time_budget - (time.perf_counter() - self.started)
        if left < 1:
            raise Failed(f"not run: the time budget of {self.time_budget:.0f} s was spent before this step")
        return min(SHARES[step] * self.time_budget, left)

    def environment(self) -> dict:
        figures: dict = {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torchvision": _version("torchvision"),
            "cuda_available": torch.cuda.is_available(),
            "torch_cuda": torch.version.cuda,
            "cpu_count": os.cpu_count(),
            "machine": machine_description(),
            "device": self.device,
        }
        missing = {name: used for name, used in NEEDED_MODULES.items() if importlib.util.find_spec(name) is None}
        figures["missing_modules"] = sorted(missing)
        if torch.cuda.is_available():
            properties = torch.cuda.get_device_properties(0)
            figures.update(
                device_name=properties.name,
                gpu_memory_gib=round(properties.total_memory / 2**30, 1),
                compute_capability=f"{properties.major}.{properties.minor}",
                gpu_count=torch.cuda.device_count(),
                cudnn=torch.backends.cudnn.version(),
                bf16_supported=torch.cuda.is_bf16_supported(),
            )
            figures["machine"] += f", {properties.name}"
        figures["nvidia_smi"] = _nvidia_smi()
        if self.cuda and not torch.cuda.is_available():
            raise Failed("--device cuda asked for, but torch sees no CUDA device", **figures)
        where = (
            f"{figures['device_name']}, {figures['gpu_memory_gib']} GiB, CUDA {figures['torch_cuda']}"
            if torch.cuda.is_available()
            else "no CUDA device"
        )
        detail = f"torch {torch.__version__}, {where}, {os.cpu_count()} CPUs; running on {self.device}"
        if missing:
            detail += "; missing modules: " + ", ".join(f"{name} (for {used})" for name, used in missing.items())
        return {"detail": detail, **figures}

    def gpu_tests(self) -> dict:
        junit = self.output_dir / "pytest_gpu.xml"
        junit.unlink(missing_ok=True)
        # Without CUDA every test skips: collecting the whole suite (a minute on 2 busy cores) would only
        # show that again, so the CPU mode collects this check's own module.
        tests = "tests" if self.cuda else "tests/test_gpu.py"
        command = [sys.executable, "-m", "pytest", "-m", "gpu", tests, "-q", "-p", "no:cacheprovider"]
        # A module whose imports this machine lacks (the service's on a bare GPU image) must not hide the rest.
        command += ["--continue-on-collection-errors", f"--junitxml={junit}"]
        # In CPU mode the tests must skip even on a machine that has a GPU.
        env = None if self.cuda else {"CUDA_VISIBLE_DEVICES": ""}
        result = run_command(command, timeout=self.timeout("gpu_tests"), log=self.log, env=env)
        figures: dict = {"command": shlex_join(command), "exit_code": result.returncode}
        if not junit.is_file():
            raise Failed(f"pytest wrote no report: {result.describe()}; last lines:\n{result.tail()}", **figures)
        figures.update(parse_junit(junit))
        problems = figures["failed"] + figures["errors"]
        own_module_broken = any(m.endswith("test_gpu") for m in figures["collection_errors"])
        counts = (
            f"{figures['passed']} passed, {figures['failed']} failed, {figures['errors']} errors, "
            f"{figures['skipped']} skipped of {figures['tests']} gpu-marked tests"
        )
        if figures["collection_errors"]:
            counts += f"; {len(figures['collection_errors'])} module(s) not collected: " + "; ".join(
                f"{module} ({reason})" for module, reason in figures["collection_errors"].items()
            )
        if result.timed_out:
            raise Failed(f"pytest {result.describe()}; {counts}; last lines:\n{result.tail()}", **figures)
        if problems or own_module_broken:
            failing = "\n".join(figures["failing"])
            raise Failed(f"{counts}\n{failing}\nlast lines:\n{result.tail()}", **figures)
        if not self.cuda:
            if figures["passed"]:
                raise Failed(f"{counts}: gpu-marked tests ran without CUDA (they must skip)", **figures)
            raise Skipped(f"{self.why_not_cuda}: the gpu-marked tests ran and skipped ({counts})", **figures)
        if figures["passed"] == 0:
            raise Failed(f"{counts}: none ran on CUDA", **figures)
        return {"detail": counts, **figures}

    def bench_train(self) -> dict:
        if not self.cuda:
            raise Skipped(f"{self.why_not_cuda}: skipped bench.train on CUDA")
        output = self.output_dir / "bench_train.json"
        output.unlink(missing_ok=True)
        command = [sys.executable, "-m", "bench.train", "--device", "cuda"]
        command += ["--steps", str(self.bench_steps), "--warmup", str(self.bench_warmup), "--json", str(output)]
        result = run_command(command, timeout=self.timeout("bench_train"), log=self.log)
        figures: dict = {"command": shlex_join(command), "exit_code": result.returncode}
        if output.is_file():
            figures.update(bench_train_figures(json.loads(output.read_text())))
        else:  # keep the rows it printed before it stopped
            figures["train"] = parse_train_lines(result.output)
        check_exit(result, "bench.train", **figures)
        rows = ", ".join(
            f"bs {r['batch_size']} {r['dtype']} {r['ours_img_s']:.0f} vs {r['torchvision_img_s']:.0f} img/s "
            f"(x{r['ratio']:.2f})"
            for r in figures["train"]
        )
        return {"detail": f"ours vs torchvision: {rows}", **figures}

    def train_command(self, output_dir: Path) -> list[str]:
        command = [sys.executable, "-m", "train.coco", "--device", self.device, "--amp", "bf16" if self.cuda else "off"]
        command += ["--epochs", "1", "--eval-every", "1"]
        command += ["--synthetic-train", str(self.train_images), "--synthetic-val", str(self.val_images)]
        if self.batch_size:
            command += ["--batch-size", str(self.batch_size)]
        if not self.cuda:
            command += ["--workers", "0"]  # worker start-up would cost more than it saves at smoke size
        return command + ["--data-cache", str(self.work_dir / "data"), "--output-dir", str(output_dir), "--no-progress"]

    def train_epoch(self) -> dict:
        run_dir = self.work_dir / "train"
        shutil.rmtree(run_dir, ignore_errors=True)
        command = self.train_command(run_dir)
        result = run_command(command, timeout=self.timeout("train_epoch"), log=self.log)
        figures = {"command": shlex_join(command), "exit_code": result.returncode, **run_figures(result, run_dir)}
        check_exit(result, "train.coco", **figures)
        if figures["epochs"] != [1]:
            raise Failed(f"metrics.json has epochs {figures['epochs']}, expected [1]", **figures)
        expected = "cuda" if self.cuda else "cpu"
        if figures["ran_on"] and not figures["ran_on"].startswith(expected):
            raise Failed(f"the trainer ran on {figures['ran_on']}, not {expected}", **figures)
        return {
            "detail": f"1 epoch x {self.train_images} images on {figures['ran_on']} (amp {figures['amp']}): "
            f"{_fmt(figures['train_img_s'], '.0f')} img/s, val AP {_fmt(figures['val_ap'], '.3f')} "
            f"AP50 {_fmt(figures['val_ap50'], '.3f')}, "
            f"{result.seconds:.0f} s wall",
            **figures,
        }

    def resume(self) -> dict:
        run_dir = self.work_dir / "resume"
        shutil.rmtree(run_dir, ignore_errors=True)
        figures: dict = {}
        step_timeout = self.timeout("resume")
        step_started = time.perf_counter()
        source = self.work_dir / "train"
        if (source / "last.pt").is_file() and (source / "metrics.json").is_file():
            shutil.copytree(source, run_dir)
            figures["first_run"] = f"a copy of {source}"
        else:  # train_epoch failed: make the 1-epoch run here
            command = self.train_command(run_dir)
            first = run_command(command, timeout=step_timeout, log=self.log)
            figures.update(first_command=shlex_join(command), first_exit_code=first.returncode)
            check_exit(first, "the 1-epoch run to resume", **figures)
            figures["first_run"] = "its own 1-epoch run (train_epoch left no run)"
        command = [sys.executable, "-m", "train.coco", "--resume", str(run_dir), "--epochs", "2"]
        command += ["--device", self.device, "--no-progress"]
        left = step_timeout - (time.perf_counter() - step_started)
        result = run_command(command, timeout=left, log=self.log)
        figures.update(command=shlex_join(command), exit_code=result.returncode, **run_figures(result, run_dir))
        check_exit(result, "train.coco --resume", **figures)
        resumed = re.search(r"^resuming (.+) at epoch (\d+)", result.output, re.MULTILINE)
        figures["resumed_at_epoch"] = int(resumed.group(2)) if resumed else None
        if figures["resumed_at_epoch"] != 2:
            raise Failed("the resumed run did not say 'resuming ... at epoch 2'", **figures)
        if figures["epochs"] != [1, 2]:
            raise Failed(f"metrics.json has epochs {figures['epochs']} after resuming, expected [1, 2]", **figures)
        return {
            "detail": f"continued {figures['first_run']} from epoch 2 on {figures['ran_on']}: epochs [1, 2] "
            f"in metrics.json, val AP {figures['val_ap_per_epoch']}",
            **figures,
        }


def parse_junit(path: Path) -> dict:
    """Counts and failing test ids from pytest's junit XML; collection errors by module."""
    root = ElementTree.parse(path).getroot()
    counts = {"tests": 0, "passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    failing, collection_errors = [], {}
    for case in root.iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        failure, error, skipped = case.find("failure"), case.find("error"), case.find("skipped")
        if error is not None and not case.get("classname") and error.get("message") == "collection failure":
            lines = [line for line in (error.text or "").splitlines() if line.startswith("E ")]
            collection_errors[case.get("name")] = lines[-1][1:].strip() if lines else "collection failure"
            continue
        counts["tests"] += 1
        if failure is not None:
            counts["failed"] += 1
            failing.append(f"FAILED {name}: {(failure.get('message') or '').splitlines()[0][:200]}")
        elif error is not None:
            counts["errors"] += 1
            failing.append(f"ERROR {name}: {(error.get('message') or '').splitlines()[0][:200]}")
        elif skipped is not None:
            counts["skipped"] += 1
        else:
            counts["passed"] += 1
    return {**counts, "failing": failing, "collection_errors": collection_errors}


def bench_train_figures(results: dict) -> dict:
    rows = [
        {
            "batch_size": row["batch_size"],
            "dtype": row["dtype"],
            "ours_img_s": round(row["ours"], 1),
            "torchvision_img_s": round(row["torchvision"], 1),
            "ratio": round(row["speedup"], 3),
        }
        for row in results.get("train", [])
    ]
    return {"train": rows, "loader": results.get("loader"), "eval": results.get("eval"), "machine": results["machine"]}


_TRAIN_LINE = re.compile(
    r"train step\s+bs\s+(\d+)\s+(\S+)\s+ours\s+([\d.]+) img/s\s+torchvision\s+([\d.]+) img/s\s+x([\d.]+)"
)


def parse_train_lines(output: str) -> list[dict]:
    """The ``train step`` rows bench.train printed, for a run that ended before writing its JSON."""
    return [
        {
            "batch_size": int(m.group(1)),
            "dtype": m.group(2),
            "ours_img_s": float(m.group(3)),
            "torchvision_img_s": float(m.group(4)),
            "ratio": float(m.group(5)),
        }
        for m in _TRAIN_LINE.finditer(output)
    ]


def run_figures(result: CommandResult, run_dir: Path) -> dict:
    """What a train.coco run left: its device line and metrics.json (nothing raises if either is missing)."""
    figures: dict = {"wall_s": round(result.seconds, 1), "output_dir": str(run_dir)}
    setup = re.search(r"device (\S+), amp (\S+), channels_last (\S+),", result.output)
    figures["ran_on"], figures["amp"], figures["channels_last"] = setup.groups() if setup else (None, None, None)
    history = []
    with contextlib.suppress(OSError, ValueError):
        history = json.loads((run_dir / "metrics.json").read_text())
    figures["epochs"] = [row.get("epoch") for row in history]
    last = history[-1] if history else {}
    figures.update(
        val_ap=last.get("AP"),
        val_ap50=last.get("AP50"),
        loss=last.get("loss"),
        train_img_s=last.get("img_per_s"),
        epoch_s=last.get("epoch_s"),
        eval_s=last.get("eval_s"),
        val_ap_per_epoch=[round(row["AP"], 4) if "AP" in row else None for row in history],
    )
    return figures


def _fmt(value: float | None, spec: str) -> str:
    return "?" if value is None else format(value, spec)


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _nvidia_smi() -> str | None:
    if shutil.which("nvidia-smi") is None:
        return None
    query = "--query-gpu=name,driver_version,memory.total,memory.used,temperature.gpu,clocks.max.sm"
    try:
        done = subprocess.run(
            ["nvidia-smi", query, "--format=csv,noheader"], capture_output=True, text=True, timeout=20, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"nvidia-smi failed: {error}"
    return (done.stdout or done.stderr).strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", required=True, help="summary.json, commands.log, the JSON/XML reports")
    parser.add_argument(
        "--work-dir",
        help="where the generated data and the training runs go (default: the output dir); "
        "on a machine that sends back only a few files, point it elsewhere",
    )
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto", help="auto: cuda if available")
    parser.add_argument(
        "--time-budget",
        type=float,
        default=DEFAULT_TIME_BUDGET,
        help="seconds for the whole check: sizes the work and each command's timeout",
    )
    args = parser.parse_args(argv)
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    output_dir = Path(args.output_dir).resolve()
    work_dir = Path(args.work_dir).resolve() if args.work_dir else output_dir
    output_dir.mkdir(parents=True, exist_ok=True)
    work_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "commands.log").unlink(missing_ok=True)
    check = GpuCheck(output_dir, work_dir, device, args.time_budget)
    size = (
        f"{check.train_images} train / {check.val_images} val images"
        if check.cuda
        else f"CPU smoke size: {check.train_images} train / {check.val_images} val images, batch {check.batch_size}"
    )
    print(f"GPU check on {device}, time budget {args.time_budget:.0f} s, {size}; outputs in {output_dir}", flush=True)
    context = {
        "device": device,
        "time_budget": args.time_budget,
        "output_dir": str(output_dir),
        "work_dir": str(work_dir),
        "argv": [sys.executable, "-m", "bench.gpu", *(sys.argv[1:] if argv is None else argv)],
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    summary_path = output_dir / "summary.json"

    def save(results: list[dict], finished: bool = False) -> dict:
        seconds = round(time.perf_counter() - check.started, 1)
        summary = summarize(results, seconds=seconds, finished=finished, **context)
        write_json(str(summary_path), summary)
        return summary

    summary = save(run_steps(check.steps(), on_step=save), finished=True)
    print("\n" + format_table(summary))
    print(f"summary: {summary_path}; command output: {check.log}", flush=True)
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

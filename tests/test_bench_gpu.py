"""``python -m bench.gpu`` without CUDA: it runs, says what it skipped, and trains and resumes on the CPU."""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench import gpu

ROOT = Path(__file__).resolve().parents[1]
STEPS = ["environment", "gpu_tests", "bench_train", "train_epoch", "resume"]


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    output_dir = tmp_path_factory.mktemp("gpu_check")
    done = subprocess.run(
        [sys.executable, "-m", "bench.gpu", "--output-dir", str(output_dir), "--device", "cpu"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return done, output_dir


def test_cpu_mode_skips_the_cuda_steps_and_trains_and_resumes_on_the_cpu(cpu_run):
    done, output_dir = cpu_run
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads((output_dir / "summary.json").read_text())
    assert (summary["ok"], summary["finished"], summary["device"]) == (True, True, "cpu")
    assert (summary["passed"], summary["skipped"], summary["failed"]) == (3, 2, 0)
    steps = {step["name"]: step for step in summary["steps"]}
    assert list(steps) == STEPS
    assert all(step["seconds"] >= 0 for step in steps.values())

    assert steps["environment"]["status"] == "passed"
    assert steps["environment"]["cuda_available"] is False and steps["environment"]["cpu_count"] >= 1

    tests = steps["gpu_tests"]
    assert tests["status"] == "skipped" and tests["detail"].startswith("no CUDA device")
    assert tests["tests"] == tests["skipped"] > 0 and tests["passed"] == tests["failed"] == 0
    assert (output_dir / "pytest_gpu.xml").is_file()
    assert steps["bench_train"] == {
        "name": "bench_train",
        "status": "skipped",
        "seconds": steps["bench_train"]["seconds"],
        "detail": "no CUDA device: skipped bench.train on CUDA",
    }

    train = steps["train_epoch"]
    assert train["status"] == "passed", train["detail"]
    assert (train["exit_code"], train["epochs"], train["ran_on"], train["amp"]) == (0, [1], "cpu", "off")
    assert 0 <= train["val_ap"] <= 1 and train["train_img_s"] > 0 and train["wall_s"] > 0
    assert "--synthetic-train 16" in train["command"] and "--device cpu" in train["command"]

    resume = steps["resume"]
    assert resume["status"] == "passed", resume["detail"]
    assert (resume["exit_code"], resume["resumed_at_epoch"], resume["epochs"]) == (0, 2, [1, 2])
    assert len(resume["val_ap_per_epoch"]) == 2
    metrics = json.loads((output_dir / "resume" / "metrics.json").read_text())
    assert [row["epoch"] for row in metrics] == [1, 2]
    # The resumed copy left the train_epoch run as it was.
    assert [row["epoch"] for row in json.loads((output_dir / "train" / "metrics.json").read_text())] == [1]

    # The console says what was skipped and why, and ends with the table.
    assert re.search(r"skipped in [\d.]+ s: no CUDA device: skipped bench.train on CUDA", done.stdout)
    assert "no CUDA device: the gpu-marked tests ran and skipped" in done.stdout
    assert "ok: true (3 passed, 2 skipped, 0 failed)" in done.stdout
    log = (output_dir / "commands.log").read_text()
    ends = [line for line in log.splitlines() if line.startswith("==== exit code")]
    assert len(ends) == 3 and "-m train.coco --resume" in log  # pytest, train, resume


def test_a_failing_step_is_recorded_and_the_next_steps_still_run(tmp_path):
    log = tmp_path / "commands.log"
    grandchild = {}

    def fails():
        script = "print('preparing'); print('something broke'); raise SystemExit(3)"
        gpu.check_exit(gpu.run_command([sys.executable, "-c", script], timeout=60, log=log), "the broken command")

    def hangs():
        # A child that would outlive a plain kill of its parent: the whole group must go.
        script = (
            "import subprocess, sys, time; "
            "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); "
            "print('child', child.pid, flush=True); time.sleep(120)"
        )
        result = gpu.run_command([sys.executable, "-c", script], timeout=3, log=log)
        grandchild["pid"] = int(result.output.split("child ")[1].split()[0])
        gpu.check_exit(result, "the hanging command")

    def raises():
        raise KeyError("no such figure")

    def skips():
        raise gpu.Skipped("no CUDA device: skipped this")

    def passes():
        result = gpu.run_command([sys.executable, "-c", "print(6 * 7)"], timeout=60, log=log)
        gpu.check_exit(result, "the good command")
        return {"detail": "it worked", "answer": int(result.output)}

    seen = []
    started = time.perf_counter()
    results = gpu.run_steps(
        [("fails", fails), ("hangs", hangs), ("raises", raises), ("skips", skips), ("passes", passes)],
        on_step=lambda so_far: seen.append(len(so_far)),
    )
    assert time.perf_counter() - started < 30
    assert seen == [1, 2, 3, 4, 5]
    by_name = {r["name"]: r for r in results}
    assert [r["status"] for r in results] == ["failed", "failed", "failed", "skipped", "passed"]
    assert by_name["fails"]["detail"].startswith("the broken command: exit code 3; last lines:\n")
    assert "something broke" in by_name["fails"]["detail"]
    assert by_name["hangs"]["detail"].startswith("the hanging command: timed out after 3 s")
    assert by_name["raises"]["detail"].startswith("KeyError: 'no such figure'")
    assert by_name["skips"]["detail"] == "no CUDA device: skipped this"
    assert (by_name["passes"]["detail"], by_name["passes"]["answer"]) == ("it worked", 42)
    assert _gone(grandchild["pid"])

    summary = gpu.summarize(results, seconds=1.0)
    assert (summary["ok"], summary["failed"], summary["skipped"], summary["passed"]) == (False, 3, 1, 1)
    table = gpu.format_table(summary)
    assert "ok: false (1 passed, 1 skipped, 3 failed)" in table
    assert "exit code 3" in log.read_text() and "timed out" in log.read_text()


def test_junit_counts_separate_collection_errors(tmp_path):
    tests = tmp_path / "tests"
    tests.mkdir()
    (tests / "test_broken.py").write_text("import no_such_module_here\n")
    (tests / "test_mixed.py").write_text(
        "import pytest\n"
        "pytestmark = pytest.mark.gpu\n"
        "def test_ok(): pass\n"
        "def test_bad(): assert 1 == 2, 'one is not two'\n"
        "@pytest.mark.skip(reason='needs CUDA')\n"
        "def test_skipped(): pass\n"
    )
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers = gpu: needs CUDA\n")
    junit = tmp_path / "out.xml"
    command = [sys.executable, "-m", "pytest", "-m", "gpu", "tests", "-q", "-p", "no:cacheprovider"]
    command += ["--continue-on-collection-errors", f"--junitxml={junit}"]
    subprocess.run(command, cwd=tmp_path, capture_output=True, timeout=120)
    counts = gpu.parse_junit(junit)
    assert {k: counts[k] for k in ("tests", "passed", "failed", "errors", "skipped")} == {
        "tests": 3,
        "passed": 1,
        "failed": 1,
        "errors": 0,
        "skipped": 1,
    }
    assert counts["collection_errors"] == {
        "tests.test_broken": "ModuleNotFoundError: No module named 'no_such_module_here'"
    }
    assert counts["failing"] == ["FAILED tests.test_mixed::test_bad: AssertionError: one is not two"]


def test_bench_train_rows_survive_a_run_that_wrote_no_json():
    printed = (
        "train step  bs   64 fp32   ours   1234.5 img/s   torchvision    567.8 img/s   x2.17\n"
        "train step  bs   64 bf16   ours   2345.6 img/s   torchvision    678.9 img/s   x3.45\n"
    )
    assert gpu.parse_train_lines(printed) == [
        {"batch_size": 64, "dtype": "fp32", "ours_img_s": 1234.5, "torchvision_img_s": 567.8, "ratio": 2.17},
        {"batch_size": 64, "dtype": "bf16", "ours_img_s": 2345.6, "torchvision_img_s": 678.9, "ratio": 3.45},
    ]


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # Killed but not yet reaped (its parent died first): a zombie is gone too.
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(") ")[1].startswith("Z")

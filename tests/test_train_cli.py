"""``python -m train.coco`` end to end on tiny runs: resume after kill -9 and SIGINT, DDP, eval-only."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ssdlite.weights.checkpoint import read_checkpoint
from train import coco as train_coco
from train.synthetic import CLASSES

REPO = Path(__file__).resolve().parents[1]
EPOCHS = 6
DATA = ["--synthetic-train", "48", "--synthetic-val", "16"]
SETTINGS = [
    "--image-size",
    "96",
    "--width-mult",
    "0.35",
    "--batch-size",
    "8",
    "--workers",
    "0",
    "--no-progress",
    "--eval-every",
    "2",
]
TINY = [*DATA, *SETTINGS, "--epochs", str(EPOCHS)]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    cache = tmp_path_factory.mktemp("datasets")
    return {**os.environ, "SSDLITE_DATA_DIR": str(cache), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def run_cli(args, env, timeout=300, launcher=(sys.executable, "-m", "train.coco")):
    result = subprocess.run([*launcher, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def history(run_dir: Path) -> list[dict]:
    return json.loads((run_dir / "metrics.json").read_text())


def wait_for_epochs(run_dir: Path, process: subprocess.Popen, epochs: int, timeout: float = 240) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "the run ended before it could be interrupted"
        try:
            done = len(history(run_dir))
        except (FileNotFoundError, json.JSONDecodeError):
            done = 0
        if done >= epochs:
            return done
        time.sleep(0.02)
    raise TimeoutError(f"{run_dir}: no {epochs} epochs after {timeout} s")


@pytest.fixture(scope="module")
def reference_run(env, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("reference")
    result = run_cli([*TINY, "--output-dir", str(run_dir)], env)
    return run_dir, result


def test_uninterrupted_tiny_run_writes_every_output(reference_run):
    run_dir, result = reference_run
    for name in ("last.pt", "best.pt", "metrics.csv", "metrics.json", "curves.png", "val_detections.png"):
        assert (run_dir / name).is_file(), name
    assert "anchor fit: " in result.stdout and json.loads((run_dir / "anchor_fit.json").read_text())["boxes"] > 0
    rows = history(run_dir)
    assert [r["epoch"] for r in rows] == list(range(1, EPOCHS + 1))
    assert [r["epoch"] for r in rows if "AP" in r] == list(range(2, EPOCHS + 1, 2))
    assert all(r["img_per_s"] > 0 for r in rows)
    assert rows[-1]["loss"] < rows[0]["loss"]
    state = read_checkpoint(run_dir / "last.pt")
    assert state["train_state"]["epoch"] == EPOCHS and state["class_names"] == list(CLASSES)
    assert "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all" in result.stdout


def test_kill_9_then_resume_continues_from_the_last_checkpoint(reference_run, env, tmp_path):
    run_dir = tmp_path / "killed"
    process = subprocess.Popen(
        [sys.executable, "-m", "train.coco", *TINY, "--output-dir", str(run_dir)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        done = wait_for_epochs(run_dir, process, 2)
        process.kill()  # SIGKILL: nothing gets saved on the way out
        process.wait(timeout=30)
    finally:
        process.kill()
    assert process.returncode == -signal.SIGKILL and done < EPOCHS
    saved = read_checkpoint(run_dir / "last.pt")["train_state"]
    assert 2 <= saved["epoch"] < EPOCHS and saved["step"] == 0

    result = run_cli(["--resume", str(run_dir)], env)
    assert f"at epoch {saved['epoch'] + 1}" in result.stdout
    assert "anchor fit" not in result.stdout + result.stderr  # printed once, when the run started
    resumed, reference = history(run_dir), history(reference_run[0])
    assert [r["epoch"] for r in resumed] == list(range(1, EPOCHS + 1))
    # Augmentation and shuffling are seeded per (seed, epoch, sample) and the processes run one
    # thread: the resumed run repeats the uninterrupted one exactly.
    for got, expected in zip(resumed[saved["epoch"] :], reference[saved["epoch"] :], strict=True):
        assert got["loss"] == pytest.approx(expected["loss"], rel=1e-6)
        assert got.get("AP") == pytest.approx(expected.get("AP"), abs=1e-6)


def test_sigint_saves_mid_run_and_resume_finishes(reference_run, env, tmp_path):
    run_dir = tmp_path / "interrupted"
    process = subprocess.Popen(
        [sys.executable, "-m", "train.coco", *TINY, "--output-dir", str(run_dir)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for_epochs(run_dir, process, 1)
        time.sleep(0.3)
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130, output
    assert "stopped by signal" in output and "Traceback" not in output
    state = read_checkpoint(run_dir / "last.pt")["train_state"]
    assert 1 <= state["epoch"] < EPOCHS
    run_cli(["--resume", str(run_dir / "last.pt")], env)
    resumed, reference = history(run_dir), history(reference_run[0])
    assert [r["epoch"] for r in resumed] == list(range(1, EPOCHS + 1))
    # Even from the middle of an epoch the continuation is exact (the interrupted epoch's mean
    # loss covers only the steps after the resume, so compare the epochs after it).
    for got, expected in zip(resumed[state["epoch"] + 1 :], reference[state["epoch"] + 1 :], strict=True):
        assert got["loss"] == pytest.approx(expected["loss"], rel=1e-6)


def test_eval_only_prints_the_12_coco_numbers_and_per_class_ap(reference_run, env, tmp_path):
    run_dir, _ = reference_run
    args = ["--eval-only", "--weights", str(run_dir / "best.pt"), *DATA, "--output-dir", str(tmp_path)]
    result = run_cli(args, env)
    lines = result.stdout.splitlines()
    assert sum(line.startswith(" Average Precision") for line in lines) == 6
    assert sum(line.startswith(" Average Recall") for line in lines) == 6
    table = lines[lines.index(next(line for line in lines if line.startswith("class "))) :]
    assert [line.split()[0] for line in table[1:7]] == list(CLASSES)
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert len(saved["stats"]) == 12 and len(saved["per_class"]) == len(CLASSES)
    assert saved["stats"]["AP"] == pytest.approx(max(r.get("AP", -1) for r in history(run_dir)), abs=1e-3)


def test_eval_only_scores_an_onnx_export_as_its_checkpoint(reference_run, env, tmp_path):
    from ssdlite.cli.export import main as export_main

    run_dir, _ = reference_run
    assert export_main([str(run_dir / "best.pt"), "-o", str(tmp_path / "best.onnx")]) == 0
    scores = {}
    for weights in ("best.pt", "best.onnx"):
        path = run_dir / weights if weights.endswith(".pt") else tmp_path / weights
        output = tmp_path / f"eval-{path.suffix[1:]}"
        run_cli(["--eval-only", "--weights", str(path), *DATA, "--output-dir", str(output)], env)
        scores[weights] = json.loads((output / "eval.json").read_text())["stats"]
    assert scores["best.onnx"]["AP"] == pytest.approx(scores["best.pt"]["AP"], abs=2e-3)
    assert scores["best.onnx"]["AP50"] == pytest.approx(scores["best.pt"]["AP50"], abs=2e-3)

    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "train.coco",
            "--eval-only",
            "--weights",
            str(tmp_path / "best.onnx"),
            *DATA,
            "--output-dir",
            str(tmp_path / "best.onnx"),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert f"--output-dir {tmp_path / 'best.onnx'}: cannot create the directory" in result.stderr


def test_torchrun_two_cpu_processes_gloo(env, tmp_path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    args = [*DATA, *SETTINGS, "--epochs", "2", "--output-dir", str(tmp_path)]
    result = run_cli(args, env, launcher=(torchrun, "--standalone", "--nproc_per_node", "2", "-m", "train.coco"))
    assert "batch 8 x 2 process(es)" in result.stdout
    assert result.stdout.count("epoch 2/2:") == 1  # only rank 0 logs
    rows = history(tmp_path)
    assert [r["epoch"] for r in rows] == [1, 2] and rows[-1]["AP"] >= 0
    assert (tmp_path / "best.pt").is_file()


def test_training_goes_on_past_an_unreadable_image(tmp_path, capsys):
    rng = np.random.default_rng(0)
    images, annotations = [], []
    (tmp_path / "images").mkdir()
    for i in range(1, 9):
        name = f"{i}.png"
        images.append({"id": i, "file_name": name, "width": 64, "height": 48})
        annotations.append({"id": i, "image_id": i, "category_id": 1, "bbox": [8, 8, 30, 20], "iscrowd": 0})
        if i == 3:
            (tmp_path / "images" / name).write_bytes(b"\x89PNG truncated")
        else:
            Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(tmp_path / "images" / name)
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "x"}]}))
    data = ["--train-ann", str(ann), "--train-images", str(tmp_path / "images")]
    data += ["--val-ann", str(ann), "--val-images", str(tmp_path / "images")]
    code = train_coco.main(
        [*data, *SETTINGS, "--epochs", "1", "--augment", "none", "--backbone-weights", "none"]
        + ["--output-dir", str(tmp_path / "out")]
    )
    err = capsys.readouterr().err
    assert code == 0
    assert "skipped 1 unreadable image(s) in epoch 1" in err and "3.png" in err
    assert history(tmp_path / "out")[0]["skipped_images"] == 1

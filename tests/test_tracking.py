"""Experiment tracking (``train/tracking.py``): TensorBoard event files and MLflow runs of tiny trainings.

One run is trained for an epoch and resumed for a second (module fixture): its TensorBoard folder
and its MLflow run (a file store in a temporary folder) must read as one continuous run.
"""

import csv
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ssdlite.weights.checkpoint import read_checkpoint
from train.config import parse_args, resolve_config
from train.evaluation import EvalResult
from train.synthetic import CLASSES
from train.tracking import MLflow, RunLogger, TensorBoard, config_params, open_run_logger

REPO = Path(__file__).resolve().parents[1]
# 48 images in batches of 4: 12 steps an epoch, so the trainer logs at steps 10 and 12 of each.
TINY = [
    *("--synthetic-train", "48", "--synthetic-val", "8", "--batch-size", "4"),
    *("--image-size", "96", "--width-mult", "0.35", "--workers", "0", "--no-progress", "--eval-every", "1"),
]
STEPS = [10, 12, 22, 24]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("tracking")
    return {
        **os.environ,
        "SSDLITE_DATA_DIR": str(root / "datasets"),
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(REPO),
        "MLFLOW_TRACKING_URI": (root / "mlruns").as_uri(),
        "MLFLOW_EXPERIMENT_NAME": "ssdlite-tests",
    }


def run_cli(args, env, expect=0):
    result = subprocess.run(
        [sys.executable, "-m", "train.coco", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == expect, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def resumed_run(env, tmp_path_factory):
    """One epoch with --mlflow, then --resume to two epochs; returns the run dir and both outputs."""
    run_dir = tmp_path_factory.mktemp("run")
    first = run_cli([*TINY, "--epochs", "1", "--mlflow", "--output-dir", str(run_dir)], env)
    second = run_cli(["--resume", str(run_dir), "--epochs", "2"], env)
    return run_dir, first, second


@pytest.fixture(scope="module")
def mlflow_client(env):
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return MlflowClient(env["MLFLOW_TRACKING_URI"])


def events(path: Path) -> EventAccumulator:
    accumulator = EventAccumulator(str(path), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


def test_tensorboard_has_losses_lr_map_per_class_ap_and_images(resumed_run):
    run_dir, first, _ = resumed_run
    assert "tensorboard --logdir" in first.stdout
    board = events(run_dir / "tensorboard")
    scalars = set(board.Tags()["scalars"])
    assert {"train/loss", "train/loss_box", "train/loss_cls", "train/lr", "train/images_per_s"} <= scalars
    assert {"val/mAP", "val/AP50", "val/AP75"} <= scalars
    assert {f"val_class/{name}/AP" for name in CLASSES} <= scalars
    for tag in ("train/loss", "train/lr"):
        assert [e.step for e in board.Scalars(tag)] == STEPS, tag
    for tag in ("val/mAP", "train/epoch_loss", f"val_class/{CLASSES[0]}/AP"):
        assert [e.step for e in board.Scalars(tag)] == [12, 24], tag
    assert all(np.isfinite(e.value) and e.value > 0 for e in board.Scalars("train/loss"))
    images = board.Images("val/detections")
    assert [e.step for e in images] == [12, 24] and images[0].width > 0 and images[0].height > 0
    with open(run_dir / "metrics.csv") as f:
        last_epoch = list(csv.DictReader(f))[-1]
    assert float(last_epoch["loss"]) == pytest.approx(board.Scalars("train/epoch_loss")[-1].value, rel=1e-5)


def test_resume_appends_to_the_same_tensorboard_folder_with_the_steps_going_on(resumed_run):
    run_dir, _, _ = resumed_run
    files = sorted((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert len(files) == 2
    before, after = ([e.step for e in events(f).Scalars("train/loss")] for f in files)
    assert before == STEPS[:2] and after == STEPS[2:]


def test_mlflow_run_has_params_metrics_and_artifacts_and_resume_continues_it(resumed_run, mlflow_client):
    run_dir, first, second = resumed_run
    run_id = read_checkpoint(run_dir / "last.pt")["train_state"]["tracking"]["mlflow_run_id"]
    assert f"logging to run {run_id}" in first.stdout and f"continuing run {run_id}" in second.stdout
    experiment = mlflow_client.get_experiment_by_name("ssdlite-tests")
    assert [r.info.run_id for r in mlflow_client.search_runs([experiment.experiment_id])] == [run_id]

    run = mlflow_client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == run_dir.name
    params = run.data.params
    assert params["epochs"] == "1" and run.data.tags["resumed.epochs"] == "2"  # params are write-once
    assert params["batch_size"] == "4" and params["data.kind"] == "embedded" and params["mlflow"] == "True"
    assert params["data.synthetic.num_train"] == "48" and "cli" not in params
    for key, steps in (("train/loss", STEPS), ("train/lr", STEPS), ("val/mAP", [12, 24])):
        assert sorted(m.step for m in mlflow_client.get_metric_history(run_id, key)) == steps, key
    assert f"val_class/{CLASSES[0]}/AP" in run.data.metrics
    artifacts = {a.path for a in mlflow_client.list_artifacts(run_id)}
    assert {"best.pt", "metrics.csv", "curves.png", "val_detections.png"} <= artifacts
    images = [a.path for a in mlflow_client.list_artifacts(run_id, "val/detections")]
    assert images == ["val/detections/step_00000012.jpg", "val/detections/step_00000024.jpg"]


def test_mlflow_missing_is_one_line_before_any_data(env, tmp_path):
    fake = tmp_path / "site" / "mlflow"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('No module named mlflow')\n")
    env = {**env, "PYTHONPATH": f"{fake.parent}{os.pathsep}{REPO}", "SSDLITE_DATA_DIR": str(tmp_path / "data")}
    result = run_cli([*TINY, "--epochs", "1", "--mlflow", "--output-dir", str(tmp_path / "run")], env, expect=2)
    assert result.stderr.strip() == "error: --mlflow needs MLflow: pip install 'ssdlite[mlflow]'"
    assert not (tmp_path / "data").exists() and not (tmp_path / "run").exists()


def test_unreachable_mlflow_warns_once_and_the_run_finishes(env, tmp_path):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**env, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}"}
    result = run_cli([*TINY, "--epochs", "1", "--mlflow", "--output-dir", str(tmp_path)], env)
    warnings = [line for line in result.stderr.splitlines() if "MLflow" in line]
    assert len(warnings) == 1 and warnings[0].startswith(f"warning: MLflow at http://127.0.0.1:{port}:"), warnings
    assert (tmp_path / "last.pt").is_file() and (tmp_path / "best.pt").is_file()
    assert [e.step for e in events(tmp_path / "tensorboard").Scalars("train/loss")] == STEPS[:2]
    assert "mlflow_run_id" not in read_checkpoint(tmp_path / "last.pt")["train_state"]["tracking"]


class FailingClient:
    """An MLflow client whose server went away after the first call."""

    def __init__(self):
        self.calls = 0

    def log_batch(self, *args):
        self.calls += 1
        if self.calls > 1:
            raise ConnectionError("[Errno 111] Connection refused")

    def set_terminated(self, *args):
        self.calls += 1
        raise AssertionError("not reached once the backend is off")


def test_mlflow_failing_mid_run_warns_once_and_turns_itself_off(capsys):
    client = FailingClient()
    backend = MLflow(client, "run", "http://mlflow.invalid")
    logger = RunLogger([backend])
    for step in range(1, 6):
        logger.log_step(step, {"loss": 1.0 / step, "lr": 0.1})  # never raises, never waits on the server
    logger.close()
    assert backend.failed and client.calls == 2
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert warnings == [
        "warning: MLflow logging failed ([Errno 111] Connection refused); MLflow is off for the rest of this run, "
        "TensorBoard and metrics.csv go on"
    ]


def test_tensorboard_resume_drops_what_a_killed_run_logged_after_its_checkpoint(tmp_path):
    killed = TensorBoard(tmp_path)
    for step in (10, 20, 30):
        killed.scalars(step, {"train/loss": float(step)})
    killed.close("KILLED")  # as if killed after step 30, its last checkpoint at step 20
    resumed = TensorBoard(tmp_path, start_step=20, resuming=True)
    for step in (30, 40):
        resumed.scalars(step, {"train/loss": step + 0.5})
    resumed.close("FINISHED")
    assert [(e.step, e.value) for e in events(tmp_path).Scalars("train/loss")] == [
        (10, 10.0),
        (20, 20.0),
        (30, 30.5),
        (40, 40.5),
    ]


def test_epoch_figures_skip_cocos_no_ground_truth_marker(tmp_path):
    logged = {}

    class Recorder:
        def scalars(self, step, scalars):
            logged.update(scalars)

        def flush(self):
            pass

    stats = {"AP": 0.5, "AP50": 0.7, "AP75": 0.4, "AP_large": -1.0}
    per_class = [{"name": "disc", "category_id": 1, "AP": 0.5, "AP50": -1.0, "gt": 3}]
    row = {"loss": 1.5, "loss_box": 0.5, "loss_cls": 1.0, "img_per_s": 80.0}
    RunLogger([Recorder()]).log_epoch(3, 36, row, EvalResult(stats, per_class))
    assert logged["val/mAP"] == 0.5 and logged["val/AP75"] == 0.4 and logged["val_class/disc/AP"] == 0.5
    assert "val/AP_large" not in logged and "val_class/disc/AP50" not in logged and "val/AP" not in logged
    assert logged["train/images_per_s"] == 80.0 and logged["train/epoch"] == 3


def test_images_go_to_every_backend_as_jpeg():
    drawn = []

    class Recorder:
        def image(self, tag, step, jpeg, size):
            drawn.append((tag, step, jpeg[:3], size))

    image = np.zeros((8, 16, 3), np.uint8)
    RunLogger([Recorder(), Recorder()]).log_images("val/detections", 3, image)
    RunLogger([Recorder()]).log_images("val/detections", 4, None)  # no readable validation image
    assert drawn == [("val/detections", 3, b"\xff\xd8\xff", (8, 16))] * 2


def test_params_are_the_flat_config_and_nothing_logs_off_rank_0_or_when_off(tmp_path):
    config = resolve_config(*parse_args(["--classes", "disc,ring", "--tensorboard", "off"]))
    params = config_params(config)
    assert params["classes"] == "disc,ring" and params["data.kind"] == "embedded" and "cli" not in params
    assert params["data.synthetic.num_train"] == str(config.data.synthetic.num_train)
    assert all(isinstance(v, str) and len(v) <= 500 for v in params.values())
    assert not open_run_logger(config, tmp_path / "a", is_main=True, start_step=0, resumed=None).active
    on = resolve_config(*parse_args(["--mlflow"]))
    assert not open_run_logger(on, tmp_path / "b", is_main=False, start_step=0, resumed=None).active
    assert not list(tmp_path.iterdir())

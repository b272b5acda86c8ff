"""Experiment tracking: TensorBoard (on by default, in ``RUN_DIR/tensorboard``) and MLflow (``--mlflow``).

The trainer talks to one :class:`RunLogger`, which hands everything to its backends. Only the
main process logs: the other ranks get a logger without backends. The x axis is the global
optimisation step everywhere (epoch figures at the step where the epoch ended), so a resumed run
continues the same curves: TensorBoard writes into the same folder and drops what a killed run
logged after its last checkpoint, and MLflow reopens the run whose id the checkpoint keeps.

MLflow honours ``MLFLOW_TRACKING_URI`` (default: the file store ``./mlruns``, which needs no
server and no database) and ``MLFLOW_EXPERIMENT_NAME`` (default ``ssdlite``). A store that cannot
be reached costs one warning, and a store that fails mid-run turns MLflow off with one warning:
training and the local outputs go on either way.
"""

import contextlib
import dataclasses
import math
import os
import queue
import re
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .config import TrainConfig, UsageError
from .evaluation import EvalResult

EXPERIMENT = "ssdlite"
DEFAULT_STORE = "mlruns"
INSTALL_MLFLOW = "pip install 'ssdlite[mlflow]'"
# The connection probe fails fast instead of retrying for minutes (mlflow's default: 7 retries, 120 s timeout).
PROBE_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
CLOSE_TIMEOUT_S = 120.0
PARAM_MAX_CHARS = 500
# JPEG: TensorBoard checksums every byte in pure Python (~6 MB/s, holding the GIL); the PNG of a grid
# of the embedded set's textured images is 800 kB, this JPEG 100 kB.
IMAGE_QUALITY = 85


def require_backends(config: TrainConfig):
    """Refuses, before any data is read, a backend whose package is not installed."""
    if config.mlflow:
        try:
            import mlflow  # noqa: F401
        except ImportError:
            raise UsageError(f"--mlflow needs MLflow: {INSTALL_MLFLOW}") from None
    if config.tensorboard:
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            raise UsageError(
                "TensorBoard logging needs tensorboard: pip install 'ssdlite[train]' (or --tensorboard off)"
            ) from None


class RunLogger:
    """What the trainer logs, given to every backend; without backends every call does nothing."""

    def __init__(self, backends: Iterable[Any] = (), carried: dict | None = None):
        self._backends = list(backends)
        self._carried = dict(carried or {})  # a resumed run's ids, kept even when this part logs elsewhere

    @property
    def active(self) -> bool:
        return bool(self._backends)

    @property
    def state(self) -> dict:
        """What the checkpoint keeps so that ``--resume`` continues the same tracked run."""
        return {**self._carried, **{key: value for backend in self._backends for key, value in backend.state().items()}}

    def log_params(self, config: TrainConfig):
        params = config_params(config)
        for backend in self._backends:
            backend.params(params)

    def step_callback(self, first_step: int) -> Callable[[int, dict[str, float]], None] | None:
        """For ``train_one_epoch``: its step within the epoch, offset by the steps of the epochs before."""
        return (lambda step, scalars: self.log_step(first_step + step, scalars)) if self.active else None

    def log_step(self, step: int, scalars: dict[str, float]):
        """Training figures over the last few steps: loss, loss_box, loss_cls, lr."""
        self._scalars(step, {f"train/{name}": value for name, value in scalars.items()})

    def log_epoch(self, epoch: int, step: int, row: dict, result: EvalResult | None = None):
        """An epoch's means (``row``, as in metrics.csv) and, after an evaluation, its COCO numbers."""
        scalars = {
            "train/epoch": epoch,
            "train/epoch_loss": row.get("loss"),
            "train/epoch_loss_box": row.get("loss_box"),
            "train/epoch_loss_cls": row.get("loss_cls"),
            "train/images_per_s": row.get("img_per_s"),
        }
        if result is not None:
            # COCO writes -1 where the data has no ground truth (e.g. no small objects): not a score.
            scalars["val/mAP"] = result.map
            scalars.update({f"val/{name}": value for name, value in result.stats.items() if name != "AP"})
            for row_class in result.per_class:
                scalars[f"val_class/{row_class['name']}/AP"] = row_class["AP"]
                scalars[f"val_class/{row_class['name']}/AP50"] = row_class["AP50"]
            scalars = {k: v for k, v in scalars.items() if not (k.startswith("val") and v is not None and v < 0)}
        self._scalars(step, scalars)
        for backend in self._backends:
            backend.flush()  # before the checkpoint: a killed run keeps what it logged up to there

    def log_images(self, tag: str, step: int, image: np.ndarray | None):
        """Logs an RGB uint8 image (a grid of validation detections: 0.1-0.5 s to draw on 2 cores)."""
        if image is not None and self._backends:
            bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
            ok, jpeg = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, IMAGE_QUALITY])
            if ok:
                for backend in self._backends:
                    backend.image(tag, step, jpeg.tobytes(), image.shape[:2])

    def log_artifacts(self, paths: Iterable[Path]):
        existing = [Path(p) for p in paths if Path(p).is_file()]
        for backend in self._backends:
            backend.artifacts(existing)

    def close(self, status: str = "FINISHED"):
        """``status``: FINISHED, KILLED (stopped by a signal, resumable) or FAILED."""
        backends, self._backends = self._backends, []
        for backend in backends:
            backend.close(status)

    def _scalars(self, step: int, scalars: dict[str, Any]):
        finite = {k: float(v) for k, v in scalars.items() if v is not None and math.isfinite(v)}
        if finite:
            for backend in self._backends:
                backend.scalars(step, finite)


def open_run_logger(
    config: TrainConfig, run_dir: Path, *, is_main: bool, start_step: int, resumed: dict | None
) -> RunLogger:
    """The backends ``config`` asks for, writing about ``run_dir``; nothing on ranks other than 0.

    Args:
        start_step: the global step the run starts (or resumes) at.
        resumed: the ``state`` of the logger that wrote the checkpoint being resumed, if any.
    """
    if not is_main:
        return RunLogger()
    backends: list[Any] = []
    if config.tensorboard:
        backends.append(TensorBoard(run_dir / "tensorboard", start_step, resuming=resumed is not None))
        print(f"TensorBoard: {run_dir / 'tensorboard'} (tensorboard --logdir {run_dir.parent})")
    if config.mlflow:
        backend = MLflow.open(run_dir, resumed or {})
        if backend is not None:
            backends.append(backend)
    return RunLogger(backends, carried=resumed)


def config_params(config: TrainConfig) -> dict[str, str]:
    """The resolved config, flat (``data.synthetic.num_train``), every value a short string."""
    flat: dict[str, str] = {}

    def add(name: str, value):
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            for f in dataclasses.fields(value):
                add(f"{name}.{f.name}", getattr(value, f.name))
        elif isinstance(value, tuple | list):
            flat[name] = ",".join(map(str, value))[:PARAM_MAX_CHARS]
        else:
            flat[name] = str(value)[:PARAM_MAX_CHARS]

    for f in dataclasses.fields(config):
        if f.name != "cli":
            add(f.name, getattr(config, f.name))
    return flat


def warn(message: str):
    print(f"warning: {message}", file=sys.stderr, flush=True)


def short_error(error: BaseException) -> str:
    """One line: the OS reason when there is one (mlflow wraps it in a page of urllib3 text)."""
    text = str(error)
    reason = re.search(r"\[Errno -?\d+\] [^'\")\]]+", text)
    if reason:
        return reason.group(0).strip()
    first = text.strip().splitlines()[0] if text.strip() else type(error).__name__
    return first if len(first) <= 200 else first[:197] + "..."


class TensorBoard:
    """Event files that ``tensorboard --logdir runs`` shows; several runs of one RUN_DIR append."""

    def __init__(self, log_dir: Path, start_step: int = 0, resuming: bool = False):
        from torch.utils.tensorboard import SummaryWriter

        # Resuming, TensorBoard drops what a killed run logged after the checkpoint (it is logged again);
        # the checkpoint's own step stays: its epoch figures are not repeated.
        # A queue of 10 (the default) blocks the training thread on the writer thread every 10 values:
        # 100+ ms an epoch on a busy 2-core machine.
        self.writer = SummaryWriter(str(log_dir), max_queue=1000, purge_step=start_step + 1 if resuming else None)
        self.start_step = start_step

    def state(self) -> dict:
        return {}

    def params(self, params: dict[str, str]):
        table = "\n".join(["| setting | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in params.items())])
        self.writer.add_text("config", table, self.start_step)

    def scalars(self, step: int, scalars: dict[str, float]):
        for name, value in scalars.items():
            self.writer.add_scalar(name, value, step)

    def image(self, tag: str, step: int, jpeg: bytes, size: tuple[int, int]):
        from tensorboard.compat.proto.summary_pb2 import Summary

        height, width = size
        image = Summary.Image(height=height, width=width, colorspace=3, encoded_image_string=jpeg)
        # add_image would encode a PNG through PIL: ten times cv2's time, and eight times the bytes.
        self.writer._get_file_writer().add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), step)

    def artifacts(self, paths: list[Path]):
        pass  # they are next to the event files already

    def flush(self):
        self.writer.flush()

    def close(self, status: str):
        self.writer.close()


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class MLflow:
    """One MLflow run; the calls go through a background thread so a slow server never holds up a step.

    The first call that fails turns the backend off (one warning); the run goes on without it.
    """

    def __init__(self, client, run_id: str, tracking_uri: str, logged_params: dict[str, str] | None = None):
        self.client, self.run_id, self.tracking_uri = client, run_id, tracking_uri
        self.logged_params = dict(logged_params or {})
        self.failed = False
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._work, name="mlflow-logger", daemon=True)
        self._thread.start()

    @classmethod
    def open(cls, run_dir: Path, resumed: dict) -> "MLflow | None":
        """Reaches the store and starts (or, resuming, reopens) the run; None with a warning if it cannot."""
        from mlflow import MlflowClient

        uri = os.environ.get("MLFLOW_TRACKING_URI") or resumed.get("mlflow_tracking_uri")
        uri = uri or Path(DEFAULT_STORE).resolve().as_uri()
        if "://" not in uri or uri.startswith("file:"):
            # mlflow 3 refuses its file store unless asked; it is the one local store mlflow-skinny can write.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or EXPERIMENT
        run_id = resumed.get("mlflow_run_id")
        try:
            with _environment(PROBE_ENV):
                client = MlflowClient(uri)
                run = None
                if run_id:
                    try:
                        run = client.get_run(run_id)
                    except Exception as error:
                        warn(f"MLflow run {run_id} not found at {uri} ({short_error(error)}); starting a new one")
                if run is not None:
                    client.update_run(run.info.run_id, status="RUNNING")
                else:
                    experiment = client.get_experiment_by_name(name)
                    experiment_id = experiment.experiment_id if experiment else client.create_experiment(name)
                    tags = {"ssdlite.run_dir": str(run_dir.resolve())}
                    run = client.create_run(experiment_id, run_name=run_dir.name, tags=tags)
        except Exception as error:
            warn(f"MLflow at {uri}: {short_error(error)}; going on without it (TensorBoard and metrics.csv go on)")
            return None
        verb = "continuing" if run_id == run.info.run_id else "logging to"
        print(f"MLflow: {verb} run {run.info.run_id} at {uri}")
        return cls(client, run.info.run_id, uri, run.data.params)

    def state(self) -> dict:
        return {"mlflow_run_id": self.run_id, "mlflow_tracking_uri": self.tracking_uri}

    def params(self, params: dict[str, str]):
        from mlflow.entities import Param, RunTag

        new = [Param(k, v) for k, v in params.items() if k not in self.logged_params]
        # A resumed run may change settings (e.g. more --epochs); mlflow params are write-once, so: tags.
        changed = [
            RunTag(f"resumed.{k}", v) for k, v in params.items() if self.logged_params.get(k, v) not in (v, "None")
        ]
        self.logged_params.update(params)
        for start in range(0, max(len(new), len(changed)), 100):
            self._submit(self.client.log_batch, self.run_id, [], new[start : start + 100], changed[start : start + 100])

    def scalars(self, step: int, scalars: dict[str, float]):
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(_metric_name(k), v, now, step) for k, v in scalars.items()]
        for start in range(0, len(metrics), 1000):
            self._submit(self.client.log_batch, self.run_id, metrics[start : start + 1000])

    def image(self, tag: str, step: int, jpeg: bytes, size: tuple[int, int]):
        self._submit(self._log_jpeg, _metric_name(tag), step, jpeg)

    def artifacts(self, paths: list[Path]):
        for path in paths:
            self._submit(self.client.log_artifact, self.run_id, str(path))

    def flush(self):
        pass  # the queue drains by itself; close() waits for it

    def close(self, status: str):
        self._submit(self.client.set_terminated, self.run_id, status)
        self._queue.put(None)
        self._thread.join(CLOSE_TIMEOUT_S)
        if self._thread.is_alive():
            warn(
                f"MLflow: gave up after {CLOSE_TIMEOUT_S:.0f} s waiting for {self.tracking_uri}; the rest is not logged"
            )

    def _log_jpeg(self, folder: str, step: int, jpeg: bytes):
        with tempfile.TemporaryDirectory() as temporary:
            path = Path(temporary) / f"step_{step:08d}.jpg"
            path.write_bytes(jpeg)
            self.client.log_artifact(self.run_id, str(path), folder)

    def _submit(self, call: Callable, *args):
        if not self.failed:
            self._queue.put((call, args))

    def _work(self):
        while (item := self._queue.get()) is not None:
            call, args = item
            if self.failed:
                continue
            try:
                call(*args)
            except Exception as error:
                self.failed = True
                warn(
                    f"MLflow logging failed ({short_error(error)}); MLflow is off for the rest of this run, "
                    "TensorBoard and metrics.csv go on"
                )


def _metric_name(name: str) -> str:
    return re.sub(r"[^/\w.\- :]", "_", name)

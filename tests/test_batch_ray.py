"""``ray_detect`` on a local 2-CPU Ray finds what the single-process Detector finds (needs the ray extra)."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="needs the ray extra (pip install '.[ray]')")

from ssdlite import Detector, read_image  # noqa: E402
from ssdlite.batch.ray import RaySetupError, RayWorkerError, pool_for, ray_detect  # noqa: E402
from ssdlite.batch.records import Problem, Record, Source  # noqa: E402
from ssdlite.images import SAMPLE_PHOTOS, write_image  # noqa: E402

# Ray Data's DataContext() warns about its own deprecated fields.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")

OPTIONS = {"score_threshold": 0.05, "max_detections": 100}
UNREADABLE = ("broken.jpg", "empty.jpg")

# A pool that leaves the read tasks no CPU hangs rather than fails (seen with 2 actors at 1 CPU each
# on a 2-CPU Ray); a run takes ~20 s on 2 busy cores, so this bounds a regression to a failure.
RAY_TIMEOUT_S = 180


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> list[Source]:
    """12 inputs: the 2 sample photos 4 times each, a smaller PNG, a noise image and 2 unreadable files."""
    root = tmp_path_factory.mktemp("corpus")
    photos = sorted(SAMPLE_PHOTOS.glob("*.jpg"))
    paths = []
    for copy in range(4):
        for photo in photos:
            paths.append(Path(shutil.copy(photo, root / f"{photo.stem}_{copy}.jpg")))
    small = read_image(photos[0])[::3, ::2]  # 171 x 256, not square
    write_image(root / "small.png", np.ascontiguousarray(small))
    noise = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    write_image(root / "noise.png", noise)
    (root / "broken.jpg").write_bytes(b"not an image")
    (root / "empty.jpg").write_bytes(b"")
    paths += [root / name for name in ("small.png", "noise.png", *UNREADABLE)]
    return [Source(index, path, path.stem) for index, path in enumerate(paths)]


def single_process(model, sources: list[Source], backend=None) -> dict[int, Record]:
    """The reference: one Detector, one image per call, in a plain loop."""
    detector = Detector.load(model, backend=backend, threads=1)
    records = {}
    for source in sources:
        if source.path.name in UNREADABLE:
            continue
        image = read_image(source.path)
        (detections,) = detector.predict_batch([image], **OPTIONS)
        height, width = image.shape[:2]
        records[source.index] = Record(source.index, source.key, source.name, width, height, detections)
    return records


def assert_same_results(results, expected: dict[int, Record], sources: list[Source]):
    assert sorted(r.index for r in results) == [s.index for s in sources]  # each source once
    records = {r.index: r for r in results if isinstance(r, Record)}
    problems = {r.index: r for r in results if isinstance(r, Problem)}
    assert records.keys() == expected.keys()
    for index, record in records.items():
        reference = expected[index]
        assert (record.image, record.name, record.width, record.height) == (
            reference.image,
            reference.name,
            reference.width,
            reference.height,
        )
        assert_same_detections(record.detections, reference.detections, record.image)
    assert sum(len(r.detections) for r in records.values()) > 0  # the photos have people in them
    for source in sources:
        if source.path.name in UNREADABLE:
            assert problems[source.index].image == source.key
            assert problems[source.index].error.startswith(f"{source.path}: ")


def assert_same_detections(found: list[dict], expected: list[dict], image: str):
    """Same count, and each expected detection matched by one of the same class, box within 1e-3 px and
    score within 1e-5 (matched, not zipped: near-equal scores may swap places between batch sizes)."""
    assert len(found) == len(expected), image
    unmatched = list(found)
    for want in expected:
        match = next(
            (
                got
                for got in unmatched
                if (got["class_id"], got["label"]) == (want["class_id"], want["label"])
                and abs(got["score"] - want["score"]) <= 1e-5
                and np.abs(np.subtract(got["box"], want["box"])).max() <= 1e-3
            ),
            None,
        )
        assert match is not None, f"{image}: no match for {want}"
        unmatched.remove(match)


@pytest.mark.timeout(RAY_TIMEOUT_S)
def test_two_actors_on_a_local_ray_it_starts_find_the_single_process_detections(corpus, person_checkpoint):
    """2 actors on 2 CPUs: the pool size that hung when each actor took a whole CPU."""
    expected = single_process(person_checkpoint, corpus)
    try:
        results = list(ray_detect(corpus, model=person_checkpoint, **OPTIONS, batch_size=4, workers=2, num_cpus=2))
        assert not ray.is_initialized()  # it started that Ray, so it shut it down
    finally:
        ray.shutdown()
    assert_same_results(results, expected, corpus)


@pytest.mark.timeout(RAY_TIMEOUT_S)
def test_onnxruntime_on_a_running_ray_finds_the_single_process_detections(corpus, person_checkpoint):
    """The default pool (1 actor on 2 CPUs) on a Ray the caller started, which stays up."""
    expected = single_process(person_checkpoint, corpus, backend="onnxruntime")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        results = list(ray_detect(corpus, model=person_checkpoint, backend="onnxruntime", **OPTIONS))
        assert ray.is_initialized()
        # An ssdlite error on the workers comes back as one line, not as Ray's traceback.
        with pytest.raises(RayWorkerError, match=r"^unknown class names \['zebra'\]; this model knows \['person'\]$"):
            list(ray_detect(corpus[:2], model=person_checkpoint, backend="onnxruntime", classes=["zebra"]))
    finally:
        ray.shutdown()
    assert_same_results(results, expected, corpus)


def test_video_frames_are_refused_before_ray_starts(corpus, person_checkpoint):
    frame = Source(len(corpus), corpus[0].path.with_suffix(".mp4"), "clip_000000", frame=0)
    with pytest.raises(RaySetupError, match="^--ray reads image files; detect video frames without --ray$"):
        ray_detect([*corpus, frame], model=person_checkpoint)
    assert not ray.is_initialized()


@pytest.mark.parametrize("cpus", [0.5, 1, 2, 3, 4, 8, 16, 96])
@pytest.mark.parametrize("workers", [None, 1, 2, 3, 8, 200])
def test_the_pool_always_leaves_the_read_tasks_cpu_and_is_not_fused_with_them(cpus, workers):
    pool = pool_for(cpus, workers)
    assert 1 <= pool.actors <= max(1, cpus) and pool.threads >= 1 and pool.read_tasks >= 1
    assert pool.actors * pool.actor_cpus <= cpus / 2 + 1e-9  # what hung: actors holding every CPU
    assert pool.actors * pool.actor_cpus + pool.read_tasks * pool.read_cpus <= cpus + 1e-9
    assert pool.read_cpus != pool.actor_cpus  # equal requests make Ray Data decode inside the actors
    if workers and workers <= cpus:
        assert pool.actors == workers


@pytest.mark.timeout(RAY_TIMEOUT_S)
def test_the_detect_command_with_ray_writes_what_the_local_run_writes(corpus, person_checkpoint, tmp_path, capsys):
    from ssdlite.cli.detect import main as detect_main

    folder = corpus[0].path.parent
    common = [str(folder), "--model", str(person_checkpoint), "--score-threshold", "0.05", "--format", "jsonl"]
    assert detect_main([*common, "-o", str(tmp_path / "local")]) == 1  # the two unreadable files
    assert detect_main([*common, "-o", str(tmp_path / "ray"), "--ray", "--ray-workers", "1"]) == 1
    err = capsys.readouterr().err
    assert all(f"{folder / name}: " in err for name in UNREADABLE)
    local, on_ray = (
        [json.loads(line) for line in (tmp_path / run / "detections.jsonl").read_text().splitlines()]
        for run in ("local", "ray")
    )
    assert [line["image"] for line in on_ray] == [line["image"] for line in local] and len(local) == 10
    for got, want in zip(on_ray, local, strict=True):
        assert_same_detections(got["detections"], want["detections"], got["image"])

    for refused in (common[:-2], [*common, "-o", str(tmp_path / "x"), "--slice", "640"]):
        with pytest.raises(SystemExit):
            detect_main([*refused, "--ray"])
        assert "--ray writes --format jsonl, coco, yolo or labelstudio" in capsys.readouterr().err

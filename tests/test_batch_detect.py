"""Corpus detection: inputs, batching, resume after SIGKILL, one-line errors (``ssdlite detect``)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from ssdlite import save_checkpoint
from ssdlite.batch.inputs import InputError, collect_sources
from ssdlite.batch.journal import JOURNAL_NAME, Journal, JournalError
from ssdlite.batch.records import Problem, Record
from ssdlite.batch.runner import detect_sources
from ssdlite.cli.detect import main as detect_main
from ssdlite.runtime import Detector

NAMES = ["cat", "dog", "bird"]


def write_images(folder: Path, count: int, size=(48, 64), start: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(start)
    paths = []
    for i in range(start, start + count):
        path = folder / f"img{i:04d}.png"
        cv2.imwrite(str(path), rng.integers(0, 256, (*size, 3), dtype=np.uint8))
        paths.append(path)
    return paths


def write_video(path: Path, frames: int) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for i in range(frames):
        writer.write(np.full((48, 64, 3), i * 20 % 256, np.uint8))
    writer.release()
    return path


@pytest.fixture
def checkpoint(tmp_path, small_model):
    return save_checkpoint(tmp_path / "small.pt", small_model, NAMES)


def test_inputs_from_folders_globs_lists_and_videos(tmp_path):
    write_images(tmp_path / "a", 2)
    write_images(tmp_path / "a" / "sub", 1, start=5)
    write_images(tmp_path / "b", 2, start=10)
    (tmp_path / "a" / "notes.md").write_text("not an image")
    video = write_video(tmp_path / "clip.avi", 7)
    listing = tmp_path / "list.txt"
    listing.write_text("# two of b, one twice\nb/img0010.png\n\nb/img0011.png\nb/img0010.png\nmissing.png\n")

    inputs = collect_sources([str(tmp_path / "a"), str(listing), str(video), str(tmp_path / "b" / "*.png")], 3)
    keys = [s.key for s in inputs.sources]
    assert keys == [
        str(tmp_path / "a" / "img0000.png"),
        str(tmp_path / "a" / "img0001.png"),
        str(tmp_path / "a" / "sub" / "img0005.png"),
        str(tmp_path / "b" / "img0010.png"),
        str(tmp_path / "b" / "img0011.png"),
        str(tmp_path / "b" / "img0010.png"),
        f"{video}#0",
        f"{video}#3",
        f"{video}#6",
        str(tmp_path / "b" / "img0010.png"),
        str(tmp_path / "b" / "img0011.png"),
    ]
    assert [s.index for s in inputs.sources] == list(range(len(keys)))
    names = [s.name for s in inputs.sources]
    assert names[:7] == ["img0000", "img0001", "sub__img0005", "img0010", "img0011", "img0010_2", "clip_000000"]
    assert len(set(names)) == len(names)
    assert [p.error for p in inputs.missing] == [f"{tmp_path / 'missing.png'}: no such file"]

    with pytest.raises(InputError, match="--vid-stride must be at least 1"):
        collect_sources([str(video)], 0)
    with pytest.raises(InputError, match=r"nothing\*.jpg: the pattern matches no image or video file"):
        collect_sources([str(tmp_path / "nothing*.jpg")])


def test_batches_give_the_same_detections_as_one_at_a_time(tmp_path, small_model):
    paths = write_images(tmp_path / "in", 7, size=(120, 160))
    corrupt = tmp_path / "in" / "img0003.png"
    corrupt.write_bytes(b"\x89PNG broken")
    detector = Detector.from_model(small_model, NAMES)
    sources = collect_sources([str(tmp_path / "in")]).sources
    results = detect_sources(detector, sources, batch_size=3, workers=2)
    assert [r.index for r in results] == list(range(7))
    assert isinstance(results[3], Problem) and "img0003.png: not a readable image" in results[3].error
    for path, result in zip(paths, results, strict=True):
        if path == corrupt:
            continue
        expected = detector.predict(cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB), score_threshold=0.0)
        got = detect_sources(detector, [s for s in sources if s.key == str(path)], batch_size=1)[0]
        assert isinstance(result, Record) and (result.width, result.height) == (160, 120)
        assert len(got.detections) == len(expected)
        np.testing.assert_allclose([d["box"] for d in got.detections], [d["box"] for d in expected], atol=1e-3)


def test_video_frames_every_nth(tmp_path, checkpoint, capsys):
    video = write_video(tmp_path / "clip.avi", 10)
    assert detect_main([str(video), "--vid-stride", "4", "--model", str(checkpoint), "--score-threshold", "0"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["image"] for line in lines] == [f"{video}#0", f"{video}#4", f"{video}#8"]
    assert all((line["width"], line["height"]) == (64, 48) for line in lines)

    out = tmp_path / "out"
    assert (
        detect_main([str(video), "--vid-stride", "4", "--model", str(checkpoint), "--format", "yolo", "-o", str(out)])
        == 0
    )
    frames = ["clip_000000", "clip_000004", "clip_000008"]
    assert sorted(p.name for p in (out / "images").iterdir()) == [f"{name}.jpg" for name in frames]
    assert sorted(p.name for p in (out / "labels").iterdir()) == [f"{name}.txt" for name in frames]
    assert cv2.imread(str(out / "images" / "clip_000004.jpg")).shape == (48, 64, 3)


def run_cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "ssdlite", "detect", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_run_killed_with_sigkill_resumes_to_the_same_outputs(tmp_path, checkpoint):
    write_images(tmp_path / "in", 240, size=(96, 128))
    common = [
        str(tmp_path / "in"),
        "--model",
        str(checkpoint),
        "--backend",
        "torch",
        "--score-threshold",
        "0.2",
        "--format",
        "jsonl,coco",
        "--batch-size",
        "2",
        "--workers",
        "1",
    ]

    reference = run_cli(*common, "-o", str(tmp_path / "uninterrupted"))
    assert reference.wait(timeout=300) == 0, reference.stderr.read()

    killed = run_cli(*common, "-o", str(tmp_path / "resumed"))
    journal = tmp_path / "resumed" / JOURNAL_NAME
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and killed.poll() is None:
        if journal.exists() and journal.read_text().count("\n") > 20:
            break
        time.sleep(0.01)
    assert killed.poll() is None, "the run finished before it could be killed; give it more images"
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    lines_at_kill = journal.read_text().count("\n")
    assert 20 < lines_at_kill < 241 and not (tmp_path / "resumed" / "coco.json").exists()

    resumed = run_cli(*common, "-o", str(tmp_path / "resumed"))
    assert resumed.wait(timeout=300) == 0
    assert "resuming:" in resumed.stderr.read()
    for name in ("detections.jsonl", "coco.json"):
        assert (tmp_path / "resumed" / name).read_bytes() == (tmp_path / "uninterrupted" / name).read_bytes()
    records = [json.loads(line) for line in (tmp_path / "resumed" / "detections.jsonl").read_text().splitlines()]
    assert len(records) == 240 and len({r["image"] for r in records}) == 240


def test_a_journal_of_other_arguments_is_refused_and_a_torn_line_is_cut(tmp_path):
    journal = Journal(tmp_path, {"model": "a", "score_threshold": 0.5}).open()
    journal.append([Record(0, "x.jpg", "x", 10, 10, []), Problem(1, "y.jpg", "y.jpg: no such file")])
    journal.close()
    with open(tmp_path / JOURNAL_NAME, "a") as f:
        f.write('{"record": {"index": 2, "ima')  # a write cut short by SIGKILL
    reopened = Journal(tmp_path, {"model": "a", "score_threshold": 0.5}).open()
    assert sorted(reopened.done) == [0, 1]
    reopened.append([Record(2, "z.jpg", "z", 10, 10, [])])
    reopened.close()
    assert sorted(Journal(tmp_path, {"model": "a", "score_threshold": 0.5}).open().done) == [0, 1, 2]
    with pytest.raises(JournalError, match=r"holds a run with other arguments \(score_threshold\)"):
        Journal(tmp_path, {"model": "a", "score_threshold": 0.3}).open()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--format", "coco,pascal"], "unknown format 'pascal'; choose from jsonl, coco"),
        (["--format", "coco"], "--format writes into a directory: give it with -o DIR"),
        (["--vid-stride", "0"], "--vid-stride must be at least 1"),
        (["--slice", "64"], "slice size 64 px is smaller than the model input 160 px"),
        (["--batch-size", "0"], "--batch-size must be at least 1"),
        (["--classes", "cat,zebra"], "unknown class names ['zebra']"),
    ],
)
def test_bad_arguments_are_one_line_errors_before_any_work(tmp_path, checkpoint, capsys, extra, message):
    write_images(tmp_path / "in", 2)
    assert exit_code([str(tmp_path / "in"), "--model", str(checkpoint), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "small.pt"]


def exit_code(argv: list[str]) -> int:
    """``detect_main``'s exit code, also for argparse's own errors (which exit)."""
    try:
        return detect_main(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)


def test_an_output_directory_that_cannot_be_written_is_one_line(tmp_path, checkpoint, capsys):
    write_images(tmp_path / "in", 1)
    blocker = tmp_path / "file"
    blocker.write_text("a file where the directory should go")
    code = detect_main(
        [str(tmp_path / "in"), "--model", str(checkpoint), "--format", "coco", "-o", str(blocker / "out")]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1

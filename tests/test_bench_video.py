"""``python -m bench.video`` end to end at a tiny size: webcam FPS with and without tracking, live frame age."""

import json

from bench.video import main


def test_bench_video_reports_fps_and_bounded_frame_age(person_checkpoint, tmp_path, capsys):
    argv = ["--model", str(person_checkpoint), "--rounds", "1", "--frames", "12", "--inference-ms", "60"]
    assert main([*argv, "--output-dir", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "video.json").read_text())
    assert [r["mode"] for r in results["webcam"]] == ["detect", "track"]  # round 1: plain first
    assert all(r["fps"] > 0 for r in results["webcam"])
    live = results["live"]
    assert live["inference_ms_p50"] >= 55  # slower than the 30 FPS camera
    assert live["age_max_over_inference"] < 2, live
    assert live["frames_captured"] > live["frames_processed"]  # frames were dropped, not queued
    assert "adds" in capsys.readouterr().out

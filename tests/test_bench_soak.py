"""``python -m bench.soak``, bounded and small: mixed good and bad traffic with churning WebSockets."""

import json
import math
import subprocess
import sys

from bench.soak import RSS_GROWTH_GOAL_MB

from .service_helpers import ROOT, small_checkpoint


def test_short_soak_has_no_5xx_refuses_every_bad_input_and_keeps_its_memory(tmp_path):
    model = small_checkpoint(tmp_path / "m.pt")
    results_path, log = tmp_path / "soak.json", tmp_path / "server.log"
    command = [
        sys.executable, "-m", "bench.soak", "--requests", "300", "--concurrency", "8", "--duration", "60",
        "--prime", "50", "--model", str(model), "--json", str(results_path), "--server-log", str(log),
    ]  # fmt: skip
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert results_path.exists(), run.stdout + run.stderr
    results = json.loads(results_path.read_text())
    r = results["run"]
    report = f"{run.stdout}\n{run.stderr}"

    assert r["requests"] == 300, report
    assert r["5xx"] == 0 and results["server_5xx"] == 0, report
    assert r["connection_errors"] == 0, report
    assert r["good"]["ok"] == r["good"]["sent"] > 0, report
    not_refused = {
        kind: k["outcomes"] for kind, k in r["bad_inputs"].items() if k["sent"] == 0 or k["acceptable"] < k["sent"]
    }
    assert not not_refused, f"bad inputs not answered with their 4xx: {not_refused}\n{report}"
    ws = r["websocket"]
    assert ws["connections"] >= 4 and ws["frames_answered"] > 0 and not ws["errors"], report
    rss = results["rss_mb"]
    assert all(math.isfinite(rss[key]) and rss[key] > 0 for key in ("start", "end", "peak")), rss
    assert rss["growth"] <= RSS_GROWTH_GOAL_MB, report
    assert results["server_log"]["tracebacks"] == 0, log.read_text()
    assert run.returncode == 0 and results["failed_goals"] == [], report

"""Loopback load test of the detection service against a naive FastAPI + torchvision baseline.

``python -m bench.service [--requests 1000] [--concurrency 8] [--model A,B] [--batch-sizes 2,4] [--workers 1,2]
[--rounds 3]``: starts ``python -m service`` (once per ``--model``, ``--batch-sizes`` and ``--workers`` value;
by default once, with the service's own defaults) and a baseline server: FastAPI + torchvision's
``ssdlite320_mobilenet_v3_large`` (background-dominant class biases, as in ``bench.latency``), one
request at a time. Then, for each of ``--rounds`` rounds and each server in turn (the order reversed
every other round, so a drift of the machine's load hits all alike), it sends 640x480 JPEGs made from
a real photo as multipart uploads to ``POST /detect`` from ``--concurrency`` keep-alive connections
and prints req/s, p50/p95/p99 latency and error counts, and for our services streams the same frames
over the WebSocket one at a time (fps, per-frame p50). With several rounds it prints each round's
ratio to the baseline and the medians. Everything runs on 127.0.0.1 and the load generator shares the
machine's cores with the servers (idle servers cost nothing).
"""

import argparse
import asyncio
import contextlib
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from ssdlite.images import SAMPLE_PHOTOS

from .common import machine_description, write_json

ROOT = Path(__file__).resolve().parents[1]
PHOTO = SAMPLE_PHOTOS / "grace_hopper.jpg"
BOUNDARY = "ssdlitebenchboundary"


def frame_jpeg(width: int = 640, height: int = 480) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.open(PHOTO).convert("RGB").resize((width, height)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def post_request(path: str, port: int, body: bytes, content_type: str = "image/jpeg") -> bytes:
    """The bytes of one HTTP/1.1 ``POST`` with ``body``."""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    return head + body


def multipart_request(path: str, port: int, jpeg: bytes) -> bytes:
    body = (
        (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="frame.jpg"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + jpeg
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )
    return post_request(path, port, body, f"multipart/form-data; boundary={BOUNDARY}")


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """(status, keep-alive) of one HTTP/1.1 response with a Content-Length body."""
    status = int((await reader.readline()).split()[1])
    length, keep_alive = 0, True
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value)
        elif name == "connection" and value.strip().lower() == "close":
            keep_alive = False
    await reader.readexactly(length)
    return status, keep_alive


async def http_load(port: int, request: bytes, total: int, concurrency: int, timeout: float = 30) -> dict:
    """Sends ``total`` requests over ``concurrency`` keep-alive connections (a lean client: the
    load generator runs on the same 2 cores, so it must cost the server as little as possible)."""
    latencies: list[float] = []
    errors: dict[str, int] = {}
    remaining = total

    async def worker():
        nonlocal remaining
        connection = None
        while remaining > 0:
            remaining -= 1
            started = time.perf_counter()
            try:
                if connection is None:
                    connection = await asyncio.open_connection("127.0.0.1", port)
                reader, writer = connection
                writer.write(request)
                status, keep_alive = await asyncio.wait_for(read_response(reader), timeout)
            except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError, IndexError) as error:
                errors[type(error).__name__] = errors.get(type(error).__name__, 0) + 1
                connection = None
                continue
            latencies.append((time.perf_counter() - started) * 1000)
            if status != 200:
                errors[str(status)] = errors.get(str(status), 0) + 1
            if not keep_alive:
                connection[1].close()
                connection = None
        if connection:
            connection[1].close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    return {
        "requests": total,
        "seconds": elapsed,
        "req_per_s": total / elapsed,
        **percentiles(latencies),
        "errors": sum(errors.values()),
        "error_kinds": errors,
    }


async def websocket_stream(port: int, jpeg: bytes, frames: int) -> dict:
    """One frame in flight at a time (as the page does): fps and per-frame round-trip latency."""
    from websockets.asyncio.client import connect

    latencies, errors = [], 0
    async with connect(f"ws://127.0.0.1:{port}/ws", compression=None, max_size=None) as socket:
        for _ in range(5):  # warm-up
            await socket.send(jpeg)
            await socket.recv()
        started = time.perf_counter()
        for _ in range(frames):
            sent = time.perf_counter()
            await socket.send(jpeg)
            reply = json.loads(await socket.recv())
            latencies.append((time.perf_counter() - sent) * 1000)
            errors += "error" in reply
        elapsed = time.perf_counter() - started
    return {"frames": frames, "fps": frames / elapsed, **percentiles(latencies), "errors": errors}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc; NaN elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentiles(values: list[float]) -> dict:
    if not values:
        return {"p50": float("nan"), "p95": float("nan"), "p99": float("nan")}
    values = sorted(values)

    def at(q):
        return values[min(len(values) - 1, round(q * (len(values) - 1)))]

    return {"p50": statistics.median(values), "p95": at(0.95), "p99": at(0.99)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_ready(process: subprocess.Popen, url: str, timeout: float):
    """Polls ``url``/readyz until it answers 200.

    Raises:
        RuntimeError: the process exited first.
        TimeoutError: not ready within ``timeout`` seconds.
    """
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"exited with {process.returncode}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"not ready after {timeout:g} s")


class Server:
    """A server subprocess on a free loopback port, waited on until /readyz answers 200."""

    def __init__(self, command: list[str], env: dict[str, str], log: Path | None = None):
        """``command`` gets ``--port PORT`` appended; its output goes to ``log`` if given."""
        self.port = free_port()
        self.command = [*command, "--port", str(self.port)]
        self.env = {**os.environ, **env}
        self.log = log

    def __enter__(self) -> "Server":
        output = open(self.log, "wb") if self.log else None  # noqa: SIM115 - the child holds it open
        try:
            self.process = subprocess.Popen(
                self.command, cwd=ROOT, env=self.env, stdout=output, stderr=output and subprocess.STDOUT
            )
        finally:
            if output:
                output.close()
        try:
            wait_until_ready(self.process, f"http://127.0.0.1:{self.port}", 300)
        except (RuntimeError, TimeoutError) as error:
            self.__exit__()
            raise type(error)(f"{' '.join(self.command)} {error}") from None
        return self

    def __exit__(self, *exc):
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()


def baseline_app():
    """FastAPI + torchvision SSDLite, the way one would first write it: decode, model([img]), one at a time."""
    import threading

    import torch
    from fastapi import FastAPI, UploadFile
    from PIL import Image

    from .latency import torchvision_model

    torch.set_num_threads(os.cpu_count() or 1)
    model = torchvision_model()
    lock = threading.Lock()
    app = FastAPI()

    @app.get("/readyz")
    def readyz():
        return {"status": "ready"}

    @app.post("/detect")
    def detect(file: UploadFile):
        image = np.array(Image.open(file.file).convert("RGB"))
        tensor = torch.from_numpy(image).permute(2, 0, 1).float().div_(255)
        with lock, torch.inference_mode():
            output = model([tensor])[0]
        keep = output["scores"] > 0.5
        return {
            "width": image.shape[1],
            "height": image.shape[0],
            "detections": [
                {"box": box, "score": score, "class_id": label}
                for box, score, label in zip(
                    output["boxes"][keep].tolist(),
                    output["scores"][keep].tolist(),
                    output["labels"][keep].tolist(),
                    strict=True,
                )
            ],
        }

    return app


def serve_baseline(port: int):
    import uvicorn

    uvicorn.run(baseline_app(), host="127.0.0.1", port=port, log_level="warning", access_log=False)


def run_http(server: "Server", jpeg: bytes, requests: int, concurrency: int) -> dict:
    """The load run, with the CPU time it cost the server and this load generator per request."""
    request = multipart_request("/detect", server.port, jpeg)
    asyncio.run(http_load(server.port, request, 4 * concurrency, concurrency))  # warm-up
    server_cpu, client_cpu = cpu_seconds(server.process.pid), time.process_time()
    result = asyncio.run(http_load(server.port, request, requests, concurrency))
    result["server_cpu_ms_per_request"] = (cpu_seconds(server.process.pid) - server_cpu) * 1000 / requests
    result["client_cpu_ms_per_request"] = (time.process_time() - client_cpu) * 1000 / requests
    return result


def metric_samples(port: int) -> list[tuple[str, float]]:
    """The service's Prometheus samples: (name with its labels, value), e.g. ``('x_total{route="/detect"}', 3.0)``."""
    import httpx

    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=30).text
    return [
        (series, float(value))
        for series, _, value in (
            line.rpartition(" ") for line in text.splitlines() if line and not line.startswith("#")
        )
    ]


def mean_batch_size(port: int) -> float:
    """Images per inference call so far, from the service's Prometheus histogram."""
    values = dict(metric_samples(port))
    return values["ssdlite_inference_batch_size_sum"] / max(values["ssdlite_inference_batch_size_count"], 1)


def load_average_line() -> str:
    """The 1-minute load average, flagged when the machine is busy enough to slow a benchmark down."""
    load = os.getloadavg()[0]
    busy = "  (the machine is busy: figures are pessimistic)" if load > 0.5 * (os.cpu_count() or 1) else ""
    return f"load average before the run: {load:.2f}{busy}"


def print_row(name: str, r: dict, note: str = ""):
    print(
        f"{name:58s} {r['req_per_s']:8.1f} {r['p50']:8.1f} {r['p95']:8.1f} {r['p99']:8.1f} {r['errors']:7d} "
        f"{r['server_cpu_ms_per_request']:8.1f} {r['client_cpu_ms_per_request']:8.1f}{note}",
        flush=True,
    )


BASELINE = "baseline (FastAPI + torchvision ssdlite320, 1 at a time)"


def server_name(port: int, workers: str) -> str:
    """What a started service serves, from its /model: model, backend, precision, batching."""
    import httpx

    info = httpx.get(f"http://127.0.0.1:{port}/model", timeout=30).json()
    name = f"ours ({info['name']}, {info['backend']} {info['precision']}, max batch {info['max_batch_size']}"
    return name + (f", {workers} inference calls)" if workers else ")")


def summarise(runs: list[dict]) -> dict:
    """One run as it is; several: the median of each figure, errors summed, the runs kept under ``rounds``."""
    if len(runs) == 1:
        return runs[0]
    numeric = [key for key, value in runs[0].items() if isinstance(value, int | float) and key != "errors"]
    summary = {key: statistics.median(run[key] for run in runs) for key in numeric}
    summary["errors"] = sum(run["errors"] for run in runs)
    return {**summary, "rounds": runs}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.service", description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--baseline-requests", type=int, help="requests for the baseline (default: --requests)")
    parser.add_argument("--ws-frames", type=int, default=300, help="frames in the WebSocket run")
    parser.add_argument(
        "--model",
        default="auto",
        help="what our service serves (SSDLITE_MODEL; default auto: the service's own default, tf-pedestrian-int8 "
        "on a CPU); comma-separated to compare several in one run",
    )
    parser.add_argument(
        "--batch-sizes", default="", help="SSDLITE_MAX_BATCH_SIZE values to compare (default: the service's)"
    )
    parser.add_argument(
        "--workers", default="", help="SSDLITE_INFERENCE_WORKERS values to compare (default: the service's)"
    )
    parser.add_argument("--threads", type=int, help="SSDLITE_THREADS (default: all cores)")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="load runs per server, alternating between the servers (all started first): on a shared machine "
        "compare the per-round ratios and the medians",
    )
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--serve-baseline", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_baseline:
        serve_baseline(args.port)
        return {}

    jpeg = frame_jpeg()
    print(
        f"loopback, {args.concurrency} connections, {args.requests} multipart 640x480 JPEG uploads "
        f"({len(jpeg) // 1024} KB) per run; {machine_description()}"
    )
    print(load_average_line())
    print(
        f"{'server':58s} {'req/s':>8s} {'p50 ms':>8s} {'p95 ms':>8s} {'p99 ms':>8s} {'errors':>7s} "
        f"{'srv CPU':>8s} {'gen CPU':>8s}  (CPU ms/request: server, load generator)",
        flush=True,
    )
    env = {"SSDLITE_ACCESS_LOG": "false", "SSDLITE_LOG_LEVEL": "warning"}
    if args.threads:
        env["SSDLITE_THREADS"] = str(args.threads)
    variants = [
        (model, batch_size, workers)
        for model in args.model.split(",")
        for batch_size in args.batch_sizes.split(",")
        for workers in args.workers.split(",")
    ]
    results: dict = {}
    with contextlib.ExitStack() as servers:
        ours: dict[str, Server] = {}
        for model, batch_size, workers in variants:
            settings = {**env, "SSDLITE_MODEL": model}
            settings.update({"SSDLITE_MAX_BATCH_SIZE": batch_size} if batch_size else {})
            settings.update({"SSDLITE_INFERENCE_WORKERS": workers} if workers else {})
            server = servers.enter_context(Server([sys.executable, "-m", "service"], settings))
            name = server_name(server.port, workers)
            ours[name + (f" #{len(ours) + 1}" if name in ours else "")] = server
        baseline = None
        if not args.no_baseline:
            command = [sys.executable, "-m", "bench.service", "--serve-baseline"]
            baseline = servers.enter_context(Server(command, {}))
        rounds: dict[str, list[dict]] = {name: [] for name in (*ours, *([BASELINE] if baseline else []))}
        for turn in range(args.rounds):
            order = [*ours.items(), *([(BASELINE, baseline)] if baseline else [])]
            for name, server in order if turn % 2 == 0 else order[::-1]:  # ABBA: drifts hit both alike
                requests = (args.baseline_requests or args.requests) if server is baseline else args.requests
                result = run_http(server, jpeg, requests, args.concurrency)
                if server is not baseline:
                    result["mean_batch_size"] = mean_batch_size(server.port)
                    result["websocket"] = asyncio.run(websocket_stream(server.port, jpeg, args.ws_frames))
                rounds[name].append(result)
                note = f"  mean batch {result['mean_batch_size']:.2f}" if "mean_batch_size" in result else ""
                print_row(name + (f" [round {turn + 1}]" if args.rounds > 1 else ""), result, note)
            if baseline and args.rounds > 1:
                ratios = ", ".join(
                    f"{rounds[n][-1]['req_per_s'] / rounds[BASELINE][-1]['req_per_s']:.2f}x" for n in ours
                )
                print(f"  round {turn + 1}, ours / baseline req/s: {ratios}", flush=True)
    for name, runs in rounds.items():
        results[name] = summarise(runs)
        if name != BASELINE:
            results[f"{name} websocket"] = summarise([run.pop("websocket") for run in runs])
    if args.rounds > 1:
        print(f"\nmedians over {args.rounds} rounds:")
        for name in rounds:
            print_row(name, results[name])
    if baseline:
        for name in ours:
            ratio = statistics.median(
                run["req_per_s"] / base["req_per_s"] for run, base in zip(rounds[name], rounds[BASELINE], strict=True)
            )
            results[name]["req_per_s_vs_baseline"] = ratio
            print(f"{name}: {ratio:.2f}x the baseline's req/s (median of the rounds' ratios)")
    print(f"\nWebSocket, one 640x480 JPEG frame in flight, {args.ws_frames} frames:")
    for name, r in results.items():
        if name.endswith("websocket"):
            print(
                f"{name:68s} {r['fps']:6.1f} fps  p50 {r['p50']:5.1f} ms  p95 {r['p95']:5.1f} ms  errors {r['errors']}"
            )
    write_json(args.json, results)
    return results


if __name__ == "__main__":
    main()

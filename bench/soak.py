"""Soak test of the detection service: a long mixed load of good photos, bad inputs and churning WebSockets.

``python -m bench.soak [--requests 10000] [--concurrency 16] [--duration 600] [--model tf-pedestrian] [--json FILE]``:
starts ``python -m service`` (body limit 2 MB, access log off) on 127.0.0.1, waits for /readyz,
primes it with a short run of the same mix, then sends ``--requests`` ``POST /detect`` requests
from ``--concurrency`` keep-alive connections in a seeded random order: 80% 640x480 JPEG photos
(as in ``bench.service``), 20% spread evenly over the kinds of ``bench.bad_inputs.bad_requests``
(empty, text, truncated/corrupt JPEGs, damaged JPEG scans, a decompression-bomb PNG, GIF, PDF,
a body over the limit, bad query parameters), each as a multipart upload or a raw body.
Alongside, 4 WebSocket streams keep connecting, sending a few frames (some before the previous
reply), and dropping the connection without a close handshake. The run stops after
``--duration`` seconds even if requests remain; a request without a response within
``--timeout`` seconds is an error.

Prints the request count and duration, 5xx responses, connection errors and timeouts, how many
of each bad kind got an acceptable 4xx, the good photos' req/s and p50/p99 latency, the
WebSocket counts, and the server's RSS (VmRSS) after priming and at the end. Goals (each line
says PASS or FAIL; the exit status is 1 if one fails): no 5xx, no connection errors, every good
photo answered 200, every bad input answered with one of its 4xx, no WebSocket errors, and RSS
growth within 50 MB. Linux only (/proc); everything runs on 127.0.0.1.
"""

import argparse
import asyncio
import collections
import contextlib
import json
import random
import re
import socket
import sys
import tempfile
import time
from pathlib import Path

from .bad_inputs import bad_requests
from .common import machine_description, write_json
from .service import (
    ROOT,
    Server,
    frame_jpeg,
    load_average_line,
    metric_samples,
    multipart_request,
    percentiles,
    post_request,
    read_response,
)

GOOD = "good photo"
GOOD_SHARE = 0.8
WS_STREAMS = 4
BODY_LIMIT = 2_000_000  # SSDLITE_MAX_BODY_SIZE of the soaked server: oversize bodies are 3 MB, cheap to send
RSS_GROWTH_GOAL_MB = 50.0
NOTABLE_LOG_LINE = re.compile(r"Traceback|ERROR|Exception|CRITICAL|Killed|MemoryError")


class ServerClosedError(ConnectionError):
    """The server closed a kept-alive connection before a byte of the response: the request may be retried."""


class Connection:
    """A keep-alive HTTP/1.1 connection that sends a request while it reads the response.

    Receiving is independent of sending: when the server answers before reading the whole body
    (a 413) and closes, the status line that arrived is still read, however the send ends.
    """

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.reader = asyncio.StreamReader()
        self.received = self.exchanges = 0
        self.receiving = asyncio.create_task(self._receive())
        self.sending: asyncio.Task | None = None

    @classmethod
    async def open(cls, port: int) -> "Connection":
        sock = socket.socket()
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        except BaseException:
            sock.close()
            raise
        return cls(sock)

    async def _receive(self):
        loop = asyncio.get_running_loop()
        try:
            while data := await loop.sock_recv(self.sock, 65536):
                self.received += len(data)
                self.reader.feed_data(data)
        except OSError:
            pass  # a reset: what arrived before it is still in the reader
        finally:
            self.reader.feed_eof()

    @property
    def closed_by_server(self) -> bool:
        return self.receiving.done()

    async def exchange(self, request: bytes) -> tuple[int, bool]:
        """Sends ``request`` and reads its response: (status, whether the connection can be reused).

        Raises:
            ServerClosedError: on a reused connection, closed by the server before any response byte.
            OSError, asyncio.IncompleteReadError, ValueError, IndexError: no status line could be read.
        """
        received = self.received
        self.sending = asyncio.create_task(asyncio.get_running_loop().sock_sendall(self.sock, request))
        try:
            status, keep_alive = await read_response(self.reader)
        except (OSError, asyncio.IncompleteReadError, IndexError) as error:
            self.sending.cancel()
            if self.exchanges and self.received == received and self.closed_by_server:
                raise ServerClosedError("the server closed the kept-alive connection") from error
            raise
        except BaseException:
            self.sending.cancel()
            raise
        self.exchanges += 1
        try:
            await self.sending  # the whole request goes out before the next one
        except OSError:
            keep_alive = False  # the server closed before it took the whole body (it answered early)
        return status, keep_alive and not self.closed_by_server

    def close(self):
        """Closes the socket once the tasks using it have ended (so that no callback touches a reused fd)."""
        tasks = [task for task in (self.receiving, self.sending) if task is not None]
        for task in tasks:
            task.cancel()
        asyncio.gather(*tasks, return_exceptions=True).add_done_callback(lambda _: self.sock.close())


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """A memory figure of a process from /proc/PID/status, in MB (NaN when unreadable)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def server_5xx(port: int) -> int:
    """5xx responses the server has counted since it started (its /metrics)."""
    return round(
        sum(
            value
            for series, value in metric_samples(port)
            if series.startswith("ssdlite_http_requests_total{") and re.search(r'status="5\d\d"', series)
        )
    )


def plan(total: int, kinds: list[str], seed: int) -> list[tuple[str, int]]:
    """(kind, variant) per request in a seeded random order: ``GOOD_SHARE`` good, the rest spread evenly over ``kinds``.

    Variant 0 sends the body as a multipart upload, 1 as the raw body.
    """
    rng = random.Random(seed)
    bad = round(total * (1 - GOOD_SHARE))
    order = [GOOD] * (total - bad) + [kinds[i % len(kinds)] for i in range(bad)]
    rng.shuffle(order)
    return [(kind, 0 if kind == GOOD else rng.randrange(2)) for kind in order]


async def http_traffic(port: int, order, requests, concurrency: int, deadline: float, timeout: float) -> dict:
    """Sends ``order`` from ``concurrency`` connections; outcomes per kind (status or error name), good latencies."""
    outcomes: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    latencies: list[float] = []
    pending = iter(order)
    counts = {"sent": 0, "reconnects": 0, "retried": 0}

    async def one(connection: Connection | None, request: bytes) -> tuple[Connection, int, bool]:
        """On a new connection if there is none; retried on a new one (as browsers do) if the server
        closed a kept-alive one before answering (counted: that follows a server-side error)."""
        if connection is None:
            connection = await Connection.open(port)
            counts["reconnects"] += 1
        try:
            status, keep_alive = await connection.exchange(request)
        except ServerClosedError:
            connection.close()
            counts["retried"] += 1
            return await one(None, request)
        except BaseException:
            connection.close()
            raise
        return connection, status, keep_alive

    async def worker():
        connection = None
        for kind, variant in pending:
            if time.monotonic() >= deadline:
                break
            counts["sent"] += 1
            if connection is not None and connection.closed_by_server:
                connection.close()
                connection = None
            started = time.perf_counter()
            try:
                request = requests[kind][variant]
                connection, status, keep_alive = await asyncio.wait_for(one(connection, request), timeout)
            except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError, IndexError) as error:
                # No status line was read: never a pass, whatever the kind.
                outcomes[kind]["timeout" if isinstance(error, TimeoutError) else type(error).__name__] += 1
                connection = None
                continue
            outcomes[kind][str(status)] += 1
            if kind == GOOD and status == 200:
                latencies.append((time.perf_counter() - started) * 1000)
            if not keep_alive:
                connection.close()
                connection = None
        if connection is not None:
            connection.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return {
        "seconds": time.perf_counter() - started,
        "sent": counts["sent"],
        "connections_opened": counts["reconnects"],
        "retried_after_server_close": counts["retried"],
        "outcomes": {kind: dict(counter) for kind, counter in outcomes.items()},
        "good_latencies": latencies,
    }


async def websocket_session(ws, jpeg: bytes, rng: random.Random, stop: asyncio.Event, stats, errors, timeout: float):
    """1-5 frames, about half sent without waiting for the previous reply; then either reads up to the newest
    frame's reply (it is always answered; older waiting ones may be dropped) or leaves it in flight."""
    sent = answered_up_to = 0

    async def reply():
        nonlocal answered_up_to
        message = json.loads(await asyncio.wait_for(ws.recv(), timeout))
        answered_up_to = message["frame_id"]
        if "error" in message:
            errors[f"reply {message.get('status')}"] += 1
        else:
            stats["frames_answered"] += 1

    for _ in range(rng.randint(1, 5)):
        await asyncio.wait_for(ws.send(jpeg), timeout)
        sent += 1
        stats["frames_sent"] += 1
        if rng.random() < 0.5:
            await reply()
        if stop.is_set():
            break
    if rng.random() < 0.5:
        while answered_up_to < sent:
            await reply()
    stats["aborted_with_frame_in_flight"] += answered_up_to < sent


async def websocket_churn(port: int, jpeg: bytes, stop: asyncio.Event, seed: int, timeout: float) -> dict:
    """Sessions on new connections, each dropped without a close handshake, until ``stop``."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import WebSocketException

    rng = random.Random(seed)
    stats = collections.Counter()
    errors = collections.Counter()
    url = f"ws://127.0.0.1:{port}/ws"
    while not stop.is_set():
        try:
            ws = await connect(url, compression=None, max_size=None, ping_interval=None, open_timeout=timeout)
        except (OSError, TimeoutError, WebSocketException) as error:
            errors[f"connect {type(error).__name__}"] += 1
            continue
        stats["connections"] += 1
        try:
            await websocket_session(ws, jpeg, rng, stop, stats, errors, timeout)
        except (OSError, TimeoutError, WebSocketException, KeyError, ValueError) as error:
            errors["timeout" if isinstance(error, TimeoutError) else type(error).__name__] += 1
        finally:
            ws.transport.abort()  # no close frame: the server sees the TCP connection drop
            await asyncio.wait_for(ws.wait_closed(), timeout)
    return {**stats, "errors": dict(errors)}


async def sample_rss(pid: int, stop: asyncio.Event, samples: list, interval: float = 5.0):
    """(seconds, VmRSS MB) every ``interval`` seconds until ``stop``, and once more then."""
    started = time.monotonic()
    while True:
        samples.append((round(time.monotonic() - started, 1), round(rss_mb(pid), 1)))
        if stop.is_set():
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)


async def soak(port: int, pid: int, order, requests, jpeg: bytes, args, deadline: float, seed: int) -> dict:
    """The HTTP traffic with the WebSocket streams and an RSS sampler alongside, for as long as it lasts."""
    stop = asyncio.Event()
    samples: list = []
    streams = [
        asyncio.create_task(websocket_churn(port, jpeg, stop, seed + i, args.timeout)) for i in range(WS_STREAMS)
    ]
    sampler = asyncio.create_task(sample_rss(pid, stop, samples))
    try:
        http = await http_traffic(port, order, requests, args.concurrency, deadline, args.timeout)
    finally:
        stop.set()
        websockets = await asyncio.gather(*streams)
        await sampler
    totals = collections.Counter()
    for stream in websockets:
        totals.update({k: v for k, v in stream.items() if k != "errors"})
    errors = collections.Counter()
    for stream in websockets:
        errors.update(stream["errors"])
    return {**http, "websocket": {"streams": WS_STREAMS, **totals, "errors": dict(errors)}, "rss_samples_mb": samples}


def summarize(run: dict, statuses: dict[str, tuple[int, ...]]) -> dict:
    """Counts and goals of one soak run."""
    outcomes = run["outcomes"]
    all_outcomes = collections.Counter()
    for counter in outcomes.values():
        all_outcomes.update(counter)
    good = outcomes.get(GOOD, {})
    good_total = sum(good.values())
    kinds = {}
    for kind, acceptable in statuses.items():
        if kind == GOOD:
            continue
        counter = outcomes.get(kind, {})
        kinds[kind] = {
            "sent": sum(counter.values()),
            "acceptable": sum(n for key, n in counter.items() if key.isdigit() and int(key) in acceptable),
            "acceptable_statuses": list(acceptable),
            "outcomes": counter,
        }
    return {
        "requests": run["sent"],
        "seconds": run["seconds"],
        "req_per_s": run["sent"] / run["seconds"],
        "5xx": sum(n for key, n in all_outcomes.items() if key.isdigit() and key.startswith("5")),
        "connection_errors": sum(n for key, n in all_outcomes.items() if not key.isdigit()),
        "connection_error_kinds": {key: n for key, n in all_outcomes.items() if not key.isdigit()},
        "connections_opened": run["connections_opened"],
        "retried_after_server_close": run["retried_after_server_close"],
        "good": {
            "sent": good_total,
            "ok": good.get("200", 0),
            "outcomes": good,
            "req_per_s": good.get("200", 0) / run["seconds"],
            **percentiles(run["good_latencies"]),
        },
        "bad_inputs": kinds,
        "websocket": run["websocket"],
        "rss_samples_mb": run["rss_samples_mb"],
    }


def scan_log(path: Path) -> dict:
    """The server's output, summarised: each traceback as its exception and innermost frames, other error lines
    counted by text, libjpeg's corrupt-data warnings counted apart."""
    lines = path.read_text(errors="replace").splitlines() if path.exists() else []
    exceptions, notable = collections.Counter(), collections.Counter()
    frames: list[str] | None = None  # the File lines of the traceback being read
    for line in lines:
        if line.startswith("Traceback (most recent call last):"):
            frames = []
        elif frames is not None and line.startswith("  File "):
            frames.append(line.strip())
        elif frames is not None and not line.startswith(" "):  # the exception line ends a traceback
            ours = [frame for frame in frames if f'"{ROOT}/' in frame and "site-packages" not in frame]
            where = "; ".join(dict.fromkeys(frames[-1:] + ours[-1:]))
            exceptions[f"{line}  [{where}]"] += 1
            frames = None
        elif frames is None and NOTABLE_LOG_LINE.search(line):
            notable[line] += 1
    return {
        "lines": len(lines),
        "tracebacks": sum(exceptions.values()),
        "exceptions": dict(exceptions.most_common()),
        "error_lines": dict(notable.most_common()),
        "libjpeg_warnings": sum(line.startswith("Corrupt JPEG data") for line in lines),
    }


def goal(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def report(results: dict, args) -> list[str]:
    """Prints the results; returns the names of the failed goals."""
    r = results["run"]
    failed = []

    def line(text: str, ok: bool | None = None, name: str = ""):
        if ok is not None and not ok:
            failed.append(name or text.split(":")[0])
        print(f"{text:86s} {goal(ok) if ok is not None else ''}".rstrip(), flush=True)

    stopped = r["requests"] < args.requests
    line(
        f"requests: {r['requests']} of {args.requests} in {r['seconds']:.1f} s ({r['req_per_s']:.1f} req/s)"
        + (f"  STOPPED at --duration {args.duration:g} s" if stopped else "")
    )
    line(
        f"5xx responses: {r['5xx']} (server's /metrics, priming included: {results['server_5xx']})  goal 0",
        r["5xx"] == 0 and results["server_5xx"] == 0,
        "5xx",
    )
    kinds = ", ".join(f"{k} {n}" for k, n in sorted(r["connection_error_kinds"].items()))
    line(
        f"connection errors/timeouts (no status line read): {r['connection_errors']}"
        + (f" ({kinds})" if kinds else "")
        + f"  goal 0; {r['connections_opened']} connections, {r['retried_after_server_close']} retries after an "
        "unannounced close",
        r["connection_errors"] == 0,
        "connection errors",
    )
    g = r["good"]
    others = ", ".join(f"{k}: {n}" for k, n in sorted(g["outcomes"].items()) if k != "200")
    line(
        f"good photos: {g['ok']}/{g['sent']} answered 200"
        + (f" ({others})" if others else "")
        + f"; {g['req_per_s']:.1f} req/s, p50 {g['p50']:.1f} ms, p99 {g['p99']:.1f} ms",
        g["ok"] == g["sent"],
        "good photos",
    )
    print("bad inputs answered with an acceptable 4xx (goal 100%):")
    for kind, k in r["bad_inputs"].items():
        seen = ", ".join(f"{s}: {n}" for s, n in sorted(k["outcomes"].items()))
        acceptable = "/".join(map(str, k["acceptable_statuses"]))
        line(
            f"  {kind:20s} {k['acceptable']:5d}/{k['sent']:<5d} want {acceptable:8s} got {seen}",
            k["acceptable"] == k["sent"] and k["sent"] > 0,
            f"bad input {kind!r}",
        )
    ws = r["websocket"]
    errors = ", ".join(f"{k} {n}" for k, n in sorted(ws["errors"].items()))
    line(
        f"WebSocket: {ws['streams']} streams, {ws.get('connections', 0)} connections dropped without a close, "
        f"{ws.get('frames_answered', 0)}/{ws.get('frames_sent', 0)} frames answered "
        f"({ws.get('aborted_with_frame_in_flight', 0)} drops with a frame in flight), "
        f"errors {sum(ws['errors'].values())}" + (f" ({errors})" if errors else ""),
        not ws["errors"] and ws.get("connections", 0) > 0,
        "WebSocket",
    )
    rss = results["rss_mb"]
    line(
        f"server RSS: {rss['start']:.1f} MB after priming, {rss['end']:.1f} MB at the end, growth "
        f"{rss['growth']:+.1f} MB (max sampled {rss['max_sampled']:.1f}, VmHWM {rss['peak']:.1f})  goal <= "
        f"{RSS_GROWTH_GOAL_MB:g} MB",
        rss["growth"] <= RSS_GROWTH_GOAL_MB,
        "RSS growth",
    )
    log = results["server_log"]
    print(
        f"server output: {log['lines']} lines, {log['tracebacks']} tracebacks, "
        f"{sum(log['error_lines'].values())} other error lines, "
        f"{log['libjpeg_warnings']} libjpeg 'Corrupt JPEG data' warnings"
    )
    for text, n in [*log["exceptions"].items(), *log["error_lines"].items()][:20]:
        print(f"  {n:5d} x {text}")
    print(f"RESULT: {goal(not failed)}" + (f" ({len(failed)} failed: {', '.join(failed)})" if failed else ""))
    return failed


def measure(server: Server, jpeg: bytes, corpus: dict, args) -> dict:
    """The priming run, the RSS after it, the measured run, the RSS after that."""
    port, pid = server.port, server.process.pid
    requests = {GOOD: [multipart_request("/detect", port, jpeg)]}
    for kind, bad in corpus.items():
        path = f"/detect?{bad.query}" if bad.query else "/detect"
        requests[kind] = [multipart_request(path, port, bad.body), post_request(path, port, bad.body)]
    statuses = {GOOD: (200,), **{kind: bad.statuses for kind, bad in corpus.items()}}

    def run(total: int, seed: int) -> dict:
        order = plan(total, list(corpus), seed)
        deadline = time.monotonic() + args.duration
        run = asyncio.run(soak(port, pid, order, requests, jpeg, args, deadline, seed))
        return summarize(run, statuses)

    print(f"server ready (pid {pid}); priming with {args.prime} requests of the same mix", flush=True)
    priming = run(args.prime, args.seed + 1000)
    start_rss = rss_mb(pid)
    print(
        f"priming: {priming['requests']} requests in {priming['seconds']:.1f} s, {priming['5xx']} 5xx, "
        f"{priming['connection_errors']} connection errors; RSS after warm-up and priming {start_rss:.1f} MB; soaking",
        flush=True,
    )
    measured = run(args.requests, args.seed)
    end_rss, peak_rss = rss_mb(pid), rss_mb(pid, "VmHWM")
    samples = [mb for _, mb in measured["rss_samples_mb"]]
    return {
        "model": args.model,
        "concurrency": args.concurrency,
        "requested": args.requests,
        "duration_limit_s": args.duration,
        "body_limit": BODY_LIMIT,
        "machine": machine_description(),
        "priming": {k: priming[k] for k in ("requests", "seconds", "5xx", "connection_errors")},
        "run": measured,
        "server_5xx": server_5xx(port),
        "rss_mb": {
            "start": start_rss,
            "end": end_rss,
            "growth": end_rss - start_rss,
            "max_sampled": max(samples, default=end_rss),
            "peak": peak_rss,
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10_000, help="HTTP requests in the measured run")
    parser.add_argument("--concurrency", type=int, default=16, help="keep-alive HTTP connections")
    parser.add_argument("--duration", type=float, default=600, help="stop the measured run after this many seconds")
    parser.add_argument("--timeout", type=float, default=30, help="seconds a request may take before it is an error")
    parser.add_argument("--prime", type=int, default=200, help="requests of the same mix before the start RSS")
    parser.add_argument("--model", default="tf-pedestrian", help="what the service serves (SSDLITE_MODEL)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--server-log", help="keep the server's output in this file (default: a temporary file)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)

    jpeg = frame_jpeg()
    corpus = bad_requests(BODY_LIMIT)
    print(
        f"soak: loopback, {args.model}, {args.concurrency} HTTP connections + {WS_STREAMS} WebSocket streams, "
        f"{args.requests} requests ({GOOD_SHARE:.0%} 640x480 JPEG photos, {1 - GOOD_SHARE:.0%} bad inputs of "
        f"{len(corpus)} kinds), body limit {BODY_LIMIT} bytes, at most {args.duration:g} s; {machine_description()}"
    )
    print(load_average_line(), flush=True)
    with tempfile.TemporaryDirectory() as scratch, contextlib.ExitStack() as stack:
        log_path = Path(args.server_log or Path(scratch) / "server.log")
        env = {
            "SSDLITE_MODEL": args.model,
            "SSDLITE_MAX_BODY_SIZE": str(BODY_LIMIT),
            "SSDLITE_ACCESS_LOG": "false",
            "SSDLITE_LOG_LEVEL": "warning",
            "PYTHONUNBUFFERED": "1",
        }
        try:
            server = stack.enter_context(Server([sys.executable, "-m", "service"], env, log=log_path))
        except (RuntimeError, TimeoutError) as error:
            print(f"error: {error}; its output:\n{log_path.read_text(errors='replace')[-4000:]}", file=sys.stderr)
            return 2
        results = measure(server, jpeg, corpus, args)
        stack.close()  # the server has stopped: its log is complete
        results["server_log"] = scan_log(log_path)
    failed = report(results, args)
    results["failed_goals"] = failed
    write_json(args.json, results)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

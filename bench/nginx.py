"""The repository's deploy/nginx.conf on loopback, in front of service replicas; 1 vs N replicas through it.

``NginxProxy(upstream_ports)`` renders deploy/nginx.conf for 127.0.0.1 (by text substitution, so that
what runs is the deployed file) and runs the ``nginx`` binary as the current user for as long as the
context lasts; tests/test_service_nginx.py uses it.

``python -m bench.nginx [--replicas 1,2] [--requests 1000] [--concurrency 8] [--model tf-pedestrian]``:
for each replica count, starts that many ``python -m service`` replicas behind nginx and sends the
same multipart upload load as ``python -m bench.service`` to nginx; prints req/s, p50/p95/p99 and how
the requests were shared. Everything (replicas, nginx, load generator) shares the machine's cores.
"""

import argparse
import asyncio
import contextlib
import grp
import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from .service import (
    ROOT,
    Server,
    frame_jpeg,
    free_port,
    http_load,
    metric_samples,
    multipart_request,
    wait_until_ready,
)

CONF = ROOT / "deploy" / "nginx.conf"
TEMP_PATHS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")


def nginx_binary() -> str | None:
    """Path of the ``nginx`` binary (Debian puts it in /usr/sbin, often not on a user's PATH), or None."""
    return shutil.which("nginx", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"]))


def render_conf(text: str, upstream_ports: list[int], listen_port: int, prefix: Path) -> str:
    """deploy/nginx.conf made to run as the current user on loopback, everything it writes under ``prefix``.

    Raises:
        ValueError: a line this expects is missing from (or repeated in) the conf.
    """
    if not upstream_ports:
        raise ValueError("no upstream ports")

    def servers(match: re.Match) -> str:
        indent, parameters = match.group(1), match.group(2)
        return "\n".join(f"{indent}server 127.0.0.1:{port}{parameters};" for port in upstream_ports)

    temp_paths = "".join(f"\n    {kind}_temp_path {prefix / kind};" for kind in TEMP_PATHS)
    substitutions = [
        (r"^pid \S+;$", f"pid {prefix / 'nginx.pid'};"),
        (r"^(error_log )\S+((?: \w+)?;)$", lambda m: f"{m.group(1)}{prefix / 'error.log'}{m.group(2)}"),
        (r"^http \{$", "http {" + temp_paths),
        (r"^(\s+access_log )/\S+((?: \w+)?;)$", lambda m: f"{m.group(1)}{prefix / 'access.log'}{m.group(2)}"),
        (r"^(\s+)server detector:8000((?: [^;]*)?);$", servers),
        (r"^(\s+)listen 80;$", lambda m: f"{m.group(1)}listen 127.0.0.1:{listen_port};"),
    ]
    for pattern, replacement in substitutions:
        text, count = re.subn(pattern, replacement, text, flags=re.MULTILINE)
        if count != 1:
            raise ValueError(f"{CONF}: expected one line matching {pattern!r}, found {count}; update bench/nginx.py")
    if os.geteuid() == 0:  # workers would otherwise run as nobody, who cannot write to the temp dirs
        user = f"user {pwd.getpwuid(os.getuid()).pw_name} {grp.getgrgid(os.getgid()).gr_name};\n"
        text = user + text
    return text


class NginxProxy:
    """nginx from deploy/nginx.conf on 127.0.0.1 and a free port, proxying to ``upstream_ports``.

    Entering waits until ``/readyz`` through nginx answers 200 (so at least one upstream is ready).
    """

    def __init__(self, upstream_ports: list[int], timeout: float = 30, conf: Path = CONF):
        self.upstream_ports = list(upstream_ports)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.timeout = timeout
        self.conf = conf

    def __enter__(self) -> "NginxProxy":
        binary = nginx_binary()
        if binary is None:
            raise RuntimeError("nginx is not installed (Debian package nginx)")
        self.prefix = Path(tempfile.mkdtemp(prefix="ssdlite-nginx-"))
        conf = self.prefix / "nginx.conf"
        conf.write_text(render_conf(self.conf.read_text(), self.upstream_ports, self.port, self.prefix))
        command = [binary, "-p", self.prefix, "-c", conf, "-e", self.prefix / "error.log", "-g", "daemon off;"]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_until_ready(self.process, self.url, self.timeout)
        except (RuntimeError, TimeoutError) as error:
            log = self.error_log
            self.__exit__()
            raise type(error)(f"nginx {error}:\n{log}") from None
        return self

    def __exit__(self, *exc):
        self.process.terminate()  # SIGTERM: nginx's fast shutdown
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        shutil.rmtree(self.prefix, ignore_errors=True)

    @property
    def error_log(self) -> str:
        path = self.prefix / "error.log"
        return path.read_text(errors="replace") if path.is_file() else ""


def replica_requests(port: int, route: str = "/detect") -> int:
    """Requests to ``route`` that a replica has answered, from its Prometheus counter."""
    return int(
        sum(
            value
            for series, value in metric_samples(port)
            if series.startswith("ssdlite_http_requests_total{") and f'route="{route}"' in series
        )
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.nginx", description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", default="1,2", help="replica counts to compare, comma-separated")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--model", default="tf-pedestrian", help="SSDLITE_MODEL of every replica")
    parser.add_argument("--threads", type=int, help="SSDLITE_THREADS per replica (default: cores // replicas)")
    args = parser.parse_args(argv)
    if nginx_binary() is None:
        parser.error("nginx is not installed (Debian package nginx)")

    cores = os.cpu_count() or 1
    jpeg = frame_jpeg()
    print(
        f"loopback through nginx (deploy/nginx.conf), {args.concurrency} connections, {args.requests} multipart "
        f"640x480 JPEG uploads ({len(jpeg) // 1024} KB) per run, model {args.model}, {cores} cores shared by "
        f"replicas, nginx and the load generator; load average before: {os.getloadavg()[0]:.2f}"
    )
    print(
        f"{'replicas':>8s} {'threads':>7s} {'req/s':>8s} {'p50 ms':>8s} {'p95 ms':>8s} {'p99 ms':>8s} "
        f"{'errors':>7s}  requests per replica",
        flush=True,
    )
    results = {}
    for count in (int(n) for n in args.replicas.split(",")):
        threads = args.threads or max(1, cores // count)
        env = {
            "SSDLITE_MODEL": args.model,
            "SSDLITE_THREADS": str(threads),
            "SSDLITE_ACCESS_LOG": "false",
            "SSDLITE_LOG_LEVEL": "warning",
        }
        with contextlib.ExitStack() as stack:
            replicas = [stack.enter_context(Server([sys.executable, "-m", "service"], env)) for _ in range(count)]
            proxy = stack.enter_context(NginxProxy([r.port for r in replicas]))
            request = multipart_request("/detect", proxy.port, jpeg)
            asyncio.run(http_load(proxy.port, request, 4 * args.concurrency, args.concurrency))  # warm-up
            before = [replica_requests(r.port) for r in replicas]
            result = asyncio.run(http_load(proxy.port, request, args.requests, args.concurrency))
            result["per_replica"] = [replica_requests(r.port) - b for r, b in zip(replicas, before, strict=True)]
        results[count] = result
        print(
            f"{count:8d} {threads:7d} {result['req_per_s']:8.1f} {result['p50']:8.1f} {result['p95']:8.1f} "
            f"{result['p99']:8.1f} {result['errors']:7d}  {result['per_replica']}",
            flush=True,
        )
    return results


if __name__ == "__main__":
    main()

"""End to end through HTTP: latency, throughput, errors and the server's memory.

    python -m bench.http_load [--weights weights] [--requests 30] [--rounds 5] [--memory-requests 1000]

Starts the service (`uvicorn app.main:app`) as a subprocess on a free port of 127.0.0.1 with WEIGHTS_DIR
set, waits until /readyz answers, and sends `POST /v1/age` (the photo as multipart `image`, `years=20`)
for a 1-megapixel selfie and a 12-megapixel phone photo: one request at a time, then 4 and 16 clients
at once (each sending `--rounds` requests back to back). Every answer's status code is counted. The
server's resident memory (RSS, and its peak) is read from /proc, and sampled every 100 requests of a
long run to see whether it grows. When the service's queue (MAX_CONCURRENCY + MAX_QUEUE) cannot hold
every client, some get 503s by design, and a second server whose queue holds them all takes the most
clients again.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

from app.settings import Settings
from bench.common import Table, TestPhoto, machine_line, percentile, print_tables, process_cpu_seconds, test_photos

REPO = Path(__file__).resolve().parent.parent
YEARS = "20"
REQUEST_TIMEOUT_S = 600.0  # generous: on a busy machine one 12 MP request can take long


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS (resident now) and VmHWM (peak resident) of a process, in KiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


@dataclass
class Server:
    process: subprocess.Popen
    url: str

    @property
    def pid(self) -> int:
        return self.process.pid

    def rss_mb(self) -> float:
        return memory_kib(self.pid)["VmRSS"] / 1024

    def peak_rss_mb(self) -> float:
        return memory_kib(self.pid)["VmHWM"] / 1024

    def cpu_seconds(self) -> float:
        return process_cpu_seconds(self.pid)


@contextmanager
def running_server(weights: Path, env: dict[str, str], ready_timeout: float):
    """The service in a subprocess, ready to answer. Its output (warnings only) goes to an anonymous
    temporary file, shown when it fails to start."""
    port = free_port()
    environ = {**os.environ, "WEIGHTS_DIR": str(weights), **env}
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "app.main:app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--no-access-log",
        "--log-level",
        "warning",
    ]
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(command, cwd=REPO, env=environ, stdout=log, stderr=subprocess.STDOUT)
        server = Server(process, f"http://127.0.0.1:{port}")
        try:
            deadline = time.monotonic() + ready_timeout
            while True:
                if process.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    raise RuntimeError(f"the service did not become ready:\n{log.read().decode(errors='replace')}")
                try:
                    if httpx.get(server.url + "/readyz", timeout=5).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.5)
            yield server
        finally:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@dataclass
class Load:
    concurrency: int
    latencies: list[float] = field(default_factory=list)  # seconds, of the answers with status 200
    statuses: Counter = field(default_factory=Counter)  # status code (or exception name) -> answers
    wall: float = 0.0
    server_cpu: float = 0.0

    @property
    def ok(self) -> int:
        return self.statuses.get(200, 0)

    @property
    def sent(self) -> int:
        return sum(self.statuses.values())

    @property
    def errors(self) -> str:
        bad = {code: n for code, n in sorted(self.statuses.items(), key=lambda kv: str(kv[0])) if code != 200}
        return ", ".join(f"{n} x {code}" for code, n in bad.items()) or "none"


def post_photo(client: httpx.Client, url: str, photo: TestPhoto) -> int | str:
    try:
        response = client.post(
            url + "/v1/age", files={"image": ("photo.jpg", photo.data, "image/jpeg")}, data={"years": YEARS}
        )
        return response.status_code
    except httpx.HTTPError as exc:
        return type(exc).__name__


def load(server: Server, photo: TestPhoto, concurrency: int, requests: int) -> Load:
    """`requests` POSTs from `concurrency` clients, each sending its next request when its last returns."""
    result = Load(concurrency)
    remaining = [requests]
    lock = threading.Lock()

    def client_loop() -> None:
        with httpx.Client(timeout=REQUEST_TIMEOUT_S) as client:
            while True:
                with lock:
                    if remaining[0] == 0:
                        return
                    remaining[0] -= 1
                start = time.perf_counter()
                status = post_photo(client, server.url, photo)
                elapsed = time.perf_counter() - start
                with lock:
                    if status == 200:
                        result.latencies.append(elapsed)
                    result.statuses[status] += 1

    cpu = server.cpu_seconds()
    start = time.perf_counter()
    threads = [threading.Thread(target=client_loop) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result.wall = time.perf_counter() - start
    result.server_cpu = server.cpu_seconds() - cpu
    return result


def latency_table() -> Table:
    table = Table(
        "End to end through HTTP: POST /v1/age, years=20",
        [
            "photo",
            "clients",
            "requests",
            "errors",
            "p50 ms",
            "p95 ms",
            "p99 ms",
            "edits/s",
            "server CPU ms per request",
        ],
    )
    table.notes.append(
        "Latency percentiles and edits/s are of the answers with status 200 (a 503 comes back at "
        "once and its client sends its next request). Server CPU: the uvicorn process's user + "
        "system time over the level, per request sent."
    )
    return table


def warm_up(server: Server, photo: TestPhoto, requests: int) -> None:
    with httpx.Client(timeout=REQUEST_TIMEOUT_S) as client:
        for _ in range(requests):
            post_photo(client, server.url, photo)


def latency_rows(
    table: Table, server: Server, photo: TestPhoto, requests: int, rounds: int, levels: tuple[int, ...], warmup: int
) -> dict:
    warm_up(server, photo, warmup)
    figures = {}
    for concurrency in levels:
        n = requests if concurrency == 1 else concurrency * rounds
        result = load(server, photo, concurrency, n)
        figures[(photo.name, concurrency)] = result
        add_row(table, photo.label if concurrency == levels[0] else "", result, n)
    return figures


def add_row(table: Table, label: str, result: Load, requests: int) -> None:
    lat = result.latencies
    cells = [f"{percentile(lat, q) * 1000:.0f}" for q in (50, 95, 99)] if lat else ["-"] * 3
    table.add(
        label,
        result.concurrency,
        requests,
        result.errors,
        *cells,
        f"{len(lat) / result.wall:.2f}",
        f"{result.server_cpu / requests * 1000:.0f}",
    )


def memory_table(server: Server, photo: TestPhoto, requests: int, every: int) -> tuple[Table, dict]:
    """RSS sampled every `every` requests of a run of `requests` (after the selfie's latency runs)."""
    series = [(0, server.rss_mb())]
    statuses: Counter = Counter()
    with httpx.Client(timeout=REQUEST_TIMEOUT_S) as client:
        for i in range(1, requests + 1):
            statuses[post_photo(client, server.url, photo)] += 1
            if i % every == 0 or i == requests:
                series.append((i, server.rss_mb()))
    counts, rss = np.array([s[0] for s in series], float), np.array([s[1] for s in series])
    slope = slope_mb_per_request(counts, rss)
    later = slope_mb_per_request(counts[len(counts) // 2 :], rss[len(rss) // 2 :])
    table = Table(
        f"Server memory over {requests} requests ({photo.label}, one client)",
        ["requests", *[str(c) for c, _ in series]],
    )
    table.add("RSS MB", *[f"{r:.0f}" for _, r in series])
    peak = server.peak_rss_mb()
    table.notes.append(
        f"Least-squares slope of RSS: {slope * 1000:+.1f} MB per 1000 requests over the whole run, "
        f"{later * 1000:+.1f} over its second half (after the allocator settles). Peak RSS of the "
        f"server so far (VmHWM): {peak:.0f} MB. Answers: "
        f"{', '.join(f'{n} x {code}' for code, n in statuses.items())}."
    )
    return table, {
        "series": series,
        "slope": slope,
        "later_slope": later,
        "peak_mb": peak,
        "mean_mb": float(rss.mean()),
        "requests": requests,
    }


def slope_mb_per_request(counts: np.ndarray, rss: np.ndarray) -> float:
    return float(np.polyfit(counts, rss, 1)[0]) if len(counts) > 2 else float("nan")


def http_tables(
    weights: Path,
    requests: int,
    rounds: int,
    levels: tuple[int, ...],
    memory_requests: int,
    memory_every: int,
    warmup: int,
    env: dict[str, str],
    ready_timeout: float,
):
    """Latency for the selfie, the memory run with it, then latency for the 12 MP photo, whose large buffers
    would otherwise blur the start of the memory series; then, when the service's queue cannot hold every
    client, the selfie at the most clients again on a second server whose queue can."""
    served = Settings.from_env({**os.environ, **env})
    selfie, *others = test_photos()
    latency, tables = latency_table(), []
    with running_server(weights, env, ready_timeout) as server:
        latency.notes.append(f"Server RSS when ready: {server.rss_mb():.0f} MB.")
        figures = latency_rows(latency, server, selfie, requests, rounds, levels, warmup)
        memory = None
        if memory_requests:
            table, memory = memory_table(server, selfie, memory_requests, memory_every)
            tables.append(table)
        for photo in others:
            figures.update(latency_rows(latency, server, photo, requests, rounds, levels, warmup))
        latency.notes.append(f"Peak RSS of the server after all runs (VmHWM): {server.peak_rss_mb():.0f} MB.")
        cpu = server.cpu_seconds()
    crowd = max(levels)
    queue = crowd - served.max_concurrency
    if queue > served.max_queue:
        with running_server(weights, {**env, "MAX_QUEUE": str(queue)}, ready_timeout) as server:
            warm_up(server, selfie, warmup)
            result = load(server, selfie, crowd, crowd * rounds)
            add_row(latency, f"{selfie.name}, MAX_QUEUE={queue}", result, crowd * rounds)
            figures[(selfie.name, crowd, f"MAX_QUEUE={queue}")] = result
            cpu += server.cpu_seconds()
    latency.notes.append(
        f"Settings: MAX_CONCURRENCY={served.max_concurrency}, MAX_QUEUE={served.max_queue}, "
        f"torch threads per edit {served.threads_per_edit()}."
    )
    return [latency, *tables], {"latency": figures, "memory": memory, "server_cpu": cpu, "settings": served}


def parse_env(pairs: list[str]) -> dict[str, str]:
    return dict(pair.split("=", 1) for pair in pairs)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--requests", type=int, default=30, help="requests per photo at one client")
    parser.add_argument("--rounds", type=int, default=5, help="requests per client at 4 and 16 clients")
    parser.add_argument("--clients", default="1,4,16", help="concurrency levels, comma separated")
    parser.add_argument("--memory-requests", type=int, default=1000, help="0 skips the memory run")
    parser.add_argument("--memory-every", type=int, default=100, help="RSS sample interval, in requests")
    parser.add_argument("--http-warmup", type=int, default=2, help="unmeasured requests per photo first")
    parser.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment for the service, e.g. TORCH_THREADS=1 (repeatable)",
    )
    parser.add_argument("--ready-timeout", type=float, default=900.0, help="seconds to wait for /readyz")


def run(args) -> tuple[list[Table], dict]:
    levels = tuple(int(c) for c in args.clients.split(","))
    return http_tables(
        args.weights,
        args.requests,
        args.rounds,
        levels,
        args.memory_requests,
        args.memory_every,
        args.http_warmup,
        parse_env(args.server_env),
        args.ready_timeout,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, default=Path("weights"))
    add_arguments(parser)
    args = parser.parse_args()
    print(machine_line())
    print_tables(run(args)[0])


if __name__ == "__main__":
    main()

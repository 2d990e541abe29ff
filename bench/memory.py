"""Peak memory of the service under the worst requests its limits allow: two at once, each a 39.5-megapixel
JPEG (the fixture portrait scaled up, made in memory) sent to /v1/age/series with 8 ages and output=photo,
and the same photo to /v1/age. Each case runs in a fresh process; the figure is that process's peak
resident set (ru_maxrss), beside its resident set once the model is loaded and warm.

    .venv/bin/python -m bench.memory
"""

from __future__ import annotations

import io
import json
import os
import resource
import subprocess
import sys
import threading

from bench.common import FIXTURE, parser_for

CONTAINER_LIMIT_GIB = 4.0  # docker-compose.yml and docker/k8s.yaml
CASES = {
    "series, 8 ages, photo": ("/v1/age/series", {"ages": "10,20,30,40,50,60,70,80", "output": "photo"}),
    "age, photo": ("/v1/age", {"years": "30", "output": "photo"}),
}


def worst_case_jpeg(width: int = 7680, height: int = 5144) -> bytes:
    """The fixture portrait scaled to width x height (39.5 megapixels), as a JPEG of about 2 MB."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.open(FIXTURE).convert("RGB").resize((width, height), Image.BILINEAR).save(buffer, "JPEG", quality=75)
    return buffer.getvalue()


def rss_mib() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024


def run_case(name: str, concurrent: int) -> dict:
    """In this process: load the service, warm it up, then send `concurrent` worst-case requests at once."""
    import torch
    from fastapi.testclient import TestClient

    from app.main import create_app
    from app.settings import Settings

    torch.set_num_threads(1)
    route, fields = CASES[name]
    photo = worst_case_jpeg()
    settings = Settings(max_concurrency=concurrent)
    with TestClient(create_app(settings, set_torch_threads=True)) as client:
        while client.get("/readyz").status_code != 200:
            threading.Event().wait(0.5)
        small = FIXTURE.read_bytes()
        client.post("/v1/age/series", files={"image": ("a.jpg", small)}, data={"ages": "20,60", "output": "photo"})
        warm = rss_mib()
        statuses: list[int] = []

        def send() -> None:
            answer = client.post(route, files={"image": ("a.jpg", photo)}, data=fields)
            statuses.append(answer.status_code)

        senders = [threading.Thread(target=send) for _ in range(concurrent)]
        for sender in senders:
            sender.start()
        for sender in senders:
            sender.join()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "case": name,
        "concurrent": concurrent,
        "upload_mb": round(len(photo) / 1e6, 2),
        "statuses": statuses,
        "warm_rss_mib": round(warm),
        "peak_rss_mib": round(peak),
    }


def main(argv=None) -> None:
    parser = parser_for(__doc__)
    parser.add_argument("--case", choices=list(CASES), help="run one case in this process (used internally)")
    parser.add_argument("--concurrent", type=int, default=2)
    args = parser.parse_args(argv)
    if args.case:
        print(json.dumps(run_case(args.case, args.concurrent)))
        return
    print(f"cores: {len(os.sched_getaffinity(0))}; container limit {CONTAINER_LIMIT_GIB} GiB")
    print("| request (x2 at once) | upload | statuses | warm RSS | peak RSS | share of the limit |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name in CASES:
        out = subprocess.run(
            [sys.executable, "-m", "bench.memory", "--case", name, "--concurrent", str(args.concurrent)],
            capture_output=True,
            text=True,
            check=True,
        )
        row = json.loads(out.stdout.strip().splitlines()[-1])
        share = row["peak_rss_mib"] / (CONTAINER_LIMIT_GIB * 1024)
        print(
            f"| {name} | {row['upload_mb']} MB | {row['statuses']} | {row['warm_rss_mib']} MiB "
            f"| {row['peak_rss_mib']} MiB | {share:.0%} |"
        )


if __name__ == "__main__":
    main()

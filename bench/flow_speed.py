"""Speed of the flow itself: training images/s, and encode+decode latency per face.

`python -m bench.flow_speed [--weights weights] [--threads N]` prints medians and p95 over repeated runs
after warm-up, for the shipped architecture, with the machine's core count. Baseline in the same run:
one face at a time against a batch of 8.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch

from model.condition import condition_vector
from model.config import FlowConfig
from model.flow.glow import Glow


def timed(fn, repeats: int, warmup: int = 2) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def summary(times: list[float]) -> str:
    ordered = sorted(times)
    p95 = ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]
    return f"median {statistics.median(times) * 1000:8.1f} ms   p95 {p95 * 1000:8.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--weights", type=Path, default=Path("weights"))
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    torch.set_flush_denormal(True)
    torch.set_num_threads(args.threads)
    config_path = args.weights / "flow_config.json"
    config = FlowConfig.load(config_path) if config_path.exists() else FlowConfig()
    print(f"cores: {os.cpu_count()}   torch threads: {torch.get_num_threads()}   torch {torch.__version__}")
    print(
        f"architecture: {config.levels} levels x {config.steps} steps, width {config.width}, "
        f"{config.coupling} coupling, {config.resolution} px"
    )
    model = Glow(config)
    print(f"parameters: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M")

    x = torch.rand(args.batch, 3, config.resolution, config.resolution)
    cond = condition_vector(config, torch.randint(1, 90, (args.batch,))) if config.conditional else None
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    model.train()

    def train_step() -> None:
        loss = model(model.quantize(x, torch.rand_like(x)), cond).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    times = timed(train_step, max(5, args.repeats // 4))
    print(
        f"training, batch {args.batch}:        {summary(times)}   {args.batch / statistics.median(times):6.1f} images/s"
    )

    model.eval()
    for n in (1, 8):
        faces = x[:n]

        @torch.no_grad()
        def round_trip() -> None:
            model.decode(model.encode(faces))

        times = timed(round_trip, args.repeats)
        print(f"encode+decode, batch {n}:    {summary(times)}   {statistics.median(times) * 1000 / n:6.1f} ms per face")


if __name__ == "__main__":
    main()

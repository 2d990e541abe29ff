"""Where the flow's capacity goes: training images/s and FLOPs per image of candidate architectures.

    python -m bench.architectures [--repeats 6] [--threads 1] [--batch 32]

Each candidate runs one training step (forward, backward, Adam) on a batch of 64 px faces, in turn with
the others (`interleaved`), so that a change in the machine's load hits them all alike; speeds are given as
a ratio against the first model's architecture, measured in the same run. FLOPs count convolutions and
matrix products of one forward pass, per level, to show how much of the work the finest level takes.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.common import Table, interleaved, machine_line, parser_for, print_tables
from model.config import FlowConfig
from model.flow.glow import Glow
from model.flow.layers import squeeze

CANDIDATES = {
    "v1: width 96, steps 8,8,8": FlowConfig(width=96),
    "widths 48,160,224, steps 8,8,12": FlowConfig(level_widths=(48, 160, 224), level_steps=(8, 8, 12)),
    "widths 48,128,192, steps 8,10,14 (v2)": FlowConfig(level_widths=(48, 128, 192), level_steps=(8, 10, 14)),
    "widths 64,144,256, steps 6,10,12": FlowConfig(level_widths=(64, 144, 256), level_steps=(6, 10, 12)),
}


def level_flops(model: Glow, x: torch.Tensor) -> list[float]:
    """Forward GFLOPs per image of each level's steps (finest first)."""
    out = []
    h = x
    with torch.no_grad():
        for level, steps in enumerate(model.levels):
            h = squeeze(h)
            with FlopCounterMode(display=False) as counter:
                for step in steps:
                    h, _ = step(h)
            out.append(counter.get_total_flops() / len(x) / 1e9)
            if level < len(model.levels) - 1:
                h = h.chunk(2, 1)[0]
    return out


def training_step(model: Glow, optimizer: torch.optim.Optimizer, x: torch.Tensor, condition: torch.Tensor):
    def run() -> None:
        loss = model(model.quantize(x, torch.rand_like(x)), condition).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return run


def main() -> None:
    parser = parser_for(__doc__)
    parser.add_argument("--batch", type=int, default=32)
    parser.set_defaults(repeats=6, threads=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(args.batch, 3, 64, 64, generator=generator)
    steps, flops, params = {}, {}, {}
    for name, config in CANDIDATES.items():
        torch.manual_seed(0)
        model = Glow(config)
        condition = torch.zeros(args.batch, config.condition_dim)
        with torch.no_grad():  # data-dependent initialization, as training starts
            model.log_prob(x, condition, dequantize=True)
        flops[name] = level_flops(model, x - 0.5)
        params[name] = sum(p.numel() for p in model.parameters())
        steps[name] = training_step(model, torch.optim.Adam(model.parameters(), lr=1e-4), x, condition)
    samples = interleaved(steps, args.repeats)
    baseline = samples[next(iter(CANDIDATES))].median
    table = Table(
        f"Training speed by architecture, batch {args.batch}, {args.threads} thread(s)",
        ["architecture", "params (M)", "GFLOP/img fwd", "finest level share", "images/s", "vs v1"],
    )
    for name in CANDIDATES:
        total = sum(flops[name])
        table.add(
            name,
            f"{params[name] / 1e6:.2f}",
            f"{total:.3f}",
            f"{flops[name][0] / total:.0%}",
            f"{args.batch / samples[name].median:.1f}",
            f"{baseline / samples[name].median:.2f}x",
        )
    table.notes.append(machine_line())
    print_tables([table])


if __name__ == "__main__":
    main()

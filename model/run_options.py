"""Command-line options that every training script shares: the schedule, checkpoints, evaluation, the
machine. Each script passes the defaults that suit its model."""

from __future__ import annotations

import argparse
import math


def add_schedule_arguments(
    p: argparse.ArgumentParser,
    *,
    batch_size: int,
    warmup: int,
    epochs: float,
    eval_every: int,
    eval_limit: int,
    batch_help: str | None = None,
) -> None:
    p.add_argument("--batch-size", type=int, default=batch_size, help=batch_help)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=warmup, help="steps of linear learning-rate warm-up")
    p.add_argument(
        "--decay-from",
        type=int,
        default=0,
        help="from this step, a cosine decay of the learning rate to --lr-floor times --lr at the last step (0: none)",
    )
    p.add_argument("--lr-floor", type=float, default=0.05, help="the decayed learning rate's share of --lr")
    p.add_argument("--clip", type=float, default=50.0, help="gradient norm clip")
    p.add_argument("--epochs", type=float, default=epochs)
    p.add_argument("--max-steps", type=int, default=0, help="stop after this many steps (0: no limit)")
    p.add_argument("--max-minutes", type=float, default=0.0, help="stop after this much wall time")
    p.add_argument("--checkpoint-every", type=float, default=300.0, help="seconds between checkpoints")
    p.add_argument(
        "--eval-every", type=int, default=eval_every, help="steps between held-out evaluations (0: per epoch)"
    )
    p.add_argument("--eval-limit", type=int, default=eval_limit, help="held-out faces per evaluation (0: all)")
    p.add_argument("--train-limit", type=int, default=0, help="use only the first N training faces")


def add_machine_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: all cores)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")


def learning_rate(args: argparse.Namespace, step: int, max_steps: int) -> float:
    """The learning rate at `step` (0-based): a linear warm-up, then constant, then from `--decay-from` a cosine
    decay to `--lr-floor` times `--lr` at `max_steps`. A function of the step alone, so a resumed run follows
    the same schedule."""
    rate = args.lr * min(1.0, (step + 1) / args.warmup)
    start = getattr(args, "decay_from", 0)
    if start and max_steps > start and step >= start:
        progress = min(1.0, (step - start) / (max_steps - start))
        floor = args.lr_floor
        rate *= floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return rate

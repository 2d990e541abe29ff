"""Train the 128 px detail flow on patches: `python -m model.train_detail --data data/faces-tight --run runs/detail-v1`.

Faces come from the sources that cover 128 px without upsampling (`model.detail.SOURCES`); each step takes
one random `--patch` x `--patch` window of the 64 x 64 detail grid from each face of the batch, with the
matching window of its padded low band. The run folder holds `train_state.pt` (model, optimizer, step,
position in the epoch, random states; written every `--checkpoint-every` seconds and on Ctrl-C or SIGTERM,
loaded with weights_only=True), the exported stage (`detail.safetensors` + `detail_config.json`),
`args.json` and `log.jsonl` (training bits/dim of patches, held-out bits/dim of whole faces). `--resume`
continues exactly; the architecture then comes from the state.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import time
from pathlib import Path

import torch
from tqdm import tqdm

from model.detail import BITS_OFFSET, DetailStage, evaluate_detail_bits_per_dim, load_detail_faces, patch_batch
from model.flow.detail import CONDITION_PLACES, DetailConfig
from model.run_options import add_machine_arguments, add_schedule_arguments, learning_rate


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=Path("data/faces-tight"))
    p.add_argument("--run", type=Path, default=Path("runs/detail-v1"))
    p.add_argument("--resume", action="store_true", help="continue the run in --run exactly where it stopped")
    p.add_argument("--steps", default="4,6", help="flow steps per level, finest first")
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--encoder-width", type=int, default=48)
    p.add_argument("--features", type=int, default=32)
    p.add_argument("--patch", type=int, default=32, help="side of the detail window (of 64) per face and step")
    p.add_argument(
        "--condition-in",
        choices=CONDITION_PLACES,
        default="encoder",
        help="where the age enters the flow: with the context (every coupling) or in the prior only",
    )
    p.add_argument(
        "--context-blur",
        type=int,
        default=1,
        help="blur the 64 px context to blocks of this many pixels (1: none; must divide 64)",
    )
    p.add_argument("--scale-bound", type=float, default=0.0, help="the couplings' log-scale bound (0: sigmoid)")
    p.add_argument(
        "--age-weight",
        type=float,
        default=0.0,
        help="with --condition-in prior: weight of the flow's own age cross-entropy (nats) added to the bits/dim",
    )
    add_schedule_arguments(p, batch_size=16, warmup=200, epochs=50.0, eval_every=500, eval_limit=128)
    add_machine_arguments(p)
    return p.parse_args(argv)


def config_from(args) -> DetailConfig:
    return DetailConfig(
        steps=tuple(int(k) for k in args.steps.split(",")),
        width=args.width,
        encoder_width=args.encoder_width,
        features=args.features,
        condition_in=args.condition_in,
        scale_bound=args.scale_bound,
    )


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The faces of one epoch in a fixed order that depends only on the seed and the epoch."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100003 + epoch))


def main(argv=None) -> None:
    args = parse_args(argv)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    if device.type == "cpu":
        torch.set_flush_denormal(True)  # denormals make the first steps 10-20 times slower on CPUs
        torch.set_num_threads(args.threads or os.cpu_count() or 1)
    args.run.mkdir(parents=True, exist_ok=True)
    state_path = args.run / "train_state.pt"

    state = (
        torch.load(state_path, map_location="cpu", weights_only=True) if args.resume and state_path.exists() else None
    )
    torch.manual_seed(args.seed)
    stage = (
        DetailStage.from_config_json(state["config"])
        if state is not None
        else DetailStage.new(config_from(args), context_blur=args.context_blur)
    )
    stage.flow.to(device)
    age_weight = args.age_weight
    if age_weight and stage.flow.config.condition_in != "prior":
        raise SystemExit("--age-weight needs a flow whose age enters the prior (--condition-in prior)")
    optimizer = torch.optim.Adam(stage.flow.parameters(), lr=args.lr)

    train = load_detail_faces(args.data, "train", limit=args.train_limit)
    heldout = load_detail_faces(args.data, "heldout")
    steps_per_epoch = len(train) // args.batch_size
    if steps_per_epoch == 0:
        raise SystemExit(f"{len(train)} training faces are fewer than one batch of {args.batch_size}")
    generator = torch.Generator().manual_seed(args.seed)

    step, epoch, position, elapsed = 0, 0, 0, 0.0
    if state is not None:
        stage.flow.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, epoch, position, elapsed = state["step"], state["epoch"], state["position"], state["elapsed"]
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
    if not args.resume:
        (args.run / "args.json").write_text(json.dumps({k: str(v) for k, v in vars(args).items()}, indent=2))

    def log(record: dict) -> None:
        with open(args.run / "log.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    def evaluate() -> None:
        log(
            {
                "step": step,
                "epoch": epoch,
                "elapsed_min": elapsed / 60,
                "heldout_bpd": evaluate_detail_bits_per_dim(stage, heldout, device, args.eval_limit),
            }
        )

    if state is None:
        # data-dependent ActNorm initialization on one large batch of patches, then the untrained figure
        init = torch.Generator().manual_seed(args.seed)
        idx = torch.randperm(len(train), generator=init)[:256].numpy()
        detail, context, ages = patch_batch(stage, train, idx, args.patch, init, device)
        with torch.no_grad():
            stage.log_prob(detail, context, ages)
        evaluate()

    stop = {"now": False}

    def request_stop(signum, frame):
        stop["now"] = True

    previous_handlers = {signum: signal.signal(signum, request_stop) for signum in (signal.SIGINT, signal.SIGTERM)}

    def checkpoint() -> None:
        payload = {
            "model": stage.flow.state_dict(),
            "optimizer": optimizer.state_dict(),
            "step": step,
            "epoch": epoch,
            "position": position,
            "elapsed": elapsed,
            "generator": generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "config": stage.config_json(),
        }
        tmp = state_path.with_suffix(".tmp")
        torch.save(payload, tmp)
        tmp.replace(state_path)
        stage.save(args.run)

    max_steps = args.max_steps or int(args.epochs * steps_per_epoch)
    dims = stage.flow.config.channels * args.patch * args.patch
    last_checkpoint = time.time()
    started = time.time() - elapsed
    progress = tqdm(total=max_steps, initial=step, unit="step", smoothing=0.05)
    stage.flow.train()
    while step < max_steps and not stop["now"]:
        order = epoch_order(len(train), args.seed, epoch)
        while position < steps_per_epoch and step < max_steps and not stop["now"]:
            t0 = time.time()
            idx = order[position * args.batch_size : (position + 1) * args.batch_size].numpy()
            detail, context, ages = patch_batch(stage, train, idx, args.patch, generator, device)
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(args, step, max_steps)
            if age_weight:
                log_p, age_nats = stage.log_prob_and_age_nats(detail, context, ages)
                bpd = (-log_p / (dims * math.log(2.0))).mean() + BITS_OFFSET
                loss = bpd + age_weight * age_nats.mean()
            else:
                bpd = loss = (-stage.log_prob(detail, context, ages) / (dims * math.log(2.0))).mean() + BITS_OFFSET
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(stage.flow.parameters(), args.clip)
            if torch.isfinite(grad_norm):
                optimizer.step()
            step += 1
            position += 1
            elapsed = time.time() - started
            rate = len(idx) / max(time.time() - t0, 1e-9)
            progress.set_postfix(bpd=f"{bpd.item():.3f}", patches_s=f"{rate:.1f}")
            progress.update(1)
            if step % 50 == 0:
                log(
                    {
                        "step": step,
                        "epoch": epoch,
                        "bpd": bpd.item(),
                        **({"age_nats": age_nats.mean().item()} if age_weight else {}),
                        "grad_norm": float(grad_norm),
                        "patches_s": rate,
                        "elapsed_min": elapsed / 60,
                    }
                )
            if args.eval_every and step % args.eval_every == 0:
                evaluate()
            if time.time() - last_checkpoint > args.checkpoint_every:
                checkpoint()
                last_checkpoint = time.time()
            if args.max_minutes and elapsed > args.max_minutes * 60:
                stop["now"] = True
        if position >= steps_per_epoch:
            epoch, position = epoch + 1, 0
            if not args.eval_every:
                evaluate()
    progress.close()
    for signum, handler in previous_handlers.items():  # main() may run inside another program, e.g. the tests
        signal.signal(signum, handler)
    checkpoint()
    print(
        json.dumps(
            {
                "step": step,
                "epoch": epoch,
                "elapsed_min": round(elapsed / 60, 1),
                "config": json.loads(stage.config_json()),
            }
        )
    )


if __name__ == "__main__":
    main()

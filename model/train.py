"""Train the flow: `python -m model.train --data data/faces --run runs/glow64`.

Runs on the CPU or one GPU, or on several GPUs with `torchrun --nproc_per_node N -m model.train ...`
(DistributedDataParallel, one DistributedSampler shard per process). The run folder holds
`train_state.pt` (model, optimizer, step, position in the epoch, random states; written every
`--checkpoint-every` seconds and on Ctrl-C or SIGTERM, loaded with weights_only=True), the exported model
(`flow.safetensors` + `flow_config.json`), `log.jsonl` and sample grids. `--resume` continues exactly.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data.distributed import DistributedSampler
from tqdm import tqdm

from model.checkpoint import save_flow
from model.condition import GENDERS, RACES
from model.config import FlowConfig
from model.data import load_faces
from model.evaluation import evaluate_bits_per_dim, evaluate_heads, save_grid
from model.flow.glow import Glow
from model.heads import HEADS_FILE, LatentHeads, label_indices, save_heads
from model.run_options import add_machine_arguments, add_schedule_arguments, learning_rate


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=Path("data/faces"))
    p.add_argument("--run", type=Path, default=Path("runs/glow64"))
    p.add_argument("--resume", action="store_true", help="continue the run in --run exactly where it stopped")
    p.add_argument(
        "--init-from",
        type=Path,
        default=None,
        help="start from another run's model, optimizer and step count (e.g. on a larger data set)",
    )
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--levels", type=int, default=3)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--width", type=int, default=96)
    p.add_argument("--level-widths", default="", help="coupling widths per level, finest first, e.g. 48,160,224")
    p.add_argument("--level-steps", default="", help="steps per level, finest first, e.g. 8,8,12")
    p.add_argument(
        "--heads-weight",
        type=float,
        default=150.0,
        help="weight of the age/gender/ethnicity heads on the top latent, in units of their natural "
        "scale (nats per face over the bits of a face); 0: no heads",
    )
    p.add_argument("--coupling", default="additive", choices=["additive", "affine"])
    p.add_argument("--mixing", default="conv1x1", choices=["conv1x1", "reverse"])
    p.add_argument("--mask", default="channel", choices=["channel", "checkerboard", "realnvp"])
    p.add_argument("--n-bits", type=int, default=5)
    p.add_argument("--unconditional", action="store_true", help="priors not conditioned on age/gender/race")
    add_schedule_arguments(
        p, batch_size=32, warmup=500, epochs=100.0, eval_every=0, eval_limit=1000, batch_help="per process"
    )
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA only; slower on CPUs here)")
    add_machine_arguments(p)
    return p.parse_args(argv)


def config_from(args) -> FlowConfig:
    def ints(text: str) -> tuple[int, ...]:
        return tuple(int(v) for v in text.split(",")) if text else ()

    return FlowConfig(
        resolution=args.resolution,
        levels=args.levels,
        steps=args.steps,
        width=args.width,
        coupling=args.coupling,
        mixing=args.mixing,
        mask=args.mask,
        n_bits=args.n_bits,
        conditional=not args.unconditional,
        level_widths=ints(args.level_widths),
        level_steps=ints(args.level_steps),
    )


def main(argv=None) -> None:
    args = parse_args(argv)
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    rank, world = 0, 1
    if distributed:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(device)
    if device.type == "cpu":
        torch.set_flush_denormal(True)  # denormals make the first steps 10-20 times slower on CPUs
        torch.set_num_threads(args.threads or os.cpu_count() or 1)
    main_process = rank == 0
    args.run.mkdir(parents=True, exist_ok=True)
    state_path = args.run / "train_state.pt"

    config = config_from(args)
    state = None
    if args.resume and state_path.exists():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
    elif args.init_from is not None:
        state = torch.load(args.init_from / "train_state.pt", map_location="cpu", weights_only=True)
        # a new data set: the position in the epoch and the random streams start afresh
        state.update(epoch=0, position=0, generator=None, torch_rng=None)
    if state is not None:
        config = FlowConfig(**json.loads(state["config"]))
    torch.manual_seed(args.seed)
    model = Glow(config).to(device)
    model.gradient_checkpointing = args.gradient_checkpointing
    heads_weight = float(state["heads_weight"]) if state is not None and "heads_weight" in state else args.heads_weight
    heads = LatentHeads(model.priors[-1].shape).to(device) if heads_weight > 0 else None
    parameters = list(model.parameters()) + (list(heads.parameters()) if heads is not None else [])
    optimizer = torch.optim.Adam(parameters, lr=args.lr)
    # nats per face -> the bits/dim scale of the flow's loss, times the weight above that natural scale
    heads_scale = heads_weight / (config.dimensions * math.log(2.0))

    train = load_faces(args.data, config.resolution, "train", args.train_limit)
    heldout = load_faces(args.data, config.resolution, "heldout")
    train_genders = label_indices(train.genders, GENDERS)
    train_races = label_indices(train.races, RACES)
    sampler = DistributedSampler(
        range(len(train)), num_replicas=world, rank=rank, shuffle=True, seed=args.seed, drop_last=True
    )
    steps_per_epoch = len(sampler) // args.batch_size
    if steps_per_epoch == 0:  # an epoch without a step would never end
        raise SystemExit(f"{len(sampler)} training faces per process are fewer than one batch of {args.batch_size}")
    generator = torch.Generator().manual_seed(args.seed * 1000 + rank)

    step, epoch, position, elapsed = 0, 0, 0, 0.0
    if state is not None:
        model.load_state_dict(state["model"])
        if heads is not None and "heads" in state:
            heads.load_state_dict(state["heads"])
        optimizer.load_state_dict(state["optimizer"])
        step, epoch, position, elapsed = state["step"], state["epoch"], state["position"], state["elapsed"]
        if state["generator"] is not None:
            generator.set_state(state["generator"][rank])
            torch.set_rng_state(state["torch_rng"])
    if main_process and not args.resume:
        (args.run / "args.json").write_text(json.dumps({k: str(v) for k, v in vars(args).items()}, indent=2))

    # data-dependent ActNorm initialization on one large batch, before the model is wrapped
    if state is None:
        init_idx = torch.randperm(len(train), generator=torch.Generator().manual_seed(args.seed))[:256].numpy()
        with torch.no_grad():
            model.log_prob(
                train.batch(init_idx, device),
                train.conditions(config, init_idx).to(device) if config.conditional else None,
                dequantize=True,
            )
    wrapped = (
        DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None) if distributed else model
    )

    stop = {"now": False}

    def request_stop(signum, frame):
        stop["now"] = True

    previous_handlers = {signum: signal.signal(signum, request_stop) for signum in (signal.SIGINT, signal.SIGTERM)}

    def checkpoint() -> None:
        if not main_process:
            return
        gens = [generator.get_state()] * world  # every rank restarts from the same kind of state
        payload = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "step": step,
            "heads_weight": heads_weight,
            **({"heads": heads.state_dict()} if heads is not None else {}),
            "epoch": epoch,
            "position": position,
            "elapsed": elapsed,
            "generator": gens,
            "torch_rng": torch.get_rng_state(),
            "config": config.to_json(),
        }
        tmp = state_path.with_suffix(".tmp")
        torch.save(payload, tmp)
        tmp.replace(state_path)
        save_flow(model, args.run)
        if heads is not None:
            save_heads(heads, args.run / HEADS_FILE)

    def log(record: dict) -> None:
        if main_process:
            with open(args.run / "log.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")

    max_steps = args.max_steps or int(args.epochs * steps_per_epoch)
    last_checkpoint = time.time()
    started = time.time() - elapsed
    progress = tqdm(total=max_steps, initial=step, unit="step", disable=not main_process, smoothing=0.05)
    model.train()
    while step < max_steps and not stop["now"]:
        sampler.set_epoch(epoch)
        order = list(sampler)
        while position < steps_per_epoch and step < max_steps and not stop["now"]:
            t0 = time.time()
            idx = np.array(order[position * args.batch_size : (position + 1) * args.batch_size])
            x = train.batch(idx, device)
            flip = torch.rand(len(idx), generator=generator) < 0.5
            x[flip] = x[flip].flip(3)
            cond = train.conditions(config, idx).to(device) if config.conditional else None
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(args, step, max_steps)
            noise = torch.rand(x.shape, generator=generator).to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16 and device.type == "cuda"):
                bits, top = wrapped(model.quantize(x, noise), cond, with_top=True)
            bpd = bits.mean()
            head_losses = {}
            if heads is not None:
                t = torch.from_numpy(idx)
                head_losses = {
                    k: v.mean()
                    for k, v in heads.loss(
                        heads(top.float()),
                        torch.from_numpy(train.ages[idx]).to(device),
                        train_genders[t].to(device),
                        train_races[t].to(device),
                    ).items()
                }
            loss = bpd + heads_scale * sum(head_losses.values()) if head_losses else bpd
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
            if torch.isfinite(grad_norm):
                optimizer.step()
            step += 1
            position += 1
            elapsed = time.time() - started
            rate = len(idx) * world / max(time.time() - t0, 1e-9)
            progress.set_postfix(bpd=f"{bpd.item():.3f}", img_s=f"{rate:.1f}")
            progress.update(1)
            if step % 50 == 0:
                log(
                    {
                        "step": step,
                        "epoch": epoch,
                        "bpd": bpd.item(),
                        "loss": loss.item(),
                        **{f"{k}_nats": v.item() for k, v in head_losses.items()},
                        "grad_norm": float(grad_norm),
                        "lr": optimizer.param_groups[0]["lr"],
                        "img_s": rate,
                        "elapsed_min": elapsed / 60,
                    }
                )
            if args.eval_every and step % args.eval_every == 0 and main_process:
                log(
                    {
                        "step": step,
                        "heldout_bpd": evaluate_bits_per_dim(model, heldout, device, args.eval_limit),
                        **(evaluate_heads(model, heads, heldout, device, args.eval_limit) if heads else {}),
                    }
                )
            if time.time() - last_checkpoint > args.checkpoint_every:
                checkpoint()
                last_checkpoint = time.time()
            if args.max_minutes and elapsed > args.max_minutes * 60:
                stop["now"] = True
        if position >= steps_per_epoch:
            epoch, position = epoch + 1, 0
            if main_process:
                held = evaluate_bits_per_dim(model, heldout, device, args.eval_limit)
                log(
                    {
                        "step": step,
                        "epoch": epoch,
                        "heldout_bpd": held,
                        **(evaluate_heads(model, heads, heldout, device, args.eval_limit) if heads else {}),
                    }
                )
                model.eval()
                with torch.no_grad():
                    save_grid(model.sample(32, temperature=0.7, seed=0), args.run / f"samples_epoch{epoch:03d}.png")
                model.train()
    progress.close()
    for signum, handler in previous_handlers.items():  # main() may run inside another program, e.g. the tests
        signal.signal(signum, handler)
    checkpoint()
    if main_process:
        print(
            json.dumps({"step": step, "epoch": epoch, "elapsed_min": round(elapsed / 60, 1), "config": asdict(config)})
        )
    if distributed:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()

"""Saving and loading the flow: weights in safetensors, the architecture in JSON. Nothing is unpickled."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from model.config import FlowConfig
from model.flow.glow import Glow

WEIGHTS = "flow.safetensors"
CONFIG = "flow_config.json"


def save_flow(model: Glow, folder: Path) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = folder / (WEIGHTS + ".tmp")
    save_file(state, str(tmp))
    tmp.replace(folder / WEIGHTS)
    model.config.save(folder / CONFIG)


def load_flow(folder: Path, device: str | torch.device = "cpu") -> Glow:
    folder = Path(folder)
    model = Glow(FlowConfig.load(folder / CONFIG))
    model.load_state_dict(load_file(str(folder / WEIGHTS), device="cpu"))
    return model.to(device).eval()

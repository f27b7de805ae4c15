"""Tiny random encoder weights in the released `imagebind_w3D.pth` format (offline demo, tests)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from demo.encoders.encoder import CONFIG_FILENAME, WEIGHTS_NAME, EncoderConfig, MultimodalEncoder



def write_tiny_encoder(folder: str | Path, seed: int = 0) -> Path:
    """Write a random "tiny" ImageBind + Point-Bind into `folder`; return the weights file's path.

    The file is what the release is: a plain dict of tensors under the released key names
    (ImageBind's own plus `point_trunk.*`, `modality_heads.point.*`, `modality_postprocessors.point.*`),
    so it goes through the same loading code. `encoder_config.json` beside it holds the sizes.
    The same seed gives the same weights; the global random state is left untouched.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = EncoderConfig.preset("tiny")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = MultimodalEncoder.from_config(config, device="cpu")
    state_dict = {**encoder.imagebind.state_dict(), **encoder.point.released_state_dict()}
    path = folder / WEIGHTS_NAME
    torch.save(state_dict, path)
    (folder / CONFIG_FILENAME).write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    return path

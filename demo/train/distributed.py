"""Several training processes (torchrun): which one this is, and the process group.

    torchrun --nproc-per-node 2 -m demo.train stage1 ... --batch-size 2   # global batch 2 x 2 x grad_accum

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; `init_world` joins the process group (gloo on CPU,
NCCL on CUDA) and returns a `World` that the trainer takes explicitly. Gradients are averaged by
PyTorch's DistributedDataParallel (demo/train/trainer.py); nothing here reduces tensors itself.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    """This process's place among the training processes; World() is a single process."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0  # the GPU index on this machine

    @property
    def is_main(self) -> bool:
        """The process that writes checkpoints, logs and the final adapter."""
        return self.rank == 0


def init_world(device: torch.device) -> World:
    """Join the process group torchrun describes in the environment; World() without torchrun."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def local_device(device: torch.device, world: World) -> torch.device:
    """Each process of a machine uses its own GPU (cuda:LOCAL_RANK)."""
    return torch.device("cuda", world.local_rank) if device.type == "cuda" and world.size > 1 else device


def close_world(world: World) -> None:
    if world.size > 1 and dist.is_initialized():
        dist.destroy_process_group()

"""One process per device, started by ``torchrun``: process group, device, rank-0-only side effects.

``torchrun`` sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK`` (and ``MASTER_ADDR``/``MASTER_PORT``);
without them (or with ``WORLD_SIZE=1``) training is a single plain process. The backend is NCCL on
CUDA and gloo on the CPU.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from ..errors import UserError


@dataclass
class Session:
    """Where this process runs: ``rank`` of ``world_size``, ``local_rank`` on its node, ``device``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """All-reduce (sum) a float tensor across processes (identity when not distributed)."""
        if not self.distributed:
            return values
        values = values.to(self.device)
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        return values

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def close(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()


def _pick_device(device: "str | None", local_rank: int) -> torch.device:
    if device in (None, "", "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError("--device cuda asked for, but PyTorch sees no CUDA GPU; use --device cpu")
        if device == "cuda":
            index = local_rank
        else:
            index = torch.device(device).index or 0
        if index >= torch.cuda.device_count():
            raise UserError(f"LOCAL_RANK {index} but only {torch.cuda.device_count()} CUDA device(s); "
                            "start torchrun with --nproc_per_node <= number of GPUs")
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    if device != "cpu":
        raise UserError(f"--device must be cpu or cuda, got {device!r}")
    return torch.device("cpu")


def setup(device: "str | None" = None, timeout_minutes: float = 30) -> Session:
    """Join the process group when started by torchrun; choose this process's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = _pick_device(device, local)
    if world > 1:
        if not dist.is_available():
            raise UserError("this PyTorch build has no torch.distributed; run a single process")
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if not dist.is_initialized():
            dist.init_process_group(backend=backend, timeout=timedelta(minutes=timeout_minutes))
    return Session(rank=rank, world_size=world, local_rank=local, device=dev)

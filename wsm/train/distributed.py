"""Multi-process training under torchrun: the process group's life, and a barrier that is a no-op alone."""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator


@contextlib.contextmanager
def distributed(device: str) -> Iterator[tuple[str, int, int]]:
    """Under torchrun (WORLD_SIZE > 1): init the process group (nccl on CUDA, gloo on CPU; the GPU of LOCAL_RANK)
    and destroy it on the way out. Yields (device, rank, world_size); without torchrun (device, 0, 1)."""
    import torch
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        yield device, 0, 1
        return
    if dist.is_initialized():
        yield device, dist.get_rank(), dist.get_world_size()
        return
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    try:
        yield device, dist.get_rank(), dist.get_world_size()
    finally:
        dist.destroy_process_group()


def barrier(world: int) -> None:
    """Wait for every process (rank 0 writes files the others read next); nothing to wait for alone."""
    if world > 1:
        import torch.distributed as dist

        dist.barrier()

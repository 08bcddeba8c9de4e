"""Several processes (``accelerate launch`` or ``torchrun``): one model per process,
the evaluation windows split between them, the metric sums gathered exactly.

Rank 0 owns the run directory and writes every file; the others only compute.
With one process nothing here touches ``torch.distributed``.
"""

from __future__ import annotations

import os

import torch

from .stream import Shard


class DistributedSetupError(ValueError):
    """A recipe that cannot run under several processes; one line."""


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def setup(recipe) -> tuple[Shard, object]:
    """Join the process group when launched with several processes.

    Returns:
        ``(shard, device)``: device is ``cuda:<local rank>`` (or ``cpu``) under several
        processes, else None (the recipe's own ``device``/``device_map`` apply).
    """
    if world_size() <= 1:
        return Shard(), None
    if recipe.model.device_map is not None:
        raise DistributedSetupError(
            "model.device_map spreads one model over all GPUs in one process; under accelerate launch "
            "each process holds a whole model: drop device_map, or run without accelerate launch"
        )
    if recipe.eval_data is not None and recipe.eval_data.target_ci:
        raise DistributedSetupError(
            "eval_data.target_ci decides after each window whether to go on, which needs one process: "
            "drop target_ci, or run without accelerate launch"
        )
    import torch.distributed as dist

    local = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return Shard(dist.get_rank(), dist.get_world_size()), device


def share_run(rundir, shard: Shard, error: str | None = None) -> tuple[str, dict]:
    """Rank 0's run directory and finished entries, on every rank (or rank 0's error, raised everywhere)."""
    if shard.world <= 1:
        if error is not None:
            raise RuntimeError(error)
        return str(rundir.path), rundir.load_finished()
    payload = [None]
    if shard.rank == 0:
        payload = [("error", error) if error is not None else (str(rundir.path), rundir.load_finished())]
    torch.distributed.broadcast_object_list(payload, src=0)
    first, second = payload[0]
    if first == "error":
        raise RuntimeError(f"rank 0 failed: {second}")
    return first, second


def barrier(shard: Shard) -> None:
    if shard.world > 1:
        torch.distributed.barrier()

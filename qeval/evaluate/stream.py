"""One pass of a causal LM over the evaluation windows: perplexity, KL and top-1 together.

The baseline pass writes its log-probabilities to a ``BaselineSpill``; a
policy's pass reads them back window by window. Under ``accelerate launch``
each process takes windows ``rank, rank + world, ...``; the per-window sums
are gathered and added in window order in float64, so the result is the same
number whatever the number of processes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .divergence import BaselineSpill, kl_rows, percentile, top1_matches
from .perplexity import Window, log_softmax_rows, nll_sum, window_logits


@dataclass
class WindowStats:
    index: int
    nll: float
    n: int
    kl_sum: float = 0.0
    top1: int = 0
    kl_values: np.ndarray | None = None


@dataclass(frozen=True)
class Shard:
    """Which share of the windows this process evaluates (``rank`` of ``world``)."""

    rank: int = 0
    world: int = 1

    def take(self, windows: list[Window]) -> list[Window]:
        return windows[self.rank :: self.world]


def current_shard() -> Shard:
    """The shard of this process: (0, 1) unless torch.distributed is initialised with several ranks."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return Shard(torch.distributed.get_rank(), torch.distributed.get_world_size())
    return Shard()


def gather_stats(local: list[WindowStats], shard: Shard) -> list[WindowStats]:
    """Every process's window stats, on every process, in window order."""
    if shard.world > 1:
        parts: list = [None] * shard.world
        torch.distributed.all_gather_object(parts, local)
        local = [s for part in parts for s in part]
    return sorted(local, key=lambda s: s.index)


def _progress(iterable, desc: str, total: int, enabled: bool):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, unit="win", leave=False, dynamic_ncols=True)


@torch.no_grad()
def lm_pass(
    model,
    token_ids: torch.Tensor,
    windows: list[Window],
    spill: BaselineSpill,
    *,
    baseline: bool,
    device=None,
    shard: Shard = Shard(),
    chunk: int = 256,
    desc: str = "eval",
    progress: bool = True,
) -> dict:
    """Evaluate ``model`` on this process's windows and return the gathered metrics.

    Args:
        baseline: True for the unquantized model (writes the spill; no KL), False
            for a policy (reads the spill; computes KL and top-1 against it).
        chunk: rows per step of log-softmax and KL (bounds scratch memory).

    Returns:
        ``perplexity``, ``perplexity_tokens``; and for a policy also ``kl_mean``,
        ``kl_p99``, ``top1_agreement`` and ``tokens`` (positions compared).
    """
    local = local_pass(model, token_ids, windows, spill, baseline=baseline, device=device, shard=shard,
                       chunk=chunk, desc=desc, progress=progress)
    return summarize(gather_stats(local, shard), with_kl=not baseline)


@torch.no_grad()
def local_pass(model, token_ids, windows, spill, *, baseline, device=None, shard=Shard(), chunk=256,
               desc="eval", progress=True) -> list[WindowStats]:
    """This process's share of ``lm_pass``: stats of its windows, not gathered."""
    mine = shard.take(windows)
    rows = {w.index: w.n_targets for w in mine}
    local: list[WindowStats] = []
    if not baseline:
        spill.open_read(rows)
    opened = False
    for w in _progress(mine, desc, len(mine), progress and shard.rank == 0):
        logits = window_logits(model, token_ids, w, device)
        logq = log_softmax_rows(logits, chunk)
        del logits
        targets = token_ids[w.first_target : w.stop_target]
        stats = WindowStats(w.index, nll_sum(logq, targets), w.n_targets)
        if baseline:
            if not opened:  # the vocabulary size is known only now
                spill.open_write(rows, logq.shape[-1])
                opened = True
            spill.write(w.index, logq)
        else:
            logp = spill.read(w.index, logq.device)
            kl = kl_rows(logp, logq, chunk)
            stats.kl_sum = float(kl.double().sum())
            stats.top1 = top1_matches(logp, logq)
            stats.kl_values = kl.cpu().numpy()
        local.append(stats)
    if baseline:
        if not opened:  # a process with no windows still leaves a valid (empty) spill
            spill.open_write({}, 1)
        spill.finish()
    else:
        spill.close()
    return local


def _exp(x: float) -> float:
    return math.exp(x) if x < 709.0 else math.inf  # a broken policy overflows, it does not crash the run


def summarize(stats: list[WindowStats], with_kl: bool) -> dict:
    """Add up window stats in window order (float64), the same on any number of processes."""
    n = sum(s.n for s in stats)
    nll = math.fsum(s.nll for s in stats)
    out = {"perplexity": _exp(nll / n) if n else math.nan, "perplexity_tokens": n}
    if with_kl:
        kl_values = np.concatenate([s.kl_values for s in stats]) if stats else np.zeros(0, np.float32)
        out.update(
            {
                "kl_mean": math.fsum(s.kl_sum for s in stats) / n if n else math.nan,
                "kl_p99": percentile(kl_values, 99.0),
                "top1_agreement": sum(s.top1 for s in stats) / n if n else math.nan,
                "tokens": n,
            }
        )
    return out

"""One pass of a causal LM over the evaluation windows: perplexity, KL and top-1 together.

The baseline pass writes its log-probabilities to a store (a ``BaselineSpill``
file, or device memory: ``qeval.evaluate.baseline_store``); a policy's pass
reads them back window by window. Under ``accelerate launch``
each process takes windows ``rank, rank + world, ...``; the per-window sums
are gathered and added in window order in float64, so the result is the same
number whatever the number of processes.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from qeval.uncertainty import bootstrap_interval, bootstrap_quantile, bootstrap_summary, exp_interval, ratio_estimate

from .divergence import BaselineSpill, kl_rows, percentile
from .fused import row_metrics
from .graphs import GraphedForward
from .perplexity import Window, log_softmax_rows, nll_total, window_logits


@dataclass
class WindowStats:
    index: int
    nll: float
    n: int
    kl_sum: float = 0.0
    top1: int = 0
    kl_values: np.ndarray | None = None
    nonfinite: int = 0  # positions whose logits (this pass's, or the baseline's they are compared with) hold NaN/Inf


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
    confidence: float = 0.95,
    replicates: int = 1000,
    seed: int = 0,
    stop: Callable[[list[WindowStats]], bool] | None = None,
    cuda_graph: bool = True,
) -> dict:
    """Evaluate ``model`` on this process's windows and return the gathered metrics.

    Args:
        baseline: True for the unquantized model (writes the spill; no KL), False
            for a policy (reads the spill; computes KL and top-1 against it).
        chunk: rows per step of log-softmax and KL (bounds scratch memory).
        confidence, replicates, seed: of the intervals (``qeval.uncertainty``); the
            p99 bootstrap draws ``replicates`` resamples seeded with ``seed``.
        stop: called with the windows done so far (in order, one process only);
            True ends the pass early (a target precision is reached).
        cuda_graph: replay the forward from a CUDA graph where it is safe
            (``qeval.evaluate.graphs``; same numbers, fewer host launches).

    Returns:
        ``perplexity``, ``perplexity_tokens``; and for a policy also ``kl_mean``,
        ``kl_p99``, ``top1_agreement`` and ``tokens`` (positions compared); ``ci``
        (intervals) and ``windows`` (per-window sums, for paired comparisons);
        ``forward``: this process's ``GraphedForward.note`` (how the forward ran).
    """
    if stop is not None and shard.world > 1:
        raise ValueError("stopping at a target precision needs one process (windows are split across processes)")
    notes: dict = {}
    local = local_pass(model, token_ids, windows, spill, baseline=baseline, device=device, shard=shard,
                       chunk=chunk, desc=desc, progress=progress, stop=stop, cuda_graph=cuda_graph, notes=notes)
    stats = gather_stats(local, shard)
    out = summarize(stats, with_kl=not baseline, confidence=confidence, replicates=replicates, seed=seed)
    out["windows"]["key"] = windows_key(token_ids, windows)
    out["ci"]["stopped_by"] = "target_ci" if len(stats) < len(windows) else "max_tokens"
    out["forward"] = notes["forward"]
    return out


def windows_key(token_ids: torch.Tensor, windows: list[Window]) -> str:
    """sha256 of the token ids and the window layout: equal keys mean the same tokens in the same windows."""
    h = hashlib.sha256(token_ids.detach().cpu().to(torch.int64).numpy().tobytes())
    h.update(np.asarray([[w.begin, w.end, w.first_target, w.stop_target] for w in windows], dtype=np.int64).tobytes())
    return h.hexdigest()


def finite_rows(x: torch.Tensor) -> torch.Tensor:
    """``torch.isfinite(x).all(-1)`` from two reductions: a row's max is NaN if it holds a NaN and +Inf if it
    holds one, its min -Inf if it holds one. No vocabulary-sized temporaries (isfinite makes four)."""
    return torch.isfinite(x.amax(-1)) & torch.isfinite(x.amin(-1))


def _to_host(t: torch.Tensor | None) -> torch.Tensor | None:
    """``t`` itself on the CPU; from a GPU, a pinned copy that arrives without the host waiting."""
    if t is None or not t.is_cuda:
        return t
    out = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
    return out.copy_(t, non_blocking=True)


class _Readback:
    """One window's sums, copied to the host without waiting: ``stats()`` waits for them.

    The sums are computed on the device and copied out with non-blocking copies
    behind an event, so the host can queue the next window's forward while the
    device still works on this one (a host sync per window leaves the GPU idle
    while the host launches the next window's kernels).
    """

    def __init__(self, index: int, n: int, sums: torch.Tensor, kl: torch.Tensor | None):
        self.index, self.n = index, n
        self.sums, self.kl, self.event = _to_host(sums), _to_host(kl), None
        if sums.is_cuda:
            self.event = torch.cuda.Event()
            self.event.record(torch.cuda.current_stream(sums.device))

    def stats(self) -> WindowStats:
        if self.event is not None:
            self.event.synchronize()
        nll, kl_sum, top1, nonfinite = self.sums.tolist()
        out = WindowStats(self.index, nll, self.n, nonfinite=int(nonfinite))
        if self.kl is not None:
            out.kl_sum, out.top1, out.kl_values = kl_sum, int(top1), self.kl.numpy()
        return out


@torch.no_grad()
def local_pass(model, token_ids, windows, spill, *, baseline, device=None, shard=Shard(), chunk=256,
               desc="eval", progress=True, stop=None, cuda_graph=True, notes=None) -> list[WindowStats]:
    """This process's share of ``lm_pass``: stats of its windows, not gathered.

    Each window's sums are read back after the next window is queued (``_Readback``);
    with ``stop``, the window queued past the stopping point is dropped, so the
    result is the same as reading every window back at once. The token ids go to
    ``device`` once (a copy from pageable host memory per window would make the
    host wait for the GPU at every window). ``notes["forward"]``, when ``notes`` is
    given: how the forward ran (``GraphedForward.note``).
    """
    mine = shard.take(windows)
    if device is not None and torch.device(device).type == "cuda":
        token_ids = token_ids.to(device)
    forward = GraphedForward(model, enabled=cuda_graph)
    rows = {w.index: w.n_targets for w in mine}
    local: list[WindowStats] = []
    if not baseline:
        spill.open_read(rows)
    opened = False
    pending: _Readback | None = None
    for w in _progress(mine, desc, len(mine), progress and shard.rank == 0):
        logits = window_logits(model, token_ids, w, device, forward=forward)
        # in place where the logits are a float32 tensor of their own (the model's output is not read again)
        logq = log_softmax_rows(logits, chunk, out=logits if logits.dtype == torch.float32 else None)
        del logits
        nll = nll_total(logq, token_ids[w.first_target : w.stop_target])
        if baseline:
            finite = finite_rows(logq)
            kl = None
            kl_sum = top1 = torch.zeros((), dtype=torch.float64, device=logq.device)
            if not opened:  # the vocabulary size is known only now
                spill.open_write(rows, logq.shape[-1])
                opened = True
            spill.write(w.index, logq)
        else:
            logp = spill.read(w.index, logq.device)
            fused = row_metrics(logp, logq)  # one read of each on a GPU, else the torch reference
            if fused is None:
                finite = finite_rows(logq) & finite_rows(logp)
                kl, top_q = kl_rows(logp, logq, chunk), logq.argmax(-1)
            else:
                kl, finite, top_q = fused
            # a NaN row is no match and no small divergence: KL NaN, top-1 miss (argmax of two NaN rows agrees)
            kl = torch.where(finite, kl, torch.full_like(kl, math.nan))
            kl_sum = kl.double().sum()
            # the store keeps the baseline's argmax from before any rounding: top-1 is exact
            top1 = ((spill.argmax(w.index, logq.device) == top_q) & finite).sum().double()
        sums = torch.stack([nll, kl_sum, top1, (~finite).sum().double()])
        if pending is not None:
            local.append(pending.stats())
            if stop is not None and stop(local):
                pending = None  # this window is past the stopping point
                break
        pending = _Readback(w.index, w.n_targets, sums, kl)
    if pending is not None:
        local.append(pending.stats())
    forward.close()
    if notes is not None:
        notes["forward"] = forward.note
    if baseline:
        if not opened:  # a process with no windows still leaves a valid (empty) spill
            spill.open_write({}, 1)
        spill.finish()
    else:
        spill.close()
    return local


def _exp(x: float) -> float:
    return math.exp(x) if x < 709.0 else math.inf  # a broken policy overflows, it does not crash the run


def _interval(lo: float, hi: float) -> list[float] | None:
    return None if math.isnan(lo) or math.isnan(hi) else [lo, hi]  # None: fewer than 2 windows


def summarize(stats: list[WindowStats], with_kl: bool, confidence: float = 0.95, replicates: int = 0,
              seed: int = 0) -> dict:
    """Add up window stats in window order (float64), the same on any number of processes.

    Besides the metrics: ``windows`` (per-window token counts and sums: what
    paired comparisons and the gate's bounds are computed from) and ``ci``
    (intervals at ``confidence``, method in ``qeval.uncertainty``). The KL p99
    interval needs ``replicates`` bootstrap resamples (0: none, for callers
    that summarize many times, like ``qeval search``; ``lm_pass`` asks for 1000).
    """
    n = sum(s.n for s in stats)
    nll = math.fsum(s.nll for s in stats)
    out = {"perplexity": _exp(nll / n) if n else math.nan, "perplexity_tokens": n,
           "nonfinite_logits": sum(s.nonfinite for s in stats)}
    if math.isnan(nll):
        out["perplexity"] = math.nan  # exp(NaN) would read as a number in a table
    counts = [s.n for s in stats]
    per_window = {"tokens": counts, "nll": [s.nll for s in stats]}
    ci: dict = {"confidence": confidence, "windows": len(stats),
                "perplexity": _interval(*exp_interval(*ratio_estimate(per_window["nll"], counts).interval(confidence)))}
    out["windows"], out["ci"] = per_window, ci
    if with_kl:
        per_window["kl_sum"] = [s.kl_sum for s in stats]
        per_window["top1"] = [s.top1 for s in stats]
        ci["kl_mean"] = _interval(*ratio_estimate(per_window["kl_sum"], counts).interval(confidence))
        ci["top1_agreement"] = _interval(*ratio_estimate(per_window["top1"], counts).interval(confidence))
        reps = bootstrap_quantile([s.kl_values for s in stats], 99.0, replicates, seed) if len(stats) > 1 else []
        boot = bootstrap_summary(np.asarray(reps))
        ci["kl_p99"] = _interval(*bootstrap_interval(boot, confidence)) if boot else None
        ci["kl_p99_bootstrap"] = {"replicates": replicates, "seed": seed, "levels": boot}
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

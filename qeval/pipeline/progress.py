"""What ``qeval run`` shows while it works: a step line per evaluation with elapsed time and an
ETA, and transformers' loading bar (silenced with the rest by ``--no-progress``)."""

from __future__ import annotations

import contextlib
import math
import sys
import time

from qeval.evaluate.stream import Shard


@contextlib.contextmanager
def loading_bars(show: bool):
    """transformers draws a bar while loading weights; ``--no-progress`` silences it too."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    if not show:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


class Clock:
    """Elapsed time and an ETA over the evaluations this run still has to do."""

    def __init__(self, todo: int):
        self.start, self.todo, self.done = time.monotonic(), todo, 0

    def tick(self) -> None:
        self.done += 1

    def line(self) -> str:
        spent = time.monotonic() - self.start
        left = self.todo - self.done
        eta = f", ETA {_mmss(spent / self.done * left)}" if self.done and left > 0 else ""
        return f"elapsed {_mmss(spent)}{eta}"


def _mmss(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}" if m >= 60 else f"{m}:{s:02d}"


def announce(shard: Shard, step: int, total: int, name: str, entry: dict, clock: Clock | None,
             reused: bool = False) -> None:
    """``[2/6] nvfp4: ppl .., KL .. (24.0 s; elapsed 1:02, ETA 3:10)``; nothing under --no-progress (no clock).
    ``reused``: the entry comes from the interrupted run being resumed (its time is not this run's)."""
    if shard.rank != 0 or clock is None:
        return
    m = entry.get("metrics") or {}
    bits = []
    for key, fmt in (("perplexity", "ppl {:.3f}"), ("kl_mean", "KL {:.4f}"), ("top1_agreement", "top-1 {:.3f}"),
                     ("embedding_cosine_mean", "cos {:.4f}")):
        v = m.get(key)
        if isinstance(v, (int, float)) and math.isfinite(v):
            bits.append(fmt.format(v))
    tm = entry.get("timings") or {}
    t = tm.get("quantize_s", 0.0) + tm.get("eval_s", 0.0)
    took = "reused from the interrupted run" if reused else f"{t:.1f} s"
    print(f"[{step}/{total}] {name}: {', '.join(bits) or 'done'} ({took}; {clock.line()})", file=sys.stderr, flush=True)

"""Perplexity with sliding windows (the Hugging Face "strided" recipe).

Each window feeds up to ``window`` tokens ``[begin, end)``; its logits predict
tokens ``begin+1 .. end`` (the last row predicts the token just past the
window). A window scores only the tokens no earlier window scored, so every
token after the first is scored exactly once, also without overlap
(``stride == window``); overlap (``stride < window``) gives the later tokens
more context. Token ``t`` is scored by the first window with ``end >= t``, with
context ``[begin, t)``.

>>> [(w.begin, w.end, w.first_target, w.stop_target) for w in sliding_windows(10, window=4, stride=3)]
[(0, 4, 1, 5), (3, 7, 5, 8), (6, 10, 8, 10)]
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Window:
    """One model call: input tokens ``[begin, end)``, scored targets ``[first_target, stop_target)``."""

    index: int
    begin: int
    end: int
    first_target: int
    stop_target: int

    @property
    def n_targets(self) -> int:
        return self.stop_target - self.first_target


def sliding_windows(n_tokens: int, window: int, stride: int) -> list[Window]:
    """The windows that score tokens ``1..n_tokens-1`` once each.

    Args:
        n_tokens: length of the token stream (at least 2).
        window: tokens per model call.
        stride: step between window starts, ``1 <= stride <= window``.
    """
    if n_tokens < 2:
        raise ValueError(f"need at least 2 tokens to score, got {n_tokens}")
    if not 1 <= stride <= window:
        raise ValueError(f"stride must be in [1, window={window}], got {stride}")
    out: list[Window] = []
    prev_stop = 1
    for begin in range(0, n_tokens, stride):
        end = min(begin + window, n_tokens)
        stop = min(end + 1, n_tokens)
        first = max(prev_stop, begin + 1)
        if stop > first:
            out.append(Window(len(out), begin, end, first, stop))
        prev_stop = stop
        if stop == n_tokens:
            break
    return out


def _accepts_logits_to_keep(model) -> bool:
    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


@torch.no_grad()
def window_logits(model, token_ids: torch.Tensor, w: Window, device=None, forward=None) -> torch.Tensor:
    """Float32 logits ``[w.n_targets, vocab]`` that predict tokens ``first_target .. stop_target-1``.

    Row ``i`` predicts token ``first_target + i``. Only the rows from the first
    needed one to the end are kept (``logits_to_keep`` where the model supports
    it), which bounds memory for large vocabularies when windows overlap.
    ``forward``: a ``GraphedForward`` of ``model`` (``qeval.evaluate.graphs``);
    the tensor returned is the caller's own either way.
    """
    ids = token_ids[w.begin : w.end].unsqueeze(0)
    if device is not None:
        ids = ids.to(device)
    kwargs = {"use_cache": False}
    keep = w.end - w.first_target + 1  # rows first_target-1-begin .. end-1-begin
    if _accepts_logits_to_keep(model):
        kwargs["logits_to_keep"] = keep
    logits = (model(input_ids=ids, **kwargs).logits if forward is None else forward(ids, **kwargs))[0]
    logits = logits[-keep:][: w.n_targets]
    if forward is not None and logits.dtype == torch.float32:
        return logits.clone()  # a replay's logits are the graph's, overwritten by the next window
    return logits.float()


def log_softmax_rows(logits: torch.Tensor, chunk: int = 256, out: torch.Tensor | None = None) -> torch.Tensor:
    """``log_softmax`` over the vocabulary in float32, ``chunk`` rows at a time (bounded scratch memory).

    ``out``: a float32 tensor of ``logits``' shape to write into; ``logits`` itself when the caller has no
    further use for it (each chunk is read whole before it is overwritten): one vocabulary-sized tensor less.
    """
    if out is None:
        out = torch.empty(logits.shape, dtype=torch.float32, device=logits.device)
    for s in range(0, logits.shape[0], chunk):
        out[s : s + chunk] = torch.log_softmax(logits[s : s + chunk].float(), dim=-1)
    return out


def nll_total(logp: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Sum of ``-log p(target)`` in float64, as a 0-d tensor on logp's device (no host sync)."""
    picked = logp.gather(1, targets.to(logp.device).view(-1, 1)).squeeze(1)
    return -picked.double().sum()


def nll_sum(logp: torch.Tensor, targets: torch.Tensor) -> float:
    """``nll_total`` as a Python float."""
    return float(nll_total(logp, targets))


@torch.no_grad()
def perplexity(model, token_ids: torch.Tensor, window: int, stride: int, device=None) -> tuple[float, int]:
    """``(perplexity, tokens scored)`` of ``model`` on a 1-D stream of token ids.

    A standalone helper; ``qeval run`` computes the same numbers inside its
    combined pass (``qeval.evaluate.stream``).
    """
    total, count = 0.0, 0
    for w in sliding_windows(int(token_ids.numel()), window, stride):
        logp = log_softmax_rows(window_logits(model, token_ids, w, device))
        total += nll_sum(logp, token_ids[w.first_target : w.stop_target])
        count += w.n_targets
    return math.exp(total / count), count

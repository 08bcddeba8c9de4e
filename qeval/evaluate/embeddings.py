"""Encoders: sentence embeddings (mean pooling + L2 norm, as sentence-transformers
does for all-MiniLM-L6-v2), their cosine to the baseline's, and Spearman rank
correlation for similarity benchmarks.
"""

from __future__ import annotations

import numpy as np
import torch


@torch.no_grad()
def embed(model, tokenizer, sentences: list[str], max_length: int = 128, batch_size: int = 32, device=None) -> torch.Tensor:
    """L2-normalised mean-pooled embeddings ``[len(sentences), hidden]`` in float32."""
    out = []
    for s in range(0, len(sentences), batch_size):
        batch = tokenizer(
            sentences[s : s + batch_size], padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        )
        if device is not None:
            batch = {k: v.to(device) for k, v in batch.items()}
        hidden = model(**batch).last_hidden_state.float()
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        out.append(torch.nn.functional.normalize(pooled, dim=-1).cpu())
    return torch.cat(out)


def cosine_to_baseline(base: torch.Tensor, quant: torch.Tensor) -> dict:
    """Mean and min over sentences of ``cos(base_i, quant_i)``."""
    cos = torch.nn.functional.cosine_similarity(base.double(), quant.double(), dim=-1)
    return {"embedding_cosine_mean": float(cos.mean()), "embedding_cosine_min": float(cos.min())}


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given their average rank."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    xs = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and xs[j + 1] == xs[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def spearman(x, y) -> float:
    """Spearman's rank correlation (Pearson correlation of average ranks)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) != len(y) or len(x) < 2:
        raise ValueError(f"need two equal-length sequences of 2+ values, got {len(x)} and {len(y)}")
    rx, ry = _ranks(x), _ranks(y)
    rx -= rx.mean()
    ry -= ry.mean()
    denom = np.sqrt((rx * rx).sum() * (ry * ry).sum())
    return float((rx * ry).sum() / denom) if denom > 0 else float("nan")


def similarity_spearman(model, tokenizer, bench, max_length: int = 128, batch_size: int = 32, device=None) -> float:
    """Spearman between the cosine of each rated pair's embeddings and the human scores.

    Args:
        bench: a ``qeval.data.SimilarityBenchmark`` (``texts``, ``pairs``, ``scores``).
    """
    vectors = embed(model, tokenizer, list(bench.texts), max_length, batch_size, device).double()
    i = torch.tensor([a for a, _ in bench.pairs])
    j = torch.tensor([b for _, b in bench.pairs])
    cos = (vectors[i] * vectors[j]).sum(-1)  # embeddings are unit length
    return spearman(cos.numpy(), bench.scores)

"""Quality metrics, each measured against the unquantized baseline of the same model.

- ``perplexity``: sliding windows with a stride, NLL of every scored token.
- ``divergence``: full-vocabulary KL(base || quant) per position (float32), its
  mean and p99, and top-1 agreement; the baseline's log-probabilities are
  spilled to disk per window so memory stays bounded for long runs.
- ``stream``: one pass of a model over the windows that feeds both, split
  across processes under ``accelerate launch`` and gathered exactly.
- ``tasks``: lm-eval tasks on the in-memory model, with recovery vs baseline.
- ``embeddings``: cosine to the baseline's embeddings and similarity ranking.

This package knows metrics, not formats: it takes a model that ``qeval.quantize``
has already prepared. ``qeval.evaluate(model, policies, ...)`` (this name, called)
is the Python API of a whole evaluation: ``qeval.pipeline.api.evaluate``.
"""

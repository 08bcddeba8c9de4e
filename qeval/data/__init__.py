"""Deterministic offline data: text for perplexity/KL/calibration, and the
document-similarity benchmark for embedding models.

Everything comes from PyPI packages (today: files inside the gensim 4.4.0 wheel,
see ``configs/data/gensim.yaml``), downloaded once into qeval's cache
(``$QEVAL_CACHE`` or ``~/.cache/qeval``) and checked against recorded sha256
sums, or from the user's own local files. lm-eval tasks live in ``qeval.tasks``.
"""

from qeval.data.cache import cache_dir, fetch
from qeval.data.errors import DataError
from qeval.data.similarity import SimilarityBenchmark, similarity_benchmark
from qeval.data.text import TextSpec, calibration_batches, lee_documents, load_text, text_spec, token_stream

__all__ = [
    "DataError", "SimilarityBenchmark", "TextSpec", "cache_dir", "calibration_batches", "fetch",
    "lee_documents", "load_text", "similarity_benchmark", "text_spec", "token_stream",
]

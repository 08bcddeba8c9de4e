"""Document-similarity data for embedding models: the Lee corpus (Lee, Pincombe &
Welsh 2005) as shipped in the gensim wheel: 50 news documents and the mean human
similarity rating of every pair (1,225 pairs, the upper triangle of a 50 x 50
matrix). An embedding model is scored by the Spearman correlation between the
cosine similarity of its document embeddings and the human ratings.
"""

from __future__ import annotations

from dataclasses import dataclass

from qeval.data.errors import DataError


@dataclass(frozen=True)
class SimilarityBenchmark:
    """Texts, the index pairs to compare and the human score of each pair."""

    name: str
    texts: list[str]
    pairs: list[tuple[int, int]]
    scores: list[float]

    def text_pairs(self) -> list[tuple[str, str]]:
        return [(self.texts[i], self.texts[j]) for i, j in self.pairs]


def _matrix(path) -> list[list[float]]:
    rows = [line.split() for line in path.read_text(encoding="ascii").splitlines() if line.strip()]
    return [[float(x) for x in row] for row in rows]


def similarity_benchmark(name: str = "lee", max_pairs: int | None = None) -> SimilarityBenchmark:
    """The ``lee`` benchmark (the only one so far): 50 documents, 1,225 rated pairs
    in row-major upper-triangle order; ``max_pairs`` keeps the first pairs."""
    if name != "lee":
        raise DataError(f"unknown similarity benchmark {name!r}; valid: lee")
    from qeval.data.cache import fetch
    from qeval.data.text import lee_documents

    docs = lee_documents(background=False)
    m = _matrix(fetch("gensim", "lee_similarities"))
    if len(m) != len(docs) or any(len(row) != len(docs) for row in m):
        raise DataError(f"lee similarity matrix is {len(m)} rows for {len(docs)} documents")
    pairs = [(i, j) for i in range(len(docs)) for j in range(i + 1, len(docs))]
    if max_pairs is not None:
        pairs = pairs[:max_pairs]
    return SimilarityBenchmark("lee", docs, pairs, [m[i][j] for i, j in pairs])

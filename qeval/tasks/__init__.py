"""Downstream tasks through lm-evaluation-harness, offline from package data.

``run_lm_eval(model, tokenizer, tasks, limit, batch_size, seed)`` is what the
runner calls; ``BUILDERS`` names the offline tasks (``word_analogy`` and a few
BIG-bench multiple-choice tasks). Task configs are written as YAML files into
qeval's cache at run time (``builders.task_config`` is the template), so no
data file has to ship inside the qeval package.
"""

from qeval.tasks.builders import BUILDERS, BuiltTask, analogy_docs, bigbench_docs, task_config
from qeval.tasks.harness import prepare_tasks, run_lm_eval

__all__ = ["BUILDERS", "BuiltTask", "analogy_docs", "bigbench_docs", "prepare_tasks", "run_lm_eval", "task_config"]

"""Ship what you gated: write packed checkpoints serving engines load, and read checkpoints others made.

>>> from qeval.export import export_checkpoint, read_checkpoint
>>> export_checkpoint(model, "nvfp4-weight-only", "out/", layout="compressed-tensors")
>>> ckpt = read_checkpoint("out/")          # QTensor per stored linear, scales as stored

Layouts: ``compressed-tensors`` (vLLM, transformers) and ``modelopt`` (NVIDIA
Model Optimizer's HF layout: TensorRT-LLM, vLLM). Where their conventions
differ from qeval's: ``qeval/export/conventions.py``. A recipe evaluates a
checkpoint with a policy entry ``{name: ..., checkpoint: DIR}``
(``qeval.export.load``).
"""

from .read import Checkpoint, StoredModule, read_checkpoint
from .schemes import LAYOUTS, ExportError
from .write import ExportReport, export_checkpoint

__all__ = ["LAYOUTS", "Checkpoint", "ExportError", "ExportReport", "StoredModule", "export_checkpoint", "read_checkpoint"]

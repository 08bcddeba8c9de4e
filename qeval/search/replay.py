"""Skip the decoder blocks in front of the quantized group: replay their baseline outputs.

With only the modules of block ``L`` quantized, blocks ``0 .. L-1`` compute
exactly what they computed for the baseline. The baseline pass records each
block's output per input (keyed by the input ids' bytes); during a group's
passes those blocks return the recorded output instead of running. The blocks
from ``L`` on run on bit-identical inputs, so every number is the one a full
forward gives (``tests/test_search.py`` checks it against ``qeval run``).
An input that was not recorded simply runs the whole model.
"""

from __future__ import annotations

import contextlib
import hashlib

import torch
from torch import nn

_BLOCK_LISTS = ("layers", "h", "layer", "blocks")


def decoder_blocks(model: nn.Module) -> nn.ModuleList | None:
    """The longest ModuleList of repeated blocks, or None."""
    best = None
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and name.rsplit(".", 1)[-1] in _BLOCK_LISTS and len(mod):
            if best is None or len(mod) > len(best):
                best = mod
    return best


def _key(input_ids) -> str | None:
    if not torch.is_tensor(input_ids):
        return None
    t = input_ids.detach().to("cpu", torch.int64).contiguous()
    return hashlib.sha1(str(tuple(t.shape)).encode() + t.numpy().tobytes()).hexdigest()


def _ids_of(args, kwargs):
    if "input_ids" in kwargs:
        return kwargs["input_ids"]
    return args[0] if args else None


class Replay:
    """Recorded block outputs of the baseline, and the switch that replays them.

    ``max_bytes`` caps what is kept (per recorded input, all blocks); beyond it
    nothing more is recorded and those inputs run in full.
    """

    def __init__(self, model: nn.Module, max_bytes: int = 2 << 30):
        self.model = model
        self.blocks = decoder_blocks(model)
        self.outputs: dict[str, list] = {}
        self.max_bytes = max_bytes
        self.bytes = 0
        self._current: str | None = None

    def _track_input(self):
        def pre(_mod, args, kwargs):
            self._current = _key(_ids_of(args, kwargs))

        return self.model.register_forward_pre_hook(pre, with_kwargs=True)

    @contextlib.contextmanager
    def record(self):
        """Record every block's output for each input the model sees (the unquantized model)."""
        if self.blocks is None:
            yield
            return
        handles = [self._track_input()]
        for i, block in enumerate(self.blocks):
            handles.append(block.register_forward_hook(self._keep(i)))
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def _keep(self, i: int):
        def hook(_mod, _args, output):
            key = self._current
            if key is None:
                return
            slot = self.outputs.get(key)
            if slot is None:
                size = sum(t.numel() * t.element_size() for t in _tensors(output)) * len(self.blocks)
                if self.bytes + size > self.max_bytes:
                    return
                self.bytes += size
                slot = self.outputs[key] = [None] * len(self.blocks)
            slot[i] = _detach(output)

        return hook

    @contextlib.contextmanager
    def skip_before(self, layer: int | None):
        """Blocks ``0 .. layer-1`` return their recorded outputs (when this input was recorded)."""
        if self.blocks is None or not layer:
            yield
            return
        handles = [self._track_input()]
        patched = []
        for i in range(min(layer, len(self.blocks))):
            block = self.blocks[i]
            block.forward = self._replayer(i, block.forward)
            patched.append(block)
        try:
            yield
        finally:
            for h in handles:
                h.remove()
            for block in patched:
                del block.forward  # the class's forward again

    def _replayer(self, i: int, forward):
        def replay(*args, **kwargs):
            slot = self.outputs.get(self._current) if self._current else None
            if slot is None or slot[i] is None:
                return forward(*args, **kwargs)
            return slot[i]

        return replay


def _tensors(output):
    if torch.is_tensor(output):
        return [output]
    if isinstance(output, (tuple, list)):
        return [t for o in output for t in _tensors(o)]
    return []


def _detach(output):
    if torch.is_tensor(output):
        return output.detach()
    if isinstance(output, tuple):
        return tuple(_detach(o) for o in output)
    return output

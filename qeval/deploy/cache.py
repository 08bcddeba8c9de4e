"""A cache of meta-built model skeletons, so that a second look at the same config skips transformers.

Building a model on the meta device takes ~0.2 s, but importing transformers'
modeling stack takes seconds. After the first build of a config file, its
module tree (class names, parameter and buffer shapes, tied weights, the few
attributes the planner reads) and the config numbers the memory model needs
are written as JSON to ``<qeval cache>/layouts`` (``qeval.paths.cache_root``).
A later call rebuilds an equivalent skeleton on the meta device from it; the
key covers the config file's bytes and the transformers, torch and qeval
versions, so any change rebuilds. The bundled configs (configs/models) ship
their layout beside them (``layout.json.gz``), so even a cold first call skips
transformers. Set ``QEVAL_LAYOUT_CACHE=off`` to disable both.
tests/test_memory.py checks that ``plan()`` of a skeleton equals ``plan()`` of
the real model, entry by entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from importlib import metadata
from pathlib import Path
from types import SimpleNamespace

CACHE_VERSION = 1
# config fields the memory model reads (qeval.deploy.memory, qeval.deploy.kv, qeval.deploy.recommend)
CONFIG_FIELDS = (
    "model_type",
    "hidden_size",
    "intermediate_size",
    "moe_intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "vocab_size",
    "max_position_embeddings",
    "kv_lora_rank",
    "qk_rope_head_dim",
    "layer_types",
    "sliding_window",
    "num_nextn_predict_layers",
    "tie_word_embeddings",
    "architectures",
)
_ATTRS = ("is_transposed", "nf", "nx", "_qeval_linear")


class ConfigSnapshot(SimpleNamespace):
    """The config numbers the memory model reads, without transformers."""

    def get_text_config(self):
        return self


def cache_dir() -> Path | None:
    if os.environ.get("QEVAL_LAYOUT_CACHE", "").lower() in ("off", "0", "none", "false"):
        return None
    from qeval.paths import cache_root

    return cache_root() / "layouts"


def _version(pkg: str) -> str:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return "none"


def cache_key(config_file: Path, extra: dict) -> str:
    from qeval import __version__

    h = hashlib.sha256(Path(config_file).read_bytes())
    versions = (CACHE_VERSION, __version__, _version("transformers"), _version("torch"), sorted(extra.items()))
    h.update(json.dumps(versions, default=str).encode())
    return h.hexdigest()[:32]


def _moe_fields(defaults) -> tuple[str, ...]:
    return tuple(defaults.moe_config_keys.experts) + tuple(defaults.moe_config_keys.top_k)


def snapshot_config(config, defaults) -> dict:
    cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    out = {}
    for name in CONFIG_FIELDS + _moe_fields(defaults):
        value = getattr(cfg, name, None)
        if value is None or isinstance(value, (bool, int, float, str, list)):
            out[name] = value
    return out


def _base(mod) -> str:
    from torch import nn

    if isinstance(mod, nn.ModuleList):
        return "modulelist"
    if isinstance(mod, nn.Linear):
        return "linear"
    if isinstance(mod, nn.Embedding):
        return "embedding"
    return "module"


def dump(loaded, defaults) -> dict:
    """The JSON-ready skeleton of a :class:`qeval.deploy.memory.LoadedModel`."""
    model = loaded.model
    owner: dict[int, str] = {}
    modules = []
    for name, mod in model.named_modules(remove_duplicate=False):
        params = {}
        for pname, p in mod._parameters.items():
            if p is None:
                continue
            full = f"{name}.{pname}" if name else pname
            if id(p) in owner:
                params[pname] = owner[id(p)]  # tied: the path of its first owner
            else:
                owner[id(p)] = full
                params[pname] = list(p.shape)
        buffers = {
            b: [list(t.shape), b not in mod._non_persistent_buffers_set]
            for b, t in mod._buffers.items()
            if t is not None
        }
        attrs = {a: getattr(mod, a) for a in _ATTRS if isinstance(getattr(mod, a, None), (bool, int))}
        modules.append(
            {
                "name": name,
                "cls": type(mod).__name__,
                "base": _base(mod),
                "params": params,
                "buffers": buffers,
                "attrs": attrs,
            }
        )

    def _name_of(getter):
        try:
            target = getattr(model, getter)()
        except (AttributeError, NotImplementedError):
            return None
        return next((n for n, m in model.named_modules() if m is target), None)

    return {
        "version": CACHE_VERSION,
        "source": loaded.source,
        "config": snapshot_config(loaded.config, defaults),
        "checkpoint_precision": loaded.checkpoint_precision,
        "is_causal_lm": loaded.is_causal_lm,
        "input_embeddings": _name_of("get_input_embeddings"),
        "output_embeddings": _name_of("get_output_embeddings"),
        "modules": modules,
    }


def rebuild(data: dict):
    """A meta-device ``nn.Module`` tree equivalent (for counting and planning) to the dumped model."""
    import torch
    from torch import nn

    bases = {"modulelist": nn.ModuleList, "linear": nn.Linear, "embedding": nn.Embedding, "module": nn.Module}
    classes: dict[tuple[str, str], type] = {}
    built: dict[str, nn.Module] = {}
    params: dict[str, nn.Parameter] = {}
    for m in data["modules"]:
        key = (m["cls"], m["base"])
        if key not in classes:
            classes[key] = type(m["cls"], (bases[m["base"]],), {"__module__": "qeval.deploy.cache.skeleton"})
        obj = classes[key].__new__(classes[key])
        nn.Module.__init__(obj)
        for a, v in m["attrs"].items():
            object.__setattr__(obj, a, v)
        for pname, shape in m["params"].items():
            full = f"{m['name']}.{pname}" if m["name"] else pname
            if isinstance(shape, str):
                obj._parameters[pname] = params[shape]
            else:
                p = nn.Parameter(torch.empty(shape, device="meta"), requires_grad=False)
                obj._parameters[pname] = params[full] = p
        for bname, (shape, persistent) in m["buffers"].items():
            obj._buffers[bname] = torch.empty(shape, device="meta")
            if not persistent:
                obj._non_persistent_buffers_set.add(bname)
        if m["name"]:
            parent, _, leaf = m["name"].rpartition(".")
            built[parent]._modules[leaf] = obj
        built[m["name"]] = obj
    root = built[""]
    inp, out = data["input_embeddings"], data["output_embeddings"]
    object.__setattr__(root, "get_input_embeddings", lambda: built[inp] if inp is not None else None)
    object.__setattr__(root, "get_output_embeddings", lambda: built[out] if out is not None else None)
    object.__setattr__(root, "can_generate", lambda: data["is_causal_lm"])
    return root


def load(key: str):
    """``(skeleton model, ConfigSnapshot, data)`` from the cache, or None."""
    d = cache_dir()
    if d is None or not (d / f"{key}.json").is_file():
        return None
    try:
        data = json.loads((d / f"{key}.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if data.get("version") != CACHE_VERSION:
        return None
    return rebuild(data), snapshot(data), data


# --- layouts shipped next to the bundled configs ---------------------------------
# configs/models/<name>/layout.json.gz: the dump of that config's meta-built model, so that even
# the first (cold) look at a bundled config skips transformers' modeling code. It is tied to the
# config file's bytes (config_sha256); tests/test_memory.py checks each equals a fresh transformers
# build, and `python -m qeval.deploy.load` rewrites them all.
SHIPPED = "layout.json.gz"


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def shipped(config_file: Path):
    """``(skeleton model, ConfigSnapshot, data)`` from the layout shipped beside ``config_file``, or None."""
    f = Path(config_file).parent / SHIPPED
    if cache_dir() is None or not f.is_file():  # QEVAL_LAYOUT_CACHE=off turns these off too
        return None
    import gzip

    try:
        data = json.loads(gzip.decompress(f.read_bytes()))
    except (OSError, ValueError):
        return None
    if data.get("version") != CACHE_VERSION or data.get("config_sha256") != _sha256(config_file):
        return None  # an edited config: build it afresh
    return rebuild(data), snapshot(data), data


def snapshot(data: dict) -> ConfigSnapshot:
    """The ConfigSnapshot of a layout, carrying the layout so that it can be rebuilt from the snapshot alone."""
    snap = ConfigSnapshot(**data["config"])
    object.__setattr__(snap, "_layout", data)
    return snap


def write_shipped(config_file: Path, loaded, defaults) -> Path:
    """Write the shipped layout of ``config_file`` (deterministic bytes: no timestamp in the gzip header)."""
    import gzip

    data = dump(loaded, defaults)
    data.pop("source", None)
    data["config_sha256"] = _sha256(config_file)
    out = Path(config_file).parent / SHIPPED
    out.write_bytes(gzip.compress(json.dumps(data, sort_keys=True).encode(), compresslevel=9, mtime=0))
    return out


def save(key: str, loaded, defaults) -> None:
    """Write the skeleton atomically; a cache that cannot be written is skipped silently."""
    d = cache_dir()
    if d is None:
        return
    try:
        d.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=d, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(dump(loaded, defaults), f)
        os.replace(tmp, d / f"{key}.json")
    except OSError:
        return


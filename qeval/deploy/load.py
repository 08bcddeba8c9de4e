"""Read a model config and build the model on the meta device (part of :mod:`qeval.deploy.memory`)."""

from __future__ import annotations

import copy
import json
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qeval.deploy.hardware import CONFIG_DIR, load_memory_defaults

MODELS_DIR = CONFIG_DIR / "models"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class ModelConfigError(ValueError):
    """A model config that cannot be read or built; the message is one line."""


@dataclass
class LoadedModel:
    """A model built on the meta device from its config.

    Attributes:
        source: what the caller passed (path, configs/models name, hub ID).
        config: the transformers config (``quantization_config`` removed).
        model: the meta-device ``nn.Module``.
        checkpoint_precision: the checkpoint's own quantization (from its
            ``quantization_config``), e.g. ``"fp8 e4m3, 128x128 blocks"``; None = unquantized.
        is_causal_lm: False for encoders (no KV cache, no decoding).
    """

    source: str
    config: Any
    model: Any
    checkpoint_precision: str | None = None
    is_causal_lm: bool = True

    @property
    def name(self) -> str:
        p = Path(self.source)
        if not p.exists():
            return self.source
        return p.parent.name if p.is_file() else p.name

    @property
    def text_config(self):
        getter = getattr(self.config, "get_text_config", None)
        return getter() if getter else self.config


# --- loading ---------------------------------------------------------------
def _config_file(source: str) -> Path | None:
    p = Path(source).expanduser()
    if p.is_file():
        return p
    if p.is_dir():
        if (p / "config.json").is_file():
            return p / "config.json"
        raise ModelConfigError(f"{p}: folder has no config.json")
    named = MODELS_DIR / source / "config.json"
    if named.is_file():
        return named
    return None


def known_models() -> list[str]:
    return sorted(p.parent.name for p in MODELS_DIR.glob("*/config.json"))


def hub_reachable(timeout: float = 1.5) -> bool:
    """One TCP connection to the Hub endpoint (``HF_ENDPOINT``), so that an offline machine answers
    in about a second instead of huggingface_hub's ~30 s of retries."""
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "huggingface.co", port), timeout=timeout):
            return True
    except OSError:  # no DNS, refused, timed out: offline for our purpose
        return False


_HUB_PATHS: dict[str, Path] = {}  # hub ID -> its fetched config.json, once per process


def prefetch(source) -> None:
    """Fetch a hub ID's config.json now, so a bad or offline ID fails before torch is imported."""
    if isinstance(source, str) and _HUB_ID.match(source) and _config_file(source) is None:
        _hub_config(source)


def _hub_config(source: str) -> Path:
    if source in _HUB_PATHS:
        return _HUB_PATHS[source]
    hint = f"give a config folder, a config.json path or one of configs/models: {', '.join(known_models())}"
    online = hub_reachable()
    try:
        from huggingface_hub import hf_hub_download, try_to_load_from_cache

        if online:
            _HUB_PATHS[source] = Path(hf_hub_download(source, "config.json", etag_timeout=5))
        else:  # the local Hugging Face cache only: no request at all (hf_hub_download still makes one)
            cached = try_to_load_from_cache(source, "config.json")
            if not isinstance(cached, str):
                raise FileNotFoundError(source)
            _HUB_PATHS[source] = Path(cached)
        return _HUB_PATHS[source]
    except Exception as err:  # offline, unknown repo, gated: all mean "no config"
        if not online:
            raise ModelConfigError(
                f"cannot fetch config.json of hub ID {source!r}: the Hub is unreachable (offline) and it is "
                f"not in the local Hugging Face cache; {hint}"
            ) from None
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ModelConfigError(f"cannot fetch config.json of hub ID {source!r} ({first[:120]}); {hint}") from None


def describe_quantization(qc: Any) -> str | None:
    """One readable line for a checkpoint's ``quantization_config``."""
    if not qc:
        return None
    if not isinstance(qc, dict):
        qc = qc.to_dict() if hasattr(qc, "to_dict") else dict(vars(qc))
    method = qc.get("quant_method", "quantized")
    parts = [str(method)]
    if qc.get("fmt"):
        parts.append(str(qc["fmt"]))
    if qc.get("weight_block_size"):
        parts.append("x".join(map(str, qc["weight_block_size"])) + " blocks")
    if qc.get("bits"):
        parts.append(f"{qc['bits']}-bit")
    if qc.get("activation_scheme"):
        parts.append(f"{qc['activation_scheme']} activations")
    return ", ".join(parts)


def load_config(source: str | Path, *, trust_remote_code: bool = False):
    """Read a model config from a folder, a config.json path, a ``configs/models`` name or a hub ID.

    Returns ``(config, checkpoint_precision)``; the ``quantization_config`` is
    removed from the config (it would make transformers want the real
    quantization library even on the meta device) and returned described.

    Raises:
        ModelConfigError: one line naming the file and the field (e.g. an unknown
            ``model_type``, with the ``--trust-remote-code`` hint).
    """
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    source = str(source)
    path = _config_file(source)
    if path is None:
        if not _HUB_ID.match(source):
            raise ModelConfigError(
                f"no model config at {source!r}: not a folder or file, not a configs/models name "
                f"({', '.join(known_models())}) and not a hub ID"
            )
        path = _hub_config(source)
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ModelConfigError(f"{path}: not a readable JSON config ({err})") from None
    if not isinstance(raw, dict):
        raise ModelConfigError(f"{path}: expected a JSON object")
    model_type = raw.get("model_type")
    if not model_type:
        raise ModelConfigError(f"{path}: field 'model_type' is missing")
    precision = describe_quantization(raw.pop("quantization_config", None))
    if model_type in CONFIG_MAPPING:
        config = CONFIG_MAPPING[model_type].from_dict(raw)
    elif trust_remote_code and raw.get("auto_map"):
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(str(path.parent), trust_remote_code=True)
        if hasattr(config, "quantization_config"):
            delattr(config, "quantization_config")
    else:
        import transformers

        hint = (
            "; it ships its own code (auto_map): pass --trust-remote-code only if you trust that code"
            if raw.get("auto_map")
            else ""
        )
        raise ModelConfigError(
            f"{path}: field 'model_type': {model_type!r} is not known to transformers {transformers.__version__}{hint}"
        )
    return config, precision


def _model_class(config, trust_remote_code: bool):
    """The class the checkpoint itself uses (``architectures``), else the causal-LM or base auto class."""
    import transformers
    from transformers import AutoModel, AutoModelForCausalLM
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    for arch in getattr(config, "architectures", None) or []:
        cls = getattr(transformers, arch, None)
        if cls is not None:
            return cls, arch.endswith(("ForCausalLM", "LMHeadModel", "ForConditionalGeneration"))
    if getattr(config, "architectures", None) and not any(
        a.endswith(("ForCausalLM", "LMHeadModel")) for a in config.architectures
    ):
        return AutoModel, False  # an encoder (e.g. BertModel): no LM head to invent
    if config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or trust_remote_code:
        return AutoModelForCausalLM, True
    return AutoModel, False


def load_model(source, *, trust_remote_code: bool = False, use_cache: bool = True) -> LoadedModel:
    """Build the model of ``source`` on the meta device (see :func:`load_config` for sources).

    ``source`` may also be a transformers config object. Config files seen
    before come from the skeleton cache (:mod:`qeval.deploy.cache`), which
    skips importing transformers' modeling code.
    """
    import torch

    key = None
    layout = getattr(source, "_layout", None)  # the config of a model rebuilt from a layout (qeval.deploy.cache)
    if isinstance(layout, dict):
        from qeval.deploy import cache as memory_cache

        return LoadedModel(
            str(getattr(source, "model_type", "model")), source, memory_cache.rebuild(layout),
            layout["checkpoint_precision"], layout["is_causal_lm"],
        )
    if hasattr(source, "model_type") and not isinstance(source, (str, Path)):
        config = copy.deepcopy(source)
        qc = getattr(config, "quantization_config", None)
        precision = describe_quantization(qc)
        if qc is not None:
            delattr(config, "quantization_config")
        name = getattr(config, "_name_or_path", "") or config.model_type
    else:
        name = str(source)
        path = _config_file(name)
        if use_cache and path is not None and not trust_remote_code:
            from qeval.deploy import cache as memory_cache

            key = memory_cache.cache_key(path, {})
            hit = memory_cache.shipped(path) or memory_cache.load(key)  # bundled configs ship their layout
            if hit is not None:
                model, snapshot, data = hit
                return LoadedModel(name, snapshot, model, data["checkpoint_precision"], data["is_causal_lm"])
        config, precision = load_config(source, trust_remote_code=trust_remote_code)
    cls, causal = _model_class(config, trust_remote_code)
    kwargs = (
        {"trust_remote_code": True} if trust_remote_code and getattr(cls, "__name__", "").startswith("Auto") else {}
    )
    # torch.device("meta") (not accelerate's init_empty_weights) keeps tied weights tied
    with torch.device("meta"):
        if getattr(cls, "__name__", "").startswith("Auto"):
            model = cls.from_config(config, **kwargs)
        else:
            model = cls._from_config(config)
    can_generate = getattr(model, "can_generate", None)
    if callable(can_generate):
        causal = bool(can_generate())
    loaded = LoadedModel(name, config, model, precision, causal)
    if key is not None:
        from qeval.deploy import cache as memory_cache

        memory_cache.save(key, loaded, load_memory_defaults())
    return loaded


def resolve_model(model_or_config, context, batch, gpus, trust_remote_code):
    """(loaded model, context, batch, gpus) from what ``recommend`` accepts.

    Accepts a LoadedModel, a transformers config or model, a recipe ``model:`` spec (dict or
    ``qeval.models.ModelSpec``), a source string, or a recipe YAML (``model:`` + ``hardware:``)."""
    src = model_or_config
    if isinstance(src, LoadedModel):
        return src, context, batch, gpus
    if isinstance(src, (str, Path)) and str(src).endswith((".yaml", ".yml")) and Path(src).is_file():
        from qeval.files import read_yaml

        data = read_yaml(src, "recipe") or {}
        if not (isinstance(data, dict) and "model" in data and "hardware" in data):
            raise ValueError(f"{src}: not a recipe (needs both 'model:' and 'hardware:' keys)")
        hw = data.get("hardware") or {}
        context = context or hw.get("context")
        batch = batch or hw.get("batch")
        if not gpus and hw.get("gpu"):
            gpus = [str(hw["gpu"]).lower()]
        src = data["model"]
    if isinstance(src, dict) or type(src).__name__ == "ModelSpec":
        from qeval.models import load_config as load_spec_config

        spec = src if isinstance(src, dict) else src.model_dump()
        trust = bool(spec.get("trust_remote_code", trust_remote_code))
        loaded = load_model(load_spec_config(spec), trust_remote_code=trust)
        loaded.source = str(spec.get("id") or spec.get("package") or loaded.source)
        if spec.get("gguf_file") and not loaded.checkpoint_precision:
            loaded.checkpoint_precision = f"GGUF {spec['gguf_file']}"
        return loaded, context, batch, gpus
    if hasattr(src, "config") and hasattr(src, "named_modules"):  # a loaded transformers model: use its config
        src = src.config
    return load_model(src, trust_remote_code=trust_remote_code), context, batch, gpus


if __name__ == "__main__":  # rewrite the shipped layouts of every bundled config (qeval.deploy.cache.SHIPPED)
    from qeval.deploy import cache as memory_cache

    for cfg in sorted(MODELS_DIR.glob("*/config.json")):
        built = load_model(str(cfg.parent), use_cache=False)
        print(memory_cache.write_shipped(cfg, built, load_memory_defaults()))

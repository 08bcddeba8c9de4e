"""qeval export -> the peer libraries' own readers, and back into qeval, bit for bit.

Peers: compressed-tensors (its compressor classes' ``decompress``, what
transformers runs on load) and NVIDIA Model Optimizer (``NVFP4QTensor`` /
``FP8QTensor.dequantize``, its pure-torch readers). The expected weights are
computed here from the model's own parameters with ``Format.fake_quant`` and
the architecture's known fused-expert layout, not through qeval.export.
"""

from __future__ import annotations

import json
import re

import pytest
import torch
from conftest import input_ids, tiny_llama, tiny_qwen3_moe

from qeval.export import ExportError, export_checkpoint, read_checkpoint
from qeval.export import conventions as cv
from qeval.formats import get_format
from qeval.formats.elements import E2M1_MAGNITUDES, unpack_fp4
from qeval.policy import load_policy, plan

POLICIES = ["fp8", "fp8-dynamic", "nvfp4", "nvfp4-weight-only", "mixed-fp4-fp8"]
CAL = [input_ids(2, 16, seed=3)]


@pytest.fixture(scope="module")
def models():
    return {"llama": tiny_llama(layers=3), "moe": tiny_qwen3_moe(layers=3)}


@pytest.fixture(scope="module")
def exported(models, tmp_path_factory):
    """(arch, policy, layout) -> (folder, report), each exported once per module."""
    cache = {}

    def get(arch, policy, layout="compressed-tensors"):
        if (arch, policy, layout) not in cache:
            path = tmp_path_factory.mktemp("ckpt") / f"{arch}-{policy}-{layout}"
            cache[arch, policy, layout] = (path, export_checkpoint(models[arch], policy, path, layout=layout, calibration=CAL))
        return cache[arch, policy, layout]

    return get


def expected_weights(model) -> dict[str, torch.Tensor]:
    """stored linear name -> its float weight, from the module tree (Qwen3-MoE: gate rows first, then up)."""
    out = {}
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear):
            out[name] = mod.weight.detach()
        elif hasattr(mod, "gate_up_proj") and mod.gate_up_proj.dim() == 3:
            gu, down = mod.gate_up_proj.detach(), mod.down_proj.detach()
            half = gu.shape[1] // 2
            for e in range(gu.shape[0]):
                out[f"{name}.{e}.gate_proj"], out[f"{name}.{e}.up_proj"] = gu[e, :half], gu[e, half:]
                out[f"{name}.{e}.down_proj"] = down[e]
    return out


def expected_fake_quant(model, policy) -> dict[str, torch.Tensor]:
    """qeval's emulated weight of every stored linear the policy quantizes (whole expert matrices quantized)."""
    rules = {e.name: e.weights for e in plan(model, load_policy(policy)).entries if e.weights}
    out = {}
    for name, w in expected_weights(model).items():
        module = re.sub(r"\.\d+\.(gate|up|down)_proj$", "", name)
        spec = rules.get(name) or rules.get(module)
        if spec is None:
            continue
        if module != name:  # fused expert: quantized as the whole [2I, H] / [H, I] matrix of that expert
            mod = model.get_submodule(module)
            e = int(name.split(".")[-2])
            full = mod.down_proj[e] if name.endswith("down_proj") else mod.gate_up_proj[e]
            fq = get_format(spec).fake_quant(full.detach())
            half = full.shape[0] // 2
            fq = fq if name.endswith("down_proj") else (fq[:half] if name.endswith("gate_proj") else fq[half:])
            out[name] = fq
        else:
            out[name] = get_format(spec).fake_quant(w)
    return out


def ct_decompress(path) -> dict[str, torch.Tensor]:
    from compressed_tensors.compressors.base import BaseCompressor
    from compressed_tensors.quantization import QuantizationConfig
    from safetensors.torch import load_file

    qc = QuantizationConfig.model_validate(json.loads((path / "config.json").read_text())["quantization_config"])
    sd = load_file(str(path / "model.safetensors"))
    out = {}
    for p in {k.rsplit(".", 1)[0] for k in sd if k.endswith(".weight_scale")}:
        scheme = next(g for g in qc.config_groups.values()
                      if any(t == "Linear" or (t.startswith("re:") and re.match(t[3:], p)) for t in g.targets))
        local = {k[len(p) + 1:]: v for k, v in sd.items() if k.rsplit(".", 1)[0] == p}
        out[p] = BaseCompressor.get_value_from_registry(scheme.format).decompress(local, scheme)["weight"]
    return out


def modelopt_dequantize(path) -> dict[str, torch.Tensor]:
    from modelopt.torch.quantization.qtensor import FP8QTensor, NVFP4QTensor
    from safetensors.torch import load_file

    sd = load_file(str(path / "model.safetensors"))
    out = {}
    for p in {k.rsplit(".", 1)[0] for k in sd if k.endswith(".weight_scale")}:
        w, s = sd[f"{p}.weight"], sd[f"{p}.weight_scale"]
        if w.dtype == torch.uint8:
            shape = torch.Size((w.shape[0], w.shape[1] * 2))
            out[p] = NVFP4QTensor(shape, torch.float32, w).dequantize(
                dtype=torch.float32, scale=s, double_scale=sd[f"{p}.weight_scale_2"], block_sizes={-1: 16})
        else:
            out[p] = FP8QTensor(w.shape, torch.float32, w).dequantize(dtype=torch.float32, scale=s)
    return out


def mismatches(got: dict, want: dict) -> int:
    assert set(got) == set(want), sorted(set(got) ^ set(want))[:5]
    return sum(int((want[k].to(got[k].dtype) != got[k]).sum()) for k in want)


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("arch", ["llama", "moe"])
def test_compressed_tensors_reader_gives_qeval_fake_quant_weights(models, exported, arch, policy):
    model = models[arch]
    path, report = exported(arch, policy)
    got = ct_decompress(path)
    want = expected_fake_quant(model, policy)
    assert len(want) > 0
    # the reader's output dtype: float32 for FP8, BF16 for NVFP4 (its unpacking dtype)
    assert mismatches(got, want) == sum(b for _, b in report.inexact.values()) == 0
    # NVFP4: the reader decodes fl(code * fl(s_b / G)); the elements where that differs from qeval's
    # fl(code * fl(s_b * s_g)) in float32 are exactly the ones the exporter reports
    ckpt = read_checkpoint(path)
    from safetensors.torch import load_file

    sd = load_file(str(path / "model.safetensors"))
    off = 0
    for name, sm in ckpt.modules.items():
        if sm.weights == "nvfp4":
            q = sm.qtensor
            mags = torch.tensor(E2M1_MAGNITUDES)[(unpack_fp4(q.data) & 7).long()].reshape(*q.scale.shape, 16)
            peer = mags * (q.scale.float() / sd[f"{name}.weight_global_scale"]).unsqueeze(-1)
            ours = mags * (q.scale.float() * q.global_scale).unsqueeze(-1)
            off += int((peer != ours).sum())
    assert off == sum(a for a, _ in report.inexact.values())


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("arch", ["llama", "moe"])
def test_modelopt_reader_gives_qeval_fake_quant_weights(models, exported, arch, policy):
    model = models[arch]
    path, _ = exported(arch, policy, "modelopt")
    got = modelopt_dequantize(path)
    want = expected_fake_quant(model, policy)
    assert mismatches(got, want) == 0
    hf = json.loads((path / "hf_quant_config.json").read_text())["quantization"]
    assert hf["quant_algo"] == {"fp8": "FP8", "fp8-dynamic": "FP8_PER_CHANNEL_PER_TOKEN", "nvfp4": "NVFP4",
                                "nvfp4-weight-only": "W4A16_NVFP4", "mixed-fp4-fp8": "MIXED_PRECISION"}[policy]


@pytest.mark.parametrize("layout", ["compressed-tensors", "modelopt"])
@pytest.mark.parametrize("policy", POLICIES)
def test_export_then_import_gives_identical_qtensors(models, exported, policy, layout):
    model = models["moe"]
    ckpt = read_checkpoint(exported("moe", policy, layout)[0])
    want = expected_fake_quant(model, policy)
    assert set(ckpt.modules) == set(want)
    for name, sm in ckpt.modules.items():
        q = sm.qtensor
        ref = get_format(sm.weights).quantize(expected_weights(model)[name])
        if name.split(".")[-1] in ("gate_proj", "up_proj"):  # codes of the fused matrix's rows
            assert torch.equal(q.dequantize(), want[name])
            continue
        assert q.data.view(torch.uint8).equal(ref.data.view(torch.uint8)), name
        assert q.scale.float().equal(ref.scale.float()) and q.scale.dtype == ref.scale.dtype, name
        assert (q.global_scale is None) == (ref.global_scale is None)
        if q.global_scale is not None:
            assert q.global_scale.float().reshape(()).equal(ref.global_scale.float().reshape(())), name
        assert q.shape == ref.shape


def test_conventions_encode_decode_global_scale_against_float64():
    g = torch.Generator().manual_seed(7)
    for _ in range(30):
        amax = torch.rand((), generator=g) * 10 ** (torch.rand((), generator=g) * 6 - 3)
        s_g = (amax.double() / cv.NVFP4_RANGE).float()
        s_b = (torch.rand(8, 4, generator=g) * 448).to(torch.float8_e4m3fn)
        codes = torch.randint(0, 16, (8, 64), generator=g, dtype=torch.uint8)
        G, off32, off16 = cv.encode_global_scale(s_b, s_g, codes)
        assert abs(float(G) * float(s_g) - 1.0) < 1e-3  # a neighbour of 1/s_g (float64 check)
        mags = torch.tensor(E2M1_MAGNITUDES)[(codes & 7).long()].reshape(8, 4, 16)
        peer = mags * (s_b.float() / G).unsqueeze(-1)
        ours = mags * (s_b.float() * s_g).unsqueeze(-1)
        assert off32 == int((peer != ours).sum())
        assert off16 == int((peer.bfloat16() != ours.bfloat16()).sum())
        back, bad_back = cv.decode_global_scale(s_b, G)
        assert bad_back == int(((s_b.float() * back) != (s_b.float() / G)).sum())
    s = torch.tensor(0.0123)
    assert cv.amax_for_scale(s, 448.0) / torch.tensor(448.0) == s


def test_refused_before_writing_names_module_and_reason(models, tmp_path):
    with pytest.raises(ExportError, match=r"model\.layers\.0\.self_attn\.q_proj: .*Model Optimizer"):
        export_checkpoint(models["llama"], "fp8-block", tmp_path / "a", layout="modelopt")
    mixed = {"name": "m", "rules": [{"name": "model.layers.1.mlp.down_proj", "weights": "fp8_e5m2"},
                                    {"kind": "linear", "weights": "nvfp4"}]}
    with pytest.raises(ExportError, match=r"model\.layers\.1\.mlp\.down_proj: weights fp8_e5m2"):
        export_checkpoint(models["llama"], mixed, tmp_path / "b")
    with pytest.raises(ExportError, match="calibration"):
        export_checkpoint(models["llama"], "fp8", tmp_path / "c")
    assert not any(tmp_path.iterdir())


@pytest.fixture(scope="module")
def good(exported):
    return exported("llama", "nvfp4")[0]


def _copy(src, dst, edit_tensors=None, edit_config=None):
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    if edit_tensors:
        sd = load_file(str(dst / "model.safetensors"))
        edit_tensors(sd)
        save_file(sd, str(dst / "model.safetensors"))
    if edit_config:
        cfg = json.loads((dst / "config.json").read_text())
        edit_config(cfg["quantization_config"])
        (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def test_bad_checkpoints_are_refused_naming_file_and_tensor(good, tmp_path):
    key = "model.layers.1.mlp.up_proj"
    missing = _copy(good, tmp_path / "missing", lambda sd: sd.pop(f"{key}.weight_scale"))
    with pytest.raises(ExportError, match=rf"model\.safetensors: tensor {re.escape(key)}\.weight_scale is missing"):
        read_checkpoint(missing)
    shape = _copy(good, tmp_path / "shape", lambda sd: sd.update({f"{key}.weight_scale": sd[f"{key}.weight_scale"][:, :2].contiguous()}))
    with pytest.raises(ExportError, match=rf"model\.safetensors: tensor {re.escape(key)}\.weight_scale has shape"):
        read_checkpoint(shape)
    unknown = _copy(good, tmp_path / "unknown", edit_config=lambda q: q["config_groups"]["group_0"]["weights"].update(num_bits=3))
    with pytest.raises(ExportError, match=r"config\.json: config_groups\.group_0\.weights scheme 3-bit"):
        read_checkpoint(unknown)
    pickled = _copy(good, tmp_path / "pickled")
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(ExportError, match=r"pytorch_model\.bin: pickle weight files are not read"):
        read_checkpoint(pickled)
    for bad in ("missing", "shape", "unknown", "pickled"):
        with pytest.raises(ExportError) as err:
            read_checkpoint(tmp_path / bad)
        assert "\n" not in str(err.value)


FP8_W8A16 = {"name": "fp8-w8a16", "rules": [{"kind": "linear", "weights": "fp8_e4m3:channel"}]}


@pytest.mark.parametrize("policy,seed", [(FP8_W8A16, 0), ("nvfp4-weight-only", 0), ("nvfp4-weight-only", 1)])
def test_transformers_from_pretrained_gives_qeval_emulated_logits(policy, seed, tmp_path):
    """transformers + compressed-tensors, decompressed on load, vs qeval's fake-quant weight-only model (BF16).

    FP8 always matches. NVFP4 matches wherever compressed-tensors' encode global scale can express
    qeval's decode scale after rounding to BF16: the loaded weights differ from qeval's in exactly the
    elements the exporter reports (seed 0 has some, seed 1 none), and the logits are equal when none."""
    from transformers import AutoModelForCausalLM, CompressedTensorsConfig

    from qeval.quantize import quantized

    model = tiny_llama(dtype=torch.bfloat16, seed=seed)
    report = export_checkpoint(model, policy, tmp_path / "ckpt")
    loaded = AutoModelForCausalLM.from_pretrained(
        tmp_path / "ckpt", dtype=torch.bfloat16, quantization_config=CompressedTensorsConfig(run_compressed=False)
    ).eval()
    want = expected_fake_quant(model, policy)
    got = {n: loaded.get_submodule(n).weight.detach() for n in want}
    off16 = sum(b for _, b in report.inexact.values())
    assert mismatches(got, want) == off16
    assert (off16 == 0) == (seed == 1 or policy is FP8_W8A16)
    ids = input_ids()
    # transformers multiplies BF16 weights that hold the decompressed values: qeval's
    # fake_quant emulation computes the same, the default exact emulation does not
    with torch.no_grad(), quantized(model, policy, emulation="fake_quant"):
        ours = model(ids).logits
    theirs = loaded(ids).logits
    assert torch.equal(ours, theirs) == (off16 == 0)

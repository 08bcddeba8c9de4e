"""The GPU catalog (configs/gpus.yaml), prices overrides and the memory defaults (qeval.deploy.hardware)."""

from __future__ import annotations

import pytest
import yaml

from qeval.formats import FORMATS
from qeval.deploy.hardware import GPUS_FILE, load_catalog, load_memory_defaults


def test_catalog_facts_from_hardware_md():
    g = load_catalog().gpus
    assert {"h100", "h200", "b200"} <= set(g)
    # nvidia-smi MiB (shared/reference/hardware.md), not marketing GB
    assert (g["h100"].memory_mib, g["h200"].memory_mib, g["b200"].memory_mib) == (81559, 143771, 183359)
    assert g["b200"].memory_mib * 2**20 == pytest.approx(192e9, rel=0.002)  # "192 GB" = 180 GiB-ish part
    assert g["h100"].bandwidth_tbs == 3.35 and g["b200"].bandwidth_tbs == 7.7
    assert (g["h100"].tflops["bf16"], g["h100"].tflops["fp8"]) == (989, 1979)  # dense, not sparse
    assert g["b200"].tflops["fp4"] == 9000 and "fp4" not in g["h100"].tflops
    assert all(gpu.gpus_per_node == 8 for gpu in g.values())


def test_native_families_are_format_families():
    families = {f.family for f in FORMATS.values()}
    cat = load_catalog()
    for gpu in cat.gpus.values():
        assert set(gpu.native) <= families
    assert "nvfp4" not in cat.gpus["h100"].native and "nvfp4" in cat.gpus["b200"].native
    assert "mxfp8" not in cat.gpus["h200"].native and "mxfp4" in cat.gpus["b200"].native


def _mig(gpu):
    return {m.name: m for m in load_catalog().gpus[gpu].mig}


def test_mig_profiles():
    h100 = load_catalog().gpus["h100"]
    by_name = _mig("h100")
    assert by_name["1g.10gb"].memory_gib == 9.75 and by_name["1g.10gb"].max_count == 7
    assert by_name["7g.80gb"].memory_gib == 79.25
    for m in h100.mig:  # a slice never exceeds the GPU
        assert m.memory_gib <= h100.memory_gib and 0 < m.price_share <= 1
    assert by_name["1g.10gb"].price_share == pytest.approx(1 / 7)
    assert by_name["3g.40gb"].price_share == pytest.approx(0.5)


def test_h200_mig_sizes_as_measured():
    # `nvidia-smi mig -lgip` on a real H200, driver 580.159 (qeval issue #13)
    measured = {"1g.18gb": 16.00, "1g.35gb": 32.50, "2g.35gb": 32.50, "3g.71gb": 69.75, "4g.71gb": 69.75, "7g.141gb": 140.00}
    by_name = _mig("h200")
    assert {k: m.memory_gib for k, m in by_name.items()} == measured
    assert all(m.source.startswith("measured:") for m in by_name.values())


def test_b200_1g_slice_per_mig_parted():
    m = _mig("b200")["1g.23gb"]
    assert m.memory_gib == 20.50 and m.sms == 18  # NVIDIA/mig-parted PR #187 lgip listing
    assert m.source.startswith("measured:") and "mig-parted" in m.source


@pytest.mark.parametrize(
    "gpu,profile,sms,total",
    [
        ("h100", "1g.10gb", 16, 132),
        ("h100", "1g.20gb", 26, 132),
        ("h100", "2g.20gb", 32, 132),
        ("h100", "3g.40gb", 60, 132),
        ("h100", "4g.40gb", 64, 132),
        ("h100", "7g.80gb", 132, 132),
        ("h200", "4g.71gb", 64, 132),
        ("b200", "1g.23gb", 18, 148),
        ("b200", "2g.45gb", 36, 148),
    ],
)
def test_mig_compute_share_follows_sm_counts(gpu, profile, sms, total):
    m = _mig(gpu)[profile]
    assert m.sms == sms and load_catalog().gpus[gpu].sms == total
    assert m.compute_share == pytest.approx(sms / total)  # not compute_slices / 7
    if profile == "4g.40gb":
        assert m.compute_share != pytest.approx(4 / 7)


def test_every_number_has_a_source():
    from qeval.deploy.hardware import SOURCE_KINDS, SOURCED_FIELDS

    data = yaml.safe_load(GPUS_FILE.read_text())
    for gid, gpu in data["gpus"].items():
        numbers = {k for k, v in gpu.items() if isinstance(v, (int, float, dict)) and k not in ("sources", "mig")}
        assert numbers <= set(gpu["sources"]), (gid, numbers - set(gpu["sources"]))
        assert set(SOURCED_FIELDS) <= set(gpu["sources"])
        for text in [*gpu["sources"].values(), *(m["source"] for m in gpu["mig"])]:
            kind, _, cite = text.partition(":")
            assert kind in SOURCE_KINDS and len(cite.strip()) > 10, (gid, text)


def test_unsourced_number_refused(tmp_path):
    data = yaml.safe_load(GPUS_FILE.read_text())
    del data["gpus"]["h200"]["sources"]["bandwidth_tbs"]
    f = tmp_path / "gpus.yaml"
    f.write_text(yaml.safe_dump(data))
    with pytest.raises(ValueError, match=r"gpus.h200.sources.*no source for bandwidth_tbs"):
        load_catalog(f)
    data = yaml.safe_load(GPUS_FILE.read_text())
    data["gpus"]["b200"]["mig"][0]["source"] = "folklore: someone said so"
    f.write_text(yaml.safe_dump(data))
    with pytest.raises(ValueError, match="measured, datasheet, estimate"):
        load_catalog(f)
    data = yaml.safe_load(GPUS_FILE.read_text())
    data["gpus"]["h100"]["mig"][0]["sms"] = 200  # more SMs than the GPU has
    f.write_text(yaml.safe_dump(data))
    with pytest.raises(ValueError, match="larger than the GPU"):
        load_catalog(f)


def test_prices_override_from_file(tmp_path):
    f = tmp_path / "prices.yaml"
    f.write_text("h100: 1.5\nh200: 2.5\nb200: 3.5\n")
    cat = load_catalog(prices=f)
    assert [cat.gpus[k].price_per_hour for k in ("h100", "h200", "b200")] == [1.5, 2.5, 3.5]
    assert load_catalog().gpus["h100"].price_per_hour == 2.75  # the default is not mutated


def test_prices_file_missing_a_gpu(tmp_path):
    f = tmp_path / "prices.yaml"
    f.write_text("h100: 1.5\nh200: 2.5\n")
    with pytest.raises(ValueError, match=r"prices.yaml: no price for GPU 'b200'") as e:
        load_catalog(prices=f)
    assert "\n" not in str(e.value)
    # only the GPUs kept need a price
    assert load_catalog(prices=f, gpus=["h100"]).gpus["h100"].price_per_hour == 1.5


def test_prices_bad_value(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("h100: cheap\nh200: 2\nb200: 3\n")
    with pytest.raises(ValueError, match="field 'h100'"):
        load_catalog(prices=f)


def test_unknown_gpu_lists_choices():
    with pytest.raises(ValueError, match="unknown GPU 'a100'.*h100"):
        load_catalog(gpus=["a100"])


def test_catalog_typo_names_file_and_field(tmp_path):
    data = yaml.safe_load(GPUS_FILE.read_text())
    data["gpus"]["h100"]["bandwith_tbs"] = data["gpus"]["h100"].pop("bandwidth_tbs")
    f = tmp_path / "gpus.yaml"
    f.write_text(yaml.safe_dump(data))
    with pytest.raises(ValueError, match=r"gpus.yaml: field 'gpus.h100.b") as e:
        load_catalog(f)
    assert "\n" not in str(e.value)
    data = yaml.safe_load(GPUS_FILE.read_text())
    data["gpus"]["h100"]["native"].append("int3")
    f.write_text(yaml.safe_dump(data))
    with pytest.raises(ValueError, match="int3"):
        load_catalog(f)


def test_memory_defaults():
    d = load_memory_defaults()
    assert d.serving.engine == "vllm"
    assert d.engines["vllm"].fraction == 0.92 and d.engines["vllm"].budget == "total"  # vLLM's current default
    assert d.engines["trtllm"].fraction == 0.9 and d.engines["trtllm"].budget == "free"  # KvCacheConfig default
    assert d.engines["sglang"].budget == "static"
    assert d.mig.max_params < 46e9  # Mixtral-scale models get no slice
    assert 0 < d.efficiency.decode_bandwidth <= 1
    assert d.mtp.embedding_copies["deepseek_v3"] is True and d.mtp.embedding_copies["glm_moe_dsa"] is False

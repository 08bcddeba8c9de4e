"""The GPU catalog (``configs/gpus.yaml``) and the memory/speed defaults (``configs/memory.yaml``).

>>> from qeval.deploy.hardware import load_catalog
>>> cat = load_catalog()
>>> cat.gpus["h100"].memory_gib
79.6474609375

Both files are plain YAML validated by pydantic (unknown keys are errors, and
every error names the file and the field). Prices can be replaced from a
second file (``--prices FILE``): ``{gpu_id: usd_per_gpu_hour}``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from qeval.files import read_yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from qeval.paths import CONFIGS

CONFIG_DIR = CONFIGS
GPUS_FILE = CONFIG_DIR / "gpus.yaml"
MEMORY_FILE = CONFIG_DIR / "memory.yaml"
MIB = 1024**2
GIB = 1024**3

# Format families (qeval.formats Format.family) -> the TFLOPS key that runs them.
COMPUTE_KEY = {"bf16": "bf16", "fp16": "bf16", "fp8": "fp8", "mxfp8": "fp8", "mxfp4": "fp4", "nvfp4": "fp4"}
FAMILIES = tuple(COMPUTE_KEY)
_BITS = {"bf16": 16, "fp8": 8, "fp4": 4}
SOURCE_KINDS = ("measured", "datasheet", "estimate")
# numbers of a GPU entry that must name their source (configs/gpus.yaml `sources:`)
SOURCED_FIELDS = ("memory_mib", "bandwidth_tbs", "tflops", "nvlink_gbs", "gpus_per_node", "tdp_w", "sms", "price_per_hour")


def _check_source(text: str) -> str:
    kind = text.split(":", 1)[0].strip()
    if kind not in SOURCE_KINDS or not text.split(":", 1)[1:] or not text.split(":", 1)[1].strip():
        raise ValueError(f"source {text!r} must read 'KIND: citation' with KIND one of {', '.join(SOURCE_KINDS)}")
    return text


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MigProfile(_Strict):
    name: str
    memory_gib: float = Field(gt=0)  # usable GiB, as `nvidia-smi mig -lgip` lists it
    sms: int = Field(ge=1)  # streaming multiprocessors of the slice (same listing)
    max_count: int = Field(ge=1, le=7)
    compute_slices: int = Field(ge=1, le=7)
    memory_slices: int = Field(ge=1, le=8)
    source: str
    _gpu_sms: int = PrivateAttr(default=0)

    @field_validator("source")
    @classmethod
    def _sourced(cls, v):
        return _check_source(v)

    @property
    def bandwidth_share(self) -> float:
        return self.memory_slices / 8  # the memory controllers follow the memory slices

    @property
    def compute_share(self) -> float:
        """The slice's SMs over the whole GPU's (an H100 4g slice: 64 of 132), not compute_slices / 7."""
        return self.sms / self._gpu_sms

    @property
    def price_share(self) -> float:
        # a slice blocks the larger of its compute slots (of 7) and memory slices (of 8) of the GPU
        return max(self.memory_slices / 8, self.compute_slices / 7)


class GPU(_Strict):
    name: str
    architecture: Literal["hopper", "blackwell"]
    memory_mib: int = Field(gt=0)
    bandwidth_tbs: float = Field(gt=0)
    tflops: dict[Literal["bf16", "fp8", "fp4"], float]
    native: list[str]
    nvlink_gbs: float = Field(ge=0)
    gpus_per_node: int = Field(ge=1)
    tdp_w: float | None = None
    sms: int = Field(ge=1)
    price_per_hour: float = Field(gt=0)
    sources: dict[str, str]
    mig: list[MigProfile] = Field(default_factory=list)
    id: str = ""  # filled from the mapping key

    @field_validator("sources")
    @classmethod
    def _sources(cls, v):
        missing = [f for f in SOURCED_FIELDS if f not in v]
        if missing:
            raise ValueError(f"no source for {', '.join(missing)} (every number names where it comes from)")
        unknown = [f for f in v if f not in SOURCED_FIELDS]
        if unknown:
            raise ValueError(f"source for unknown field {unknown[0]!r}; valid: {', '.join(SOURCED_FIELDS)}")
        for text in v.values():
            _check_source(text)
        return v

    @field_validator("native")
    @classmethod
    def _families(cls, v):
        for f in v:
            if f not in FAMILIES:
                raise ValueError(f"unknown format family {f!r}; valid choices: {', '.join(FAMILIES)}")
        return v

    @model_validator(mode="after")
    def _tflops_cover_native(self):
        if "bf16" not in self.tflops:
            raise ValueError("tflops needs a bf16 entry (the fallback compute precision)")
        for fam in self.native:
            if COMPUTE_KEY[fam] not in self.tflops:
                raise ValueError(f"native family {fam!r} needs tflops.{COMPUTE_KEY[fam]}")
        for m in self.mig:
            if m.sms > self.sms or m.memory_gib > self.memory_gib:
                raise ValueError(f"MIG {m.name} is larger than the GPU ({m.sms} SMs, {m.memory_gib} GiB)")
            m._gpu_sms = self.sms
        return self

    @property
    def memory_gib(self) -> float:
        return self.memory_mib * MIB / GIB

    @property
    def memory_bytes(self) -> int:
        return self.memory_mib * MIB

    def is_native(self, family: str | None) -> bool:
        return family is None or family in self.native

    def tflops_for(self, family: str) -> float:
        """Dense TFLOPS of the precision ``family`` computes at (must be native)."""
        return self.tflops[COMPUTE_KEY[family]]


class Catalog(_Strict):
    gpus: dict[str, GPU]

    @model_validator(mode="after")
    def _ids(self):
        for key, gpu in self.gpus.items():
            gpu.id = key
        return self


ENGINES = ("vllm", "trtllm", "sglang")


class Serving(_Strict):
    context: int = Field(ge=1)
    batch: int = Field(ge=1)
    engine: Literal["vllm", "trtllm", "sglang"]
    kv_headroom: float = Field(ge=0)
    max_batched_tokens: int = Field(ge=1)
    objective: Literal["hour", "token"]


class Engine(_Strict):
    """How a serving engine sizes its KV cache (``configs/memory.yaml`` ``engines:``).

    ``budget``: "total" (vLLM: fraction x total holds weights, activations, non-torch memory and the
    KV cache), "free" (TensorRT-LLM: the KV cache gets fraction x what is free after everything else)
    or "static" (SGLang: fraction x total holds weights and the KV pool; the rest takes activations).
    """

    budget: Literal["total", "free", "static"]
    fraction: float = Field(gt=0, le=1)
    graphs_in_budget: bool


class MigGuidance(_Strict):
    max_params: float = Field(gt=0)
    min_decode_tokens_per_s: float = Field(ge=0)


class Overhead(_Strict):
    base: float = Field(ge=0)
    cuda_graphs: float = Field(ge=0)
    multi_gpu: float = Field(ge=0)


class Activations(_Strict):
    hidden_factor: float = Field(ge=0)
    intermediate_factor: float = Field(ge=0)
    logits_bytes: int = Field(ge=0)


class Efficiency(_Strict):
    decode_bandwidth: float = Field(gt=0, le=1)
    prefill_compute: float = Field(gt=0, le=1)
    tensor_parallel: dict[int, float]
    pipeline: float = Field(gt=0, le=1)


class Mtp(_Strict):
    include: bool
    embedding_copies: dict[str, bool]
    default_embedding_copies: bool


class MoeKeys(_Strict):
    experts: list[str]
    top_k: list[str]


class MemoryDefaults(_Strict):
    serving: Serving
    engines: dict[Literal["vllm", "trtllm", "sglang"], Engine]
    overhead_gib: Overhead
    mig: MigGuidance
    activations: Activations
    efficiency: Efficiency
    buffers_dtype_bytes: int = Field(ge=1)
    mtp: Mtp
    moe_config_keys: MoeKeys


def _read_yaml(path: Path) -> dict:
    data = read_yaml(path, "config file")
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    return data


def _validation_message(path: Path, err: ValidationError) -> str:
    first = err.errors()[0]
    field = ".".join(str(p) for p in first["loc"])
    return f"{path}: field '{field}': {first['msg']}"


def load_catalog(
    path: str | Path = GPUS_FILE, prices: str | Path | dict | None = None, gpus: list[str] | None = None
) -> Catalog:
    """Load and validate the GPU catalog, optionally with other prices and a subset of GPUs.

    Args:
        path: the catalog YAML.
        prices: a YAML file (or dict) mapping GPU id -> USD per GPU-hour; it
            must give a price for every GPU kept.
        gpus: keep only these GPU ids (unknown ids are an error listing the valid ones).

    Raises:
        ValueError: one line naming the file and the field.
    """
    path = Path(path)
    try:
        cat = Catalog.model_validate(_read_yaml(path))
    except ValidationError as err:
        raise ValueError(_validation_message(path, err)) from None
    if gpus:
        unknown = [g for g in gpus if g not in cat.gpus]
        if unknown:
            raise ValueError(f"unknown GPU {unknown[0]!r}; valid choices ({path.name}): {', '.join(cat.gpus)}")
        cat.gpus = {k: v for k, v in cat.gpus.items() if k in gpus}
    if prices is not None:
        apply_prices(cat, prices)
    return cat


def apply_prices(cat: Catalog, prices: str | Path | dict) -> None:
    """Replace each GPU's ``price_per_hour`` from a mapping or a YAML file of ``gpu_id: usd``."""
    where = "prices" if isinstance(prices, dict) else str(prices)
    table = prices if isinstance(prices, dict) else _read_yaml(Path(prices))
    # prices for GPUs not in the (possibly filtered) catalog are ignored
    for gid in cat.gpus:
        if gid not in table:
            given = ", ".join(map(str, table)) or "none"
            raise ValueError(
                f"{where}: no price for GPU '{gid}' (prices given: {given}); add `{gid}: <USD per GPU-hour>`"
            )
        value = table[gid]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ValueError(f"{where}: field '{gid}': expected a positive number of USD per GPU-hour, got {value!r}")
        cat.gpus[gid].price_per_hour = float(value)


def load_memory_defaults(path: str | Path = MEMORY_FILE) -> MemoryDefaults:
    """The memory/speed model defaults (``configs/memory.yaml``), validated."""
    path = Path(path)
    try:
        return MemoryDefaults.model_validate(_read_yaml(path))
    except ValidationError as err:
        raise ValueError(_validation_message(path, err)) from None


# --- native or not -------------------------------------------------------------
def compute_key(gpu: GPU, wf: str | None, af: str | None) -> str:
    """TFLOPS key ("bf16"/"fp8"/"fp4") a GEMM with these weight/activation families runs at on ``gpu``."""
    if af is None or not gpu.is_native(af):
        return "bf16"  # weight-only (or emulated activations): the GEMM runs in BF16
    a_key = COMPUTE_KEY[af]
    if wf is None or not gpu.is_native(wf):
        return a_key  # weights dequantized in the kernel (e.g. NVFP4 W4A8/W4A16 on Hopper)
    w_key = COMPUTE_KEY[wf]
    return a_key if _BITS[a_key] >= _BITS[w_key] else w_key


def native_notes(gpu: GPU, families: dict[str, set[str]]) -> tuple[bool, list[str]]:
    """Whether every format the policy uses runs natively on ``gpu``, and why not."""
    notes: list[str] = []
    wf = families["weights"] - set(gpu.native)
    af = families["activations"] - set(gpu.native)
    kf = families["kv"] - set(gpu.native)
    arch = gpu.architecture.capitalize()
    fp8_acts = "fp8" in families["activations"]
    for fam in sorted(wf):
        if fam in ("nvfp4", "mxfp4"):
            mode = "W4A8 (FP8 activations)" if fp8_acts and gpu.is_native("fp8") else "W4A16 (BF16 activations)"
            notes.append(
                f"{fam.upper()} weights are not native on {arch}: they run weight-only, {mode}, "
                "dequantized in the GEMM; the memory saving is real, the FP4 compute speedup is not"
            )
        else:
            notes.append(f"{fam.upper()} weights are not native on {arch}: emulated (dequantized to BF16 for the GEMM)")
    for fam in sorted(af - wf):
        notes.append(f"{fam.upper()} activations are not native on {arch}: they run in BF16")
    for fam in sorted(af & wf):
        notes.append(
            f"{fam.upper()} activations are not native on {arch}: they run in BF16 (or FP8 where the server offers it)"
        )
    for fam in sorted(kf):
        notes.append(f"{fam.upper()} KV cache is not native on {arch}: stored at its size, dequantized for attention")
    return not (wf or af or kf), notes

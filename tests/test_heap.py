"""qeval.pipeline.heap: glibc's allocator regime for a CPU run, set within its scope only, a no-op elsewhere."""

from __future__ import annotations

import ctypes
import resource

import pytest
import torch

from qeval.pipeline import heap, peaks

MB = 1 << 20


class FakeLibc:
    """Records mallopt / malloc_trim calls; ``refuse`` = params whose mallopt fails (returns 0)."""

    def __init__(self, refuse=()):
        self.calls, self.refuse = [], set(refuse)

    def mallopt(self, param, value):
        self.calls.append(("mallopt", param, value))
        return 0 if param in self.refuse else 1

    def malloc_trim(self, pad):
        self.calls.append(("trim", pad))
        return 1


@pytest.fixture
def fake(monkeypatch):
    libc = FakeLibc()
    monkeypatch.setattr(heap, "glibc", lambda: libc)
    for k in heap._ENV + ("GLIBC_TUNABLES",):
        monkeypatch.delenv(k, raising=False)
    return libc


def _settings(calls):
    return {p: v for c, *rest in calls if c == "mallopt" for p, v in [rest]}


def test_set_within_the_scope_and_restored_after_even_on_error(fake):
    with pytest.raises(RuntimeError):
        with heap.steady() as on:
            assert on
            assert _settings(fake.calls) == heap.STEADY
            assert heap.trim()
            raise RuntimeError("a failing pass")
    assert _settings(fake.calls) == heap.GLIBC_DEFAULTS  # the last value set of each
    assert fake.calls[-1] == ("trim", 0)
    n = len(fake.calls)
    assert not heap.trim()  # outside the scope: nothing
    assert len(fake.calls) == n


@pytest.mark.parametrize("case", ["disabled", "no glibc", "env", "tunables", "mallopt fails"])
def test_nothing_changes_where_unsupported_or_unwanted(monkeypatch, fake, case):
    libc = fake
    if case == "no glibc":
        monkeypatch.setattr(heap, "glibc", lambda: None)
    elif case == "env":
        monkeypatch.setenv("MALLOC_MMAP_MAX_", "0")
    elif case == "tunables":
        monkeypatch.setenv("GLIBC_TUNABLES", "glibc.cpu.x86_ibt=on:glibc.malloc.trim_threshold=1")
    elif case == "mallopt fails":
        libc.refuse = {heap.M_TRIM_THRESHOLD}
    with heap.steady(enabled=case != "disabled") as on:
        assert not on
        assert not heap.trim()
    if case == "mallopt fails":  # whatever was set is put back
        assert _settings(libc.calls)[heap.M_MMAP_MAX] == heap.GLIBC_DEFAULTS[heap.M_MMAP_MAX]
    else:
        assert libc.calls == []


def test_nested_scope_leaves_the_outer_one_in_place(fake):
    with heap.steady() as outer:
        with heap.steady() as inner:
            assert outer and not inner
        assert _settings(fake.calls) == heap.STEADY  # the inner exit restored nothing
        assert heap.trim()
    assert _settings(fake.calls) == heap.GLIBC_DEFAULTS


def test_tuned_by_environment():
    assert not heap.tuned_by_environment({"GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX"})
    assert heap.tuned_by_environment({"MALLOC_TRIM_THRESHOLD_": "1"})
    assert heap.tuned_by_environment({"GLIBC_TUNABLES": "glibc.malloc.mmap_max=0"})


def _faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _touch_fresh(libc, nbytes: int) -> int:
    """Minor faults of malloc-ing and writing ``nbytes`` (then freed), through glibc itself.

    (Not a torch tensor: torch asks glibc 2.36 for 64-byte-aligned blocks, which need a little more
    than a freed block of the same size holds, so whether one is reused depends on its neighbours.)
    """
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    f = _faults()
    ptr = libc.malloc(nbytes)
    assert ptr
    ctypes.memset(ptr, 1, nbytes)
    libc.free(ptr)
    return _faults() - f


needs_glibc = pytest.mark.skipif(heap.glibc() is None or heap.tuned_by_environment(),
                                 reason="glibc's mallopt is not in use here")


@needs_glibc
def test_blocks_above_the_mmap_threshold_are_reused_without_faults_only_within_the_scope():
    libc = heap.glibc()
    size = 96 * MB  # above glibc's largest mmap threshold (32 MiB): mmapped afresh by default
    pages = size // resource.getpagesize()
    with heap.steady() as on:
        assert on
        _touch_fresh(libc, size)
        inside = max(_touch_fresh(libc, size) for _ in range(3))
    after = min(_touch_fresh(libc, size) for _ in range(3))
    assert after > pages // 2  # glibc's defaults again: fresh pages every time
    assert inside < pages // 100, (inside, after)


@needs_glibc
def test_host_peak_is_still_per_pass():
    reset = peaks._reset_host()
    if not reset:
        pytest.skip("/proc/self/clear_refs is not writable here")
    size = 256 * MB
    with heap.steady():
        t = torch.ones(size // 4)
        big = peaks.read(peaks.reset(torch.nn.Linear(1, 1)))["host_peak_bytes"]
        del t  # freed, kept in the heap, resident
        small = peaks.read(peaks.reset(torch.nn.Linear(1, 1)))["host_peak_bytes"]
    assert small < big - size // 2, (small, big)  # the reset gave the freed block back first


def test_a_cpu_run_evaluates_in_the_regime_trims_before_each_pass_and_numbers_do_not_move(tmp_path, monkeypatch):
    import json

    from test_run import _opts, _text, build_tiny_model, numbers, write_recipe

    from qeval.pipeline.runner import run_recipe

    build_tiny_model(tmp_path / "model")
    (tmp_path / "eval.txt").write_text(_text(1, 400), encoding="utf-8")
    (tmp_path / "calib.txt").write_text(_text(2, 400), encoding="utf-8")
    recipe = write_recipe(tmp_path)  # baseline, fp8-dynamic, nvfp4 on the CPU
    real = heap.glibc()

    libc = FakeLibc()  # what the runner asks of glibc, and when
    reset_host = peaks._reset_host
    monkeypatch.setattr(heap, "glibc", lambda: libc)
    monkeypatch.setattr(peaks, "_reset_host", lambda: libc.calls.append(("reset",)) or reset_host())
    for k in heap._ENV + ("GLIBC_TUNABLES",):
        monkeypatch.delenv(k, raising=False)
    run_recipe(recipe, _opts(tmp_path / "fake", run_id="r"))
    steady = [("mallopt", k, v) for k, v in heap.STEADY.items()]
    restore = [("mallopt", k, v) for k, v in heap.GLIBC_DEFAULTS.items()]
    assert libc.calls == steady + [("trim", 0), ("reset",)] * 3 + restore + [("trim", 0)]

    def run(name, lib):  # the real regime, and none: the same numbers, bit for bit
        monkeypatch.setattr(heap, "glibc", lambda: lib)
        path = run_recipe(recipe, _opts(tmp_path / name, run_id="r"))
        return numbers(json.loads(path.read_text()))

    assert run("steady", real) == run("glibc", None)

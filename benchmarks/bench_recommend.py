"""Cold-start wall time of `qeval recommend` (qeval issue #13).

    .venv/bin/python benchmarks/bench_recommend.py [--repeat 5]

Prints, each as the median of --repeat fresh processes (and their CPU seconds):
- `python -c "import torch"`: the floor any torch-based command pays;
- cold `qeval recommend deepseek-r1 --policy nvfp4 --json` with an EMPTY qeval cache: the bundled
  671B config, counted from its config and shipped layout (no transformers modeling import);
  target: under 3 s on the 2-core CI machine;
- the same on a copy of the config folder without its shipped layout, first call (transformers
  builds it on the meta device) and second call (the user's layout cache);
- an offline hub ID failing (target: under 2 s, one line).
Plus the load average, because other work on the machine inflates every wall time; the CPU
seconds (user + sys of the child) are less sensitive to that.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL = "deepseek-r1"


def _run(cmd: list[str], env: dict, ok=(0,)) -> tuple[float, float]:
    """(wall seconds, CPU seconds user+sys) of one child process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    rc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
    wall = time.perf_counter() - t
    if rc not in ok:
        raise SystemExit(f"{' '.join(cmd)} exited {rc}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _line(label: str, runs: list[tuple[float, float]]) -> str:
    wall = statistics.median(r[0] for r in runs)
    cpu = statistics.median(r[1] for r in runs)
    walls = ", ".join(f"{r[0]:.2f}" for r in runs)
    return f"{label:58s} median wall {wall:5.2f} s  cpu {cpu:5.2f} s  (runs: {walls})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--policy", default="nvfp4")
    args = ap.parse_args()
    py = sys.executable
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    print(_line('python -c "import torch"', [_run([py, "-c", "import torch"], env) for _ in range(args.repeat)]))
    cmd = [py, "-m", "qeval", "recommend", MODEL, "--policy", args.policy, "--json"]
    cold = []
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory() as d:
            cold.append(_run(cmd, dict(env, QEVAL_CACHE=d)))
    print(_line(f"cold qeval recommend {MODEL} --policy {args.policy} --json", cold))

    built, cached = [], []
    with tempfile.TemporaryDirectory() as folder:
        shutil.copy(ROOT / "configs" / "models" / MODEL / "config.json", Path(folder) / "config.json")
        other = [py, "-m", "qeval", "recommend", folder, "--policy", args.policy, "--json"]
        for _ in range(max(1, args.repeat // 2)):
            with tempfile.TemporaryDirectory() as d:
                built.append(_run(other, dict(env, QEVAL_CACHE=d)))
                cached.append(_run(other, dict(env, QEVAL_CACHE=d)))
    print(_line("  config folder without a layout, first call (transformers)", built))
    print(_line("  config folder without a layout, second call (user cache)", cached))

    offline = dict(env, HF_ENDPOINT="http://127.0.0.1:9")
    with tempfile.TemporaryDirectory() as d:
        offline["HF_HUB_CACHE"] = d
        hub = [py, "-m", "qeval", "recommend", "some-org/some-model", "--policy", args.policy]
        print(_line("offline hub ID (one-line error, exit 2)", [_run(hub, offline, ok=(2,)) for _ in range(args.repeat)]))
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

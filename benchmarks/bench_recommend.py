"""Wall time of `qeval recommend` on the DeepSeek-R1 and GLM-5.2 configs.

    .venv/bin/python benchmarks/bench_recommend.py [--repeat 3]

For each model, three figures (median of --repeat runs):
- cold: a fresh process with an empty skeleton cache (imports torch and
  transformers' modeling code, builds the model on the meta device, plans);
- cached: a fresh process whose config was seen before (qeval.deploy.cache:
  no transformers modeling import);
- in-process: `recommend()` in a warm Python process (imports already done).
Plus `python -c "import torch"` as the floor any torch-based command pays, and
the load average, because other work on the machine inflates every wall time;
the CPU seconds (user + sys of the child) are less sensitive to that.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("deepseek-r1", "glm-5.2")


def _wall(cmd: list[str], env: dict) -> tuple[float, float]:
    """(wall seconds, CPU seconds user+sys) of one child process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _line(label: str, runs: list[tuple[float, float]]) -> str:
    wall = statistics.median(r[0] for r in runs)
    cpu = statistics.median(r[1] for r in runs)
    return f"{label:44s} wall {wall:6.2f} s   cpu {cpu:6.2f} s   (wall runs: {', '.join(f'{r[0]:.2f}' for r in runs)})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--policy", default="fp8-block")
    args = ap.parse_args()
    py = sys.executable
    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    env = dict(os.environ)
    print(_line('python -c "import torch"', [_wall([py, "-c", "import torch"], env) for _ in range(args.repeat)]))
    for name in MODELS:
        cmd = [py, "-m", "qeval", "recommend", name, "--policy", args.policy, "--json"]
        cold, cached = [], []
        for _ in range(args.repeat):
            with tempfile.TemporaryDirectory() as d:
                env["QEVAL_CACHE"] = d
                cold.append(_wall(cmd, env))
                cached.append(_wall(cmd, env))
        print(_line(f"qeval recommend {name} (cold)", cold))
        print(_line(f"qeval recommend {name} (cached skeleton)", cached))
    os.environ["QEVAL_LAYOUT_CACHE"] = "off"
    from qeval.deploy.recommend import recommend

    recommend("gpt2", args.policy)  # pay the imports once
    for name in MODELS:
        times = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            recommend(name, args.policy)
            times.append(time.perf_counter() - t)
        print(
            f"{'recommend() in-process ' + name:44s} wall {statistics.median(times):6.2f} s"
            "   (meta build + plan + options, no cache)"
        )
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Results on disk: the documented schema, atomic writes, and a run directory.

Layout of one run (``results/<recipe-name>/<run-id>/``)::

    run.json              manifest written first: recipe name/path/sha256/config, run id, start time
    policies/<name>.json  one file per finished evaluation (``baseline.json`` for the baseline)
    results.json          assembled by ``RunDir.finalize`` from the per-policy files
    report.md, report.html, pareto.png   written by ``qeval.results.report`` after results.json
    samples/<policy>/<task>.jsonl        lm-eval's per-example records, for tasks with ``log_samples``

Every file is written atomically (a temp file in the same directory, then
``os.replace``), so a killed run never leaves a half-written file and loses no
finished policy. ``--resume`` reuses ``policies/*.json`` after checking that the
recipe's sha256 is the one the run started with.

The runner's calls, in order::

    rundir = RunDir.create(results_root, recipe_name, recipe_path, recipe_sha256,
                           recipe_config, run_id=None, resume=False)
    done = rundir.load_finished()          # {name: entry}; empty for a new run
    rundir.save_policy("baseline", baseline_entry)
    rundir.save_policy("nvfp4", policy_entry)
    path = rundir.finalize(environment=environment(seed=0), gate=gate)  # -> results.json

JSON notes: non-finite floats (an overflowing perplexity) are written as
``Infinity``/``NaN``, which Python's ``json`` reads back; metric keys that do not
apply to a model are ``null`` or absent, and readers must tolerate both.
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 2  # 2: metrics.ci (intervals) and metrics.windows (per-window sums)
READABLE_VERSIONS = (1, 2)  # version 1 files read as before, without intervals
RUN_ID_FORMAT = "%Y%m%d-%H%M%S"
BASELINE = "baseline"


# The schema lives in qeval/results/schema.py (commented TypedDicts); re-exported here.
from qeval import files  # noqa: E402
from qeval.files import atomic_write_bytes, atomic_write_json  # noqa: E402,F401  (re-exported)
from qeval.results.environment import environment, now_utc  # noqa: E402,F401  (re-exported)
from qeval.results.schema import (  # noqa: E402
    BaselineEntry,
    Environment,
    GateCheck,
    GateVerdict,
    Metrics,
    PolicyEntry,
    RecipeInfo,
    Results,
    TaskMetrics,
    run_label,
    shape_problem,
)

__all__ = [
    "SCHEMA_VERSION", "BaselineEntry", "Environment", "GateCheck", "GateVerdict", "Metrics", "PolicyEntry",
    "RecipeInfo", "Results", "TaskMetrics", "ResultsError", "RunDir", "atomic_write_bytes", "atomic_write_json",
    "environment", "load_results", "read_json", "results_path", "run_label", "validate_results",
]


class ResultsError(Exception):
    """Bad results input or an unusable results directory; the message is one line."""


# ---------------------------------------------------------------------------
# Atomic writes


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file; raise ResultsError with one line naming the file on any problem."""
    return files.read_json(path, "file", ResultsError)


# ---------------------------------------------------------------------------
# Reading results


def results_path(path: str | os.PathLike) -> Path:
    """``path`` itself if it is a file, else ``path/results.json`` (a run directory)."""
    path = Path(path)
    return path / "results.json" if path.is_dir() else path


def validate_results(data: Any, where: str | os.PathLike) -> Results:
    """Check the shape readers rely on; one-line ResultsError naming the file and field otherwise."""
    if not isinstance(data, dict):
        raise ResultsError(f"{where}: {shape_problem(data)}")
    version = data.get("schema_version")
    if version is not None and version not in READABLE_VERSIONS:
        readable = ", ".join(map(str, READABLE_VERSIONS))
        raise ResultsError(f"{where}: schema_version {version!r} is not supported (this qeval reads {readable})")
    problem = shape_problem(data)
    if problem:
        raise ResultsError(f"{where}: {problem}")
    return data  # type: ignore[return-value]


def load_results(path: str | os.PathLike) -> Results:
    """Load and shape-check a results.json (or a run directory holding one)."""
    file = results_path(path)
    return validate_results(read_json(file), file)


# ---------------------------------------------------------------------------
# The run directory

_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")


def _check_name(name: str, what: str) -> str:
    if not isinstance(name, str) or not _SAFE_NAME.fullmatch(name):
        raise ResultsError(
            f"{what} {name!r} cannot name a file: use letters, digits and . _ + - (not starting with . or -)"
        )
    return name


def _ensure_writable(directory: Path) -> None:
    """Create ``directory`` and prove we can write there, before any expensive work."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=directory, prefix=".qeval-write-test.")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        reason = err.strerror or str(err)
        raise ResultsError(f"results directory {directory} is not writable: {reason}") from None


class RunDir:
    """One run's directory: per-policy files, resume bookkeeping, and the final results.json.

    Use ``RunDir.create(...)`` (creates or locates the directory); the
    constructor only wraps an existing path.
    """

    def __init__(self, path: str | os.PathLike, manifest: dict[str, Any]):
        self.path = Path(path)
        self.manifest = manifest
        self.resumed = False  # True when create() reopened an earlier run
        self._lock: int | None = None  # held from create() until release() or the process ends

    def lock(self) -> "RunDir":
        """Take the run's lock (``qeval.results.lock``); ResultsError naming the holder if taken."""
        from qeval.results.lock import LockHeld, acquire

        try:
            self._lock = acquire(self.path)
        except LockHeld as err:
            raise ResultsError(str(err)) from None
        return self

    def release(self) -> None:
        from qeval.results.lock import release

        release(self._lock)
        self._lock = None

    # -- locations
    @property
    def run_id(self) -> str:
        return self.manifest["run_id"]

    @property
    def policies_dir(self) -> Path:
        return self.path / "policies"

    @property
    def results_file(self) -> Path:
        return self.path / "results.json"

    def policy_file(self, name: str) -> Path:
        return self.policies_dir / f"{_check_name(name, 'policy name')}.json"

    # -- creation
    @classmethod
    def create(
        cls,
        results_root: str | os.PathLike,
        recipe_name: str,
        recipe_path: str | os.PathLike,
        recipe_sha256: str,
        recipe_config: dict[str, Any],
        run_id: str | None = None,
        resume: bool = False,
    ) -> "RunDir":
        """Create (or with ``resume`` reopen) ``results_root/recipe_name/run_id``.

        Args:
            results_root: usually ``results``.
            recipe_name: the recipe's name (a directory level).
            recipe_path: where the recipe file is (recorded, not read).
            recipe_sha256: hash of the recipe file; a resumed run must match it.
            recipe_config: the validated recipe as a dict (recorded in results.json).
            run_id: ``YYYYmmdd-HHMMSS`` UTC by default. Without ``resume`` an existing
                run with this id is refused (no silent overwrite).
            resume: reopen ``run_id``, or when it is None the latest run of this
                recipe; with no earlier run a new one starts (``self.resumed`` is False).

        Raises:
            ResultsError: directory not writable (checked first, before any model
                work), recipe changed since the resumed run, run id already used.
        """
        recipe_dir = Path(results_root) / _check_name(recipe_name, "recipe name")
        _ensure_writable(recipe_dir)
        if run_id is not None:
            _check_name(run_id, "run id")

        if resume:
            target = recipe_dir / run_id if run_id else _latest_run(recipe_dir)
            if target is not None and (target / "run.json").is_file():
                _ensure_writable(target / "policies")
                held = cls(target, {}).lock()  # before reading anything another process may be writing
                try:
                    rundir = cls._reopen(target, recipe_path, recipe_sha256, recipe_config)
                except BaseException:
                    held.release()
                    raise
                rundir._lock = held._lock
                return rundir
            if run_id is not None:  # a named run that is not there is a typo, not a fresh start
                runs = sorted(p.parent.name for p in recipe_dir.glob("*/run.json"))
                known = f"runs of {recipe_name}: {', '.join(runs[-5:])}" if runs else f"no runs of {recipe_name} yet"
                raise ResultsError(f"cannot resume: no run {recipe_dir / run_id} ({known}); drop --run-id to resume "
                                   "the latest run, or drop --resume to start a new run with that id")
            if run_id is None:
                run_id = datetime.now(timezone.utc).strftime(RUN_ID_FORMAT)

        if run_id is None:
            run_id = _fresh_run_id(recipe_dir)
        path = recipe_dir / run_id
        if (path / "run.json").exists() or (path / "policies").exists():
            raise ResultsError(
                f"run {path} already exists: pass --resume to continue it, or choose another --run-id"
            )
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "run_id": run_id,
            "recipe": {
                "name": recipe_name,
                "path": str(recipe_path),
                "sha256": recipe_sha256,
                "config": recipe_config,
            },
            "started": now_utc(),
        }
        _ensure_writable(path / "policies")
        rundir = cls(path, manifest).lock()
        atomic_write_json(path / "run.json", manifest)
        return rundir

    @classmethod
    def _reopen(cls, path: Path, recipe_path: str | os.PathLike, recipe_sha256: str,
                recipe_config: dict[str, Any]) -> "RunDir":
        manifest = read_json(path / "run.json")
        if not isinstance(manifest, dict) or not isinstance(manifest.get("recipe"), dict):
            raise ResultsError(f"{path / 'run.json'}: not a qeval run manifest")
        old = manifest["recipe"].get("sha256")
        if old != recipe_sha256:  # the runner reuses only entries whose inputs are unchanged
            manifest["recipe"] = {**manifest["recipe"], "path": str(recipe_path), "sha256": recipe_sha256,
                                  "config": recipe_config}
            manifest.setdefault("recipe_changes", []).append({"sha256_before": old, "resumed": now_utc()})
            atomic_write_json(path / "run.json", manifest)
        rundir = cls(path, manifest)
        rundir.resumed = True
        return rundir

    # -- per-policy files
    def save_policy(self, name: str, entry: dict[str, Any]) -> Path:
        """Write one finished evaluation (``name`` ``"baseline"`` for the baseline) atomically."""
        path = self.policy_file(name)
        record = {
            "schema_version": SCHEMA_VERSION,
            "recipe_sha256": self.manifest["recipe"]["sha256"],
            "saved": datetime.now(timezone.utc).isoformat(timespec="microseconds"),
            "entry": {**entry, "name": name},
        }
        return atomic_write_json(path, record)

    def _records(self) -> list[tuple[str, dict[str, Any]]]:
        if not self.policies_dir.is_dir():
            return []
        records = []
        # temp files start with "." and end with ".tmp": leftovers of a crash, ignored
        for file in sorted(self.policies_dir.glob("[!.]*.json")):
            record = read_json(file)
            if not isinstance(record, dict) or not isinstance(record.get("entry"), dict):
                raise ResultsError(f"{file}: not a qeval policy record; delete it to recompute that policy")
            records.append((file.stem, record))
        records.sort(key=lambda r: (r[1].get("saved", ""), r[0]))  # order of completion
        return records

    def set_aside(self, name: str) -> None:
        """Hide a record computed from other inputs (renamed to ``.stale.<name>.json``, not deleted)."""
        path = self.policy_file(name)
        if path.exists():
            os.replace(path, path.with_name(f".stale.{path.name}"))

    def load_finished(self) -> dict[str, dict[str, Any]]:
        """Finished evaluations by name (``"baseline"`` included), in the order they finished."""
        return {name: record["entry"] for name, record in self._records()}

    # -- the end
    def assemble(
        self,
        environment: dict[str, Any] | None = None,
        policy_order: list[str] | None = None,
    ) -> Results:
        """Build the results dict from the per-policy files (no gate, nothing written)."""
        finished = self.load_finished()
        baseline = finished.pop(BASELINE, None)
        names = list(finished)
        if policy_order:
            rank = {n: i for i, n in enumerate(policy_order)}
            names.sort(key=lambda n: rank.get(n, len(rank)))
        env = dict(environment) if environment is not None else dict(self.manifest.get("environment") or {})
        env.setdefault("started", self.manifest.get("started"))
        env.setdefault("finished", now_utc())
        return {
            "schema_version": SCHEMA_VERSION,
            "recipe": self.manifest["recipe"],
            "run_id": self.run_id,
            "environment": env,
            "baseline": baseline,
            "policies": [finished[n] for n in names],
        }

    def finalize(
        self,
        environment: dict[str, Any] | None = None,
        gate: Any = None,
        policy_order: list[str] | None = None,
        report: bool = True,
    ) -> Path:
        """Assemble results.json, evaluate ``gate`` if given, write report.md and pareto.png.

        Args:
            environment: from ``environment()``; ``finished`` is filled in if absent.
            gate: a ``qeval.results.gate.Gate``, a gate dict (as in a recipe's ``gate:``), the
                name of ``configs/gates/<name>.yaml``, a path to a gate file, or None.
            policy_order: order of policies in results.json (default: order finished).
            report: also write report.md and pareto.png (a failure there only warns:
                results.json is already safe on disk).

        Returns:
            the path of results.json.
        """
        results = self.assemble(environment, policy_order)
        if gate is not None:
            from qeval.results.gate import apply_gate, resolve_gate

            apply_gate(results, resolve_gate(gate))
        atomic_write_json(self.results_file, results)
        if report:
            try:
                from qeval.results.report import write_report

                write_report(results, self.path)
            except Exception as err:  # noqa: BLE001 - the report is a convenience, results.json is the product
                print(f"qeval: warning: report for {self.path} not written: {err}", file=sys.stderr)
        return self.results_file


def _fresh_run_id(recipe_dir: Path) -> str:
    base = datetime.now(timezone.utc).strftime(RUN_ID_FORMAT)
    run_id, n = base, 1
    while (recipe_dir / run_id).exists():  # two runs in the same second
        n += 1
        run_id = f"{base}-{n}"
    return run_id


def _latest_run(recipe_dir: Path) -> Path | None:
    """The most recently started run of a recipe (by the manifest's start time, then name)."""
    runs = []
    for manifest in recipe_dir.glob("*/run.json"):
        try:
            started = json.loads(manifest.read_text(encoding="utf-8")).get("started", "")
        except (OSError, ValueError, AttributeError):
            continue
        runs.append((str(started), manifest.parent.name, manifest.parent))
    return max(runs)[2] if runs else None

"""Check results against a deployment gate: a verdict per policy, and an exit code for CI.

RESULTS is a results.json or a run directory (results/<recipe>/<run-id>/).
Without --gate the gate is the one the run used (stored in results.json or named
in the recipe), else configs/gates/default.yaml. The verdicts are recomputed from
the metrics, so a different gate can be tried on an old run.

Exit codes: 0 every requested policy passes, 1 one or more fail, 2 bad input
(missing file, bad JSON, bad gate file, unknown policy, nothing to gate). A check
that cannot be evaluated (a NaN stderr, null metrics, NaN logits) fails.
"""

from __future__ import annotations

import sys

HELP = "check results against a gate (exit 0 pass, 1 fail, 2 bad input); optional JUnit XML"
EPILOG = """examples:
  qeval gate results/quickstart/20261125-183000
  qeval gate results/quickstart/20261125-183000/results.json --gate configs/gates/strict.yaml
  qeval gate RUN_DIR --gate strict --policies nvfp4 fp8-dynamic --junit gate.xml
"""


def add_arguments(parser) -> None:
    parser.add_argument("results", nargs="+", metavar="RESULTS", help="results.json file(s) or run directories")
    parser.add_argument("--gate", metavar="FILE", help="gate YAML file or a name in configs/gates/ (default: the run's gate)")
    parser.add_argument("--policies", nargs="+", metavar="NAME", help="gate only these policies (default: the gate's 'policies')")
    parser.add_argument("--junit", metavar="FILE", help="also write JUnit XML (one testsuite per results file)")


def _gate_for(results: dict, explicit: str | None):
    """(Gate, where it came from)."""
    from qeval.results.gate import GATES_DIR, load_gate, parse_gate, resolve_gate

    if explicit:
        return resolve_gate(explicit), explicit
    stored = (results.get("gate") or {}).get("config")
    if isinstance(stored, dict):
        return parse_gate(stored, "results.json field 'gate.config'"), "the gate stored in the results"
    recipe_gate = ((results.get("recipe") or {}).get("config") or {}).get("gate")
    if recipe_gate is not None:
        return resolve_gate(recipe_gate), "the recipe's gate"
    default = GATES_DIR / "default.yaml"
    return load_gate(default), str(default)


def run(args) -> int:
    from pathlib import Path

    from qeval.results.gate import GateError, evaluate_gate, junit_xml
    from qeval.results.store import ResultsError, atomic_write_bytes, load_results, results_path

    suites = []
    any_failed = False
    try:
        for item in args.results:
            file = results_path(item)
            results = load_results(file)
            gate, source = _gate_for(results, args.gate)
            verdicts = evaluate_gate(results, gate, args.policies)
            suites.append((str(file), verdicts))
            print(f"{file}: gate {source} (confidence {gate.confidence:g})")
            if not verdicts:  # nothing gated is not a pass
                raise GateError(f"{file}: no policies to gate")
            for name, verdict in verdicts.items():
                ok = verdict["passed"]
                any_failed |= not ok
                applied = [c for c in verdict["checks"] if not c.get("skipped")]
                n = len(applied)
                print(f"  {'PASS' if ok else 'FAIL'}  {name}  ({n} check{'' if n == 1 else 's'})")
                for check in verdict["checks"]:
                    if not check["passed"] or check.get("within_noise"):
                        print(f"        {check['name']}: {check['detail']}")
        if args.junit:
            atomic_write_bytes(Path(args.junit), junit_xml(suites))
    except (GateError, ResultsError) as err:
        print(f"qeval gate: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # JUnit file not writable
        print(f"qeval gate: error: {getattr(err, 'filename', '') or ''}: {err.strerror or err}", file=sys.stderr)
        return 2
    n = sum(len(v) for _, v in suites)
    failed = sum(not verdict["passed"] for _, v in suites for verdict in v.values())
    # not "N passed, N failed": CI log readers take that line for a test runner's summary
    print(f"verdict: {n - failed} of {n} policies pass the gate, {failed} fail")
    return 1 if any_failed else 0

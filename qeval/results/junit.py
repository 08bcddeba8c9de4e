"""JUnit XML of gate verdicts, for CI systems that show test reports (``qeval gate --junit``)."""

from __future__ import annotations


def junit_xml(suites: list[tuple[str, dict[str, dict]]]) -> bytes:
    """JUnit XML: one testsuite per results file, one testcase per (policy, check).

    Args:
        suites: ``[(results file label, verdicts from evaluate_gate), ...]``.
    """
    import xml.etree.ElementTree as ET

    root = ET.Element("testsuites", name="qeval gate")
    total = failures = skipped = 0
    for label, verdicts in suites:
        suite = ET.SubElement(root, "testsuite", name=label)
        n = f = s = 0
        for policy, verdict in verdicts.items():
            for check in verdict["checks"]:
                case = ET.SubElement(suite, "testcase", classname=f"qeval.results.gate.{policy}", name=f"{policy}: {check['name']}")
                n += 1
                if check.get("skipped"):
                    s += 1
                    ET.SubElement(case, "skipped", message=check["detail"])
                elif not check["passed"]:
                    f += 1
                    fail = ET.SubElement(case, "failure", message=check["detail"], type="GateFailure")
                    fail.text = check["detail"]
        suite.set("tests", str(n))
        suite.set("failures", str(f))
        suite.set("errors", "0")
        suite.set("skipped", str(s))
        total, failures, skipped = total + n, failures + f, skipped + s
    root.set("tests", str(total))
    root.set("failures", str(failures))
    root.set("errors", "0")
    root.set("skipped", str(skipped))
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)

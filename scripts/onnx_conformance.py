#!/usr/bin/env python
"""Run dcnn's ONNX reader over ONNX's own backend test data and write the conformance report.

The cases come from the installed ``onnx`` package, offline (:mod:`dcnn.testing.onnx_conformance` says which
cases are applicable and how they are judged). Prints the report, writes it to ``--output`` and exits 1 if any
applicable case fails.

Usage: ``python scripts/onnx_conformance.py [--suites node light pytorch] [--output results/onnx_conformance.md]``
"""

from __future__ import annotations

import argparse
import sys
import warnings

from benchlib import add_report_arguments, report_output

from dcnn.testing.onnx_conformance import SUITES, report, run_suites


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suites", nargs="+", choices=list(SUITES), default=list(SUITES))
    add_report_arguments(parser, "results/onnx_conformance.md")
    args = parser.parse_args()
    report_file = report_output(args)  # checked before the benchmark runs
    # ONNX's case builders warn about their own overflowing casts (cast, reduce cases); not dcnn's business.
    warnings.filterwarnings("ignore", category=RuntimeWarning)
    results = run_suites(tuple(args.suites))
    text = report(results, command=" ".join(["python", *sys.argv]))
    report_file.write_text(text + "\n")
    print(text)
    sys.exit(1 if any(result.status == "failed" for result in results) else 0)


if __name__ == "__main__":
    main()

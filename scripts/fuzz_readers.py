#!/usr/bin/env python
"""Feed every file reader many damaged files (dcnn.testing.fuzz) and record the outcomes.

A case passes when the reader accepts the file or raises one of dcnn's own errors; any other exception, or a case
slower than ``--timeout`` seconds, fails the run. Prints per reader the cases tried, accepted and refused.

Usage: ``python scripts/fuzz_readers.py [--cases 2000] [--seed 0] [--output results/fuzz_readers.json]``
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
import traceback
from pathlib import Path

from benchlib import add_report_arguments, report_output

from dcnn.errors import DcnnError
from dcnn.testing.fuzz import TARGETS, damage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=2000, help="damaged files per reader")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=10.0, help="slowest acceptable case, seconds")
    add_report_arguments(parser, "results/fuzz_readers.json")
    args = parser.parse_args()
    report_file = report_output(args)  # checked before the benchmark runs
    report, failures = {"command": " ".join(["python", *sys.argv]), "readers": {}}, 0
    print(f"{'reader':<14} {'cases':>6} {'accepted':>9} {'refused':>8} {'other':>6} {'slowest s':>10}")
    for name, target in TARGETS.items():
        rng = random.Random(f"{args.seed}:{name}")
        counts = {"accepted": 0, "refused": 0, "other": 0}
        slowest, examples = 0.0, []
        with tempfile.TemporaryDirectory() as folder:
            path = target.write(Path(folder))
            valid = path.read_bytes()
            for _ in range(args.cases):
                path.write_bytes(damage(valid, rng))
                start = time.perf_counter()
                try:
                    target.read(path)
                    counts["accepted"] += 1
                except DcnnError:
                    counts["refused"] += 1
                except Exception:
                    counts["other"] += 1
                    examples.append(traceback.format_exc(limit=2))
                slowest = max(slowest, time.perf_counter() - start)
        failures += counts["other"] + (slowest > args.timeout)
        report["readers"][name] = {"cases": args.cases, **counts, "slowest_seconds": slowest,
                                   "other_examples": examples[:3]}
        print(f"{name:<14} {args.cases:>6} {counts['accepted']:>9} {counts['refused']:>8} {counts['other']:>6} "
              f"{slowest:10.3f}")
    report_file.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.output}")
    if failures:
        raise SystemExit(f"{failures} failing case(s): see {args.output}")


if __name__ == "__main__":
    main()

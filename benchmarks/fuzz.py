"""Fuzz every parser and loader with many more inputs than the test suite does.

Runs the properties of ``tests/test_fuzz.py`` (its ``TARGETS``) with ``--examples`` inputs each and
prints, per target, the inputs tried and the crashes found: an exception other than the loader's own
named error, or a result that breaks the property. Exit code 1 when any target crashed.

    taskset -c 0 .venv/bin/python benchmarks/fuzz.py --examples 2000
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def run_target(prop) -> tuple[int, list[str]]:  # type: ignore[no-untyped-def]
    """Inputs tried and the crashes found (one line each) for one property."""
    tried = [0]
    inner = prop.hypothesis.inner_test

    @functools.wraps(inner)
    def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
        tried[0] += 1
        return inner(*args, **kwargs)

    prop.hypothesis.inner_test = counted
    crashes: list[str] = []
    try:
        prop()
    except Exception as error:  # noqa: BLE001 -- what the fuzzer found: reported, then the next target
        found = error.exceptions if isinstance(error, BaseExceptionGroup) else [error]
        crashes = [traceback.format_exception_only(e)[-1].strip() for e in found]
    finally:
        prop.hypothesis.inner_test = inner
    return tried[0], crashes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=2000, help="inputs per target (half for shards)")
    parser.add_argument("--only", action="append", default=[], help="run only targets whose name contains this")
    args = parser.parse_args()
    os.environ["PERFGRAPH_FUZZ_EXAMPLES"] = str(args.examples)  # read by tests.test_fuzz when imported
    from tests.test_fuzz import TARGETS

    total_tried = total_crashes = 0
    print(f"{'target':<30} {'inputs':>8} {'crashes':>8} {'seconds':>8}")
    for name, prop in TARGETS.items():
        if args.only and not any(part in name for part in args.only):
            continue
        started = time.perf_counter()
        tried, crashes = run_target(prop)
        print(f"{name:<30} {tried:>8} {len(crashes):>8} {time.perf_counter() - started:>8.1f}", flush=True)
        for crash in crashes:
            print(f"    {crash[:300]}")
        total_tried += tried
        total_crashes += len(crashes)
    print(f"{'total':<30} {total_tried:>8} {total_crashes:>8}")
    return 1 if total_crashes else 0


if __name__ == "__main__":
    sys.exit(main())

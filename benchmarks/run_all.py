"""Run every benchmark, `benchmarks/bench_*.py`, one after the other (`make bench`).

Each runs as its own process with its output passed through; extra arguments are given to
every benchmark, and each ignores those it does not take (e.g. `--rows 20000 --users 30000` for a
smoke run: bench_csv/bench_lake/bench_export/bench_salesforce take --rows, bench_csv/bench_lake
--users). Exits non-zero if any benchmark did.

    .venv/bin/python benchmarks/run_all.py [--only csv,lake] [args for the benchmarks...]
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str]) -> int:
    only: set[str] | None = None
    if len(argv) >= 2 and argv[0] == "--only":
        only = {name.strip() for name in argv[1].split(",") if name.strip()}
        argv = argv[2:]
    scripts = sorted(HERE.glob("bench_*.py"))
    if only is not None:
        scripts = [s for s in scripts if s.stem.removeprefix("bench_") in only]
    if not scripts:
        print("no benchmarks found", file=sys.stderr)
        return 1
    failed = []
    for script in scripts:
        print(f"\n=== {script.name} {' '.join(argv)}".rstrip() + " ===", flush=True)
        started = time.perf_counter()
        code = subprocess.call([sys.executable, str(script), *argv], cwd=HERE.parent)
        print(f"=== {script.name}: exit {code} after {time.perf_counter() - started:.0f} s ===", flush=True)
        if code != 0:
            failed.append(script.name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

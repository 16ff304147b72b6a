"""How long the command takes to answer before doing any work: `--help`, `--version` and one command's help.

Each is run as a fresh process (what a user waits for), `--repeats` times; prints min / median / max seconds.

    python -m autointerp.bench.cli_startup [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

CASES = (["--help"], ["--version"], ["features", "--help"], ["label", "--help"])


def measure(argv: list[str], repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "autointerp.cli", *argv], check=True, capture_output=True)
        out.append(time.perf_counter() - start)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    print(f"{'command':<28} {'min s':>7} {'median s':>9} {'max s':>7}")
    for case in CASES:
        times = measure(case, args.repeats)
        print(f"{'autointerp ' + ' '.join(case):<28} {min(times):>7.2f} {statistics.median(times):>9.2f} {max(times):>7.2f}")


if __name__ == "__main__":
    main()

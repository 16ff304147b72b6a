"""Readers of a store that a job writes in sessions: how long a reader waits to open the file, and how much
later the job's sessions start for it, with writers letting waiting readers in first (`ReaderQueue`, up to
READER_TURN_SECONDS) and without (a turn of 0 s).

    python -m autointerp.bench.busy_store [--sessions 40] [--hold 0.3] [--gap 0] [--readers 2] [--turns 2,0]

The writer (a child process) opens the file, writes for `--hold` seconds, closes it and opens it again after
`--gap` seconds, like the labeling job's store sessions (which leave READER_GAP_S between them). The readers
(threads of this process, as the web catalog's requests) open it read-only, read, close and come back after
a random pause of up to 0.2 s. Figures depend on machine load: report it with them.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from autointerp.store import db

WRITER = """
import json, sys, time
from autointerp.store import db

path, sessions, hold, gap, turn = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
db.READER_TURN_SECONDS = turn
waits = []
start = time.monotonic()
for i in range(sessions):
    t = time.monotonic()
    con = db.connect(path)
    waits.append(time.monotonic() - t)
    end = time.monotonic() + hold
    while time.monotonic() < end:
        con.execute("INSERT INTO rows VALUES (?)", [i])
    con.close()
    time.sleep(gap)
print(json.dumps({"waits": waits, "seconds": time.monotonic() - start}))
"""


def _quantiles(values: list[float]) -> str:
    if not values:
        return "none"
    values = sorted(values)
    p95 = values[min(len(values) - 1, int(0.95 * len(values)))]
    return f"p50 {statistics.median(values) * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms, max {values[-1] * 1000:.0f} ms (n={len(values)})"


def run(sessions: int, hold: float, gap: float, readers: int, turn: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "busy.duckdb"
        con = db.connect(path)
        con.execute("CREATE TABLE rows (i INTEGER)")
        con.close()
        db.READER_TURN_SECONDS = turn
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
        writer = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path), str(sessions), str(hold), str(gap), str(turn)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )
        waits: list[float] = []
        failures: list[str] = []

        def read() -> None:
            rng = random.Random()
            while writer.poll() is None:
                t = time.monotonic()
                try:
                    con = db.connect(path, read_only=True)
                except Exception as exc:  # noqa: BLE001 - counted and shown
                    failures.append(str(exc))
                    continue
                waits.append(time.monotonic() - t)
                con.execute("SELECT count(*) FROM rows").fetchone()
                con.close()
                time.sleep(rng.uniform(0, 0.2))

        threads = [threading.Thread(target=read) for _ in range(readers)]
        for thread in threads:
            thread.start()
        out, err = writer.communicate()
        for thread in threads:
            thread.join()
        if writer.returncode != 0:
            raise SystemExit(f"the writer failed: {err}")
        job = json.loads(out)
    return {"reader_waits": waits, "writer_waits": job["waits"], "seconds": job["seconds"], "failures": failures}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=40, help="the writer's sessions (default 40)")
    parser.add_argument("--hold", type=float, default=0.3, help="seconds each session holds the file (default 0.3)")
    parser.add_argument("--gap", type=float, default=0.0, help="seconds the file stays closed between sessions (default 0)")
    parser.add_argument("--readers", type=int, default=2, help="reader threads (default 2)")
    parser.add_argument("--turns", default=f"{db.READER_TURN_SECONDS:g},0",
                        help="values of READER_TURN_SECONDS to run; 0: writers do not let waiting readers in first "
                        f"(default {db.READER_TURN_SECONDS:g},0)")
    args = parser.parse_args(argv)
    print(f"{args.sessions} sessions of {args.hold} s, gap {args.gap} s, {args.readers} readers "
          f"(ideal job time {args.sessions * (args.hold + args.gap):.1f} s)")
    for turn in (float(t) for t in args.turns.split(",")):
        load = os.getloadavg()[0]
        result = run(args.sessions, args.hold, args.gap, args.readers, turn)
        print(f"- reader turn {turn:g} s (load average {load:.1f}): the job took {result['seconds']:.1f} s")
        print(f"  reader wait to open: {_quantiles(result['reader_waits'])}; gave up: {len(result['failures'])}")
        print(f"  writer wait to open: {_quantiles(result['writer_waits'])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

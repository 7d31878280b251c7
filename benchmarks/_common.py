"""Shared helpers for the benchmarks: run each variant in its own process (clean peak-memory reading),
time training steps, and write tables."""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def time_steps(step: Callable[[], None], warmup: int, repeats: int) -> tuple[float, float]:
    """Median and minimum seconds per call of ``step`` after ``warmup`` calls."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times)


def run_child(script: str, args: list[str], timeout: float = 1800) -> dict:
    """Run ``script --child args...`` and parse the JSON line it prints last."""
    proc = subprocess.run([sys.executable, script, "--child", *args], capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode != 0:
        return {"error": (proc.stderr or proc.stdout).strip().splitlines()[-1:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def write_table(name: str, header: list[str], rows: list[list], notes: str = "") -> str:
    os.makedirs(RESULTS, exist_ok=True)
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(header)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    table = "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])
    text = table + ("\n\n" + notes if notes else "") + "\n"
    path = os.path.join(RESULTS, name)
    with open(path, "w") as f:
        f.write(text)
    print(text)
    print(f"(written to {path})")
    return path

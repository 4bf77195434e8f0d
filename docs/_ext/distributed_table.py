"""The table of the distributed-training page, from ``benchmarks/results/distributed.json``.

Writes ``docs/_generated/distributed.rst`` when the documentation builds; a missing
results file yields a note that says how to produce it.
"""

from __future__ import annotations

import json
from pathlib import Path

from structure_tables import list_table


def write(out: Path, results: Path) -> None:
    """Write ``out/distributed.rst`` from ``results/distributed.json``."""
    path = results / "distributed.json"
    out.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        (out / "distributed.rst").write_text(
            "No measurements yet: run ``python3 benchmarks/distributed.py``.\n"
        )
        return
    data = json.loads(path.read_text())
    rows = data["rows"]
    base = {(r["structure"], r["processes"]): r for r in rows if r["mode"] == "replicate"}
    table = []
    for r in rows:
        replicate = base.get((r["structure"], r["processes"]))
        speedup = (
            f"{replicate['update_ms'] / r['update_ms']:.2f}"
            if replicate is not None and r["mode"] == "split"
            else ""
        )
        table.append(
            [
                r["structure"],
                str(r["processes"]),
                r["mode"],
                f"{r['update_ms']:.1f}",
                f"{r['other_ms']:.1f}",
                speedup,
                f"{r['update_bytes'] / 1e6:.2f}",
                f"{r['other_bytes'] / 1e6:.2f}",
            ]
        )
    header = [
        "structure",
        "processes",
        "mode",
        "update step (ms)",
        "other step (ms)",
        "split speed-up (update)",
        "MB per update step",
        "MB per other step",
    ]
    meta = data.get("meta", {})
    note = (
        f"\n{meta.get('model', '')}; measured on a machine with {meta.get('cpu_count')} "
        f"cores (torch {meta.get('torch')}). Times are the median over the repetitions of "
        "the slowest process; bytes are those each process sends (ring algorithms).\n"
    )
    (out / "distributed.rst").write_text(list_table(header, table) + note)

"""How the cost of a step with the recommended defaults scales with the model's width.

A character-level transformer language model (two ``nn.TransformerEncoderLayer`` of
width ``d``, ``d / 32`` heads, feed-forward ``4 d``, batch 32 of 64 tokens, 96 tokens
of vocabulary) is trained by ``SINGD(model, lr)`` and by AdamW, one thread, in one
process. Per width, after 2 warm-up steps each, the two take turns for ``--rounds``
blocks of ``--steps`` steps (``zero_grad``, forward, backward, ``step``); the table
gives each median time per step and SINGD's relative to AdamW's. SINGD's fixed cost
per block (a few small operations each, paid per call) weighs less as the layers grow.

Usage::

    python benchmarks/step_cost_width.py                  # widths 64, 128, 256, 512
    python benchmarks/step_cost_width.py --widths 64 128 --rounds 3

Results go to ``benchmarks/results/step_cost_width.json``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from singd_opt import SINGD

# the sibling benchmark modules, however this file is loaded
sys.path.insert(0, str(Path(__file__).resolve().parent))
from step_cost import write_results

RESULTS = Path(__file__).parent / "results" / "step_cost_width.json"
VOCABULARY, BATCH, LENGTH = 96, 32, 64


class WideLanguageModel(nn.Module):
    """Embedding, learned positions, two encoder layers of width ``d``, a linear head."""

    def __init__(self, d: int, layers: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCABULARY, d)
        self.position = nn.Parameter(torch.zeros(LENGTH, d))
        layer = nn.TransformerEncoderLayer(d, max(1, d // 32), 4 * d, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d, VOCABULARY)

    def forward(self, tokens: Tensor) -> Tensor:
        """Logits of shape ``(batch, positions, VOCABULARY)``."""
        return self.head(self.encoder(self.embed(tokens) + self.position[: tokens.shape[1]]))


def measure(width: int, rounds: int, steps: int) -> dict[str, float]:
    """Median seconds per step of AdamW and of ``SINGD(model, lr)`` at one width."""
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, VOCABULARY, (BATCH, LENGTH + 1), generator=generator)
    x, y = tokens[:, :-1], tokens[:, 1:]
    runs: dict[str, tuple[nn.Module, torch.optim.Optimizer]] = {}
    for kind in ("adamw", "singd"):
        torch.manual_seed(0)
        model = WideLanguageModel(width)
        if kind == "adamw":
            runs[kind] = (model, torch.optim.AdamW(model.parameters(), lr=1e-3))
        else:
            runs[kind] = (model, SINGD(model, lr=1e-3, loss_average="batch+sequence"))

    def block(kind: str, count: int) -> float:
        model, optimizer = runs[kind]
        start = time.perf_counter()
        for _ in range(count):
            optimizer.zero_grad()
            logits = model(x)
            nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten()).backward()
            optimizer.step()
        return (time.perf_counter() - start) / count

    for kind in runs:
        block(kind, 2)
    times: dict[str, list[float]] = {kind: [] for kind in runs}
    for _ in range(rounds):
        for kind in runs:
            times[kind].append(block(kind, steps))
    adamw, singd = statistics.median(times["adamw"]), statistics.median(times["singd"])
    return {"adamw_seconds": adamw, "singd_seconds": singd, "singd_vs_adamw": singd / adamw}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Measure every width, print the table and write the JSON; return what was written."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--widths", nargs="+", type=int, default=[64, 128, 256, 512])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (median)")
    parser.add_argument("--steps", type=int, default=3, help="steps per block")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    load_start = [round(v, 2) for v in os.getloadavg()]
    start = time.perf_counter()
    results = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for width in args.widths:
            results[str(width)] = measure(width, args.rounds, args.steps)
            r = results[str(width)]
            print(
                f"width {width}: AdamW {1e3 * r['adamw_seconds']:.1f} ms, SINGD "
                f"{1e3 * r['singd_seconds']:.1f} ms, ratio {r['singd_vs_adamw']:.2f}",
                flush=True,
            )
    return write_results(args.output, results, args.rounds, args.steps, load_start, start)


if __name__ == "__main__":
    main()

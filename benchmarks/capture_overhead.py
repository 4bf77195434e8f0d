"""Cost of SINGD's recording hooks in the forward and backward pass.

A small transformer language model (embedding, two encoder layers with attention,
layer norm, head; batch 16, 64 positions, width 128) runs forward and backward

- without any optimizer hooks,
- with SINGD's hooks on a step that does not record curvature (``T = 2``, odd step),
- with SINGD's hooks on a recording step whose blocks discard what they receive (the
  cost of the capture itself: the torch function mode, tensor hooks, and the functional scope of
  the attention that intercepts its projections),
- with SINGD's hooks on a recording step (capture and the curvature terms),

timed side by side in one process (one thread, median of repetitions, interleaved).
The recording step's time includes computing the curvature terms themselves. The
figures go to ``benchmarks/results/capture_overhead.json``::

    python3 benchmarks/capture_overhead.py
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional

from singd_opt import SINGD
from singd_opt.blocks import KroneckerBlock

RESULTS = Path(__file__).parent / "results" / "capture_overhead.json"


class LanguageModel(nn.Module):
    """Embedding, position parameter, two causal encoder layers, layer norm, head."""

    def __init__(self, vocabulary: int = 96, dim: int = 128, length: int = 64) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocabulary, dim)
        self.position = nn.Parameter(torch.zeros(length, dim))
        layer = nn.TransformerEncoderLayer(dim, 4, 4 * dim, dropout=0.0, batch_first=True)
        self.blocks = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocabulary)

    def forward(self, tokens: Tensor) -> Tensor:
        """Logits of the next character at every position."""
        h = self.embed(tokens) + self.position[: tokens.shape[1]]
        mask = nn.Transformer.generate_square_subsequent_mask(tokens.shape[1])
        return self.head(self.norm(self.blocks(h, mask=mask, is_causal=True)))


def forward_backward(model: nn.Module, tokens: Tensor) -> float:
    start = time.perf_counter()
    logits = model(tokens[:, :-1])
    functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten()).backward()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    plain = LanguageModel()
    hooked = LanguageModel()
    hooked.load_state_dict(plain.state_dict())
    optimizer = SINGD(hooked, T=2)
    tokens = torch.randint(0, 96, (16, 65))
    times: dict[str, list[float]] = {
        "no hooks": [],
        "not recording": [],
        "capture only": [],
        "recording": [],
    }
    kronecker = [b for b in optimizer.blocks if isinstance(b, KroneckerBlock)]
    for _ in range(args.repeats + 2):
        plain.zero_grad()
        times["no hooks"].append(forward_backward(plain, tokens))
        for block in optimizer.blocks:
            block.recording = False
        optimizer._recording_any = False  # the flag the model's forward pre-hook reads
        hooked.zero_grad()
        times["not recording"].append(forward_backward(hooked, tokens))
        for block in optimizer.blocks:
            block.recording = True
        optimizer._recording_any = True
        for block in kronecker:
            block.record = lambda *args, **kwargs: None  # type: ignore[method-assign]
        hooked.zero_grad()
        times["capture only"].append(forward_backward(hooked, tokens))
        for block in kronecker:
            del block.record  # the class's method again
        hooked.zero_grad()
        times["recording"].append(forward_backward(hooked, tokens))
        for block in optimizer.blocks:
            block.drop_curvature()
    medians = {kind: 1e3 * statistics.median(values[2:]) for kind, values in times.items()}
    base = medians["no hooks"]
    for kind, value in medians.items():
        print(f"{kind:>14}: {value:7.1f} ms  ({value / base:.3f} x no hooks)")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(
        json.dumps({"ms": medians, "ratio": {k: v / base for k, v in medians.items()}}, indent=2)
        + "\n"
    )


if __name__ == "__main__":
    main()

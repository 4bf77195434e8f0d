"""Graphs, graph breaks and recompilations of a compiled model trained by SINGD or AdamW.

A GPT-2-style and a Llama-style model (Hugging Face ``transformers``, built from small
configurations, no downloads) are compiled with ``torch.compile`` after the optimizer
is created on the eager model, and trained for a few steps with ``T = 3``; an eager
twin (same weights, same optimizer, same batches) runs beside it. Dynamo's counters
give, per run:

- ``graphs``: the distinct graphs compiled (``counters["stats"]["unique_graphs"]``),
- ``breaks``: the graph breaks met while tracing (``counters["graph_break"]``),
- ``frames compiled``: the frames Dynamo compiled (``counters["frames"]["ok"]``: first
  compilations, recompilations after a guard failed, and the resume functions after
  graph breaks),
- ``recompiles after step 2``: frames compiled after the third step,
- ``loss gap``: the largest difference between the compiled and the eager losses.

The figures go to ``benchmarks/results/compile_graphs.json``::

    python3 benchmarks/compile_graphs.py [--backend eager|aot_eager|inductor]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch._dynamo.utils import counters

from singd_opt import SINGD

RESULTS = Path(__file__).parent / "results" / "compile_graphs.json"
VOCABULARY, WIDTH, STEPS, T = 64, 32, 8, 3


def build(kind: str) -> nn.Module:
    """A two-layer GPT-2-style or Llama-style causal language model."""
    import transformers

    if kind == "gpt2":
        config = transformers.GPT2Config(
            vocab_size=VOCABULARY, n_positions=32, n_embd=WIDTH, n_layer=2, n_head=2
        )
        return transformers.GPT2LMHeadModel(config)
    config = transformers.LlamaConfig(
        vocab_size=VOCABULARY,
        hidden_size=WIDTH,
        intermediate_size=2 * WIDTH,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=32,
    )
    return transformers.LlamaForCausalLM(config)


def make_optimizer(name: str, model: nn.Module) -> torch.optim.Optimizer:
    if name == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=1e-3)
    return SINGD(model, lr=1e-3, lr_cov=1e-2, damping=1e-3, T=T)


def run(kind: str, optimizer_name: str, backend: str) -> dict[str, Any]:
    torch.manual_seed(0)
    model = build(kind).train()
    twin = build(kind).train()
    twin.load_state_dict(model.state_dict())
    for m in (model, twin):
        m.config.attn_implementation = "eager"
        for module in m.modules():
            if hasattr(module, "dropout") and isinstance(module.dropout, float):
                module.dropout = 0.0
            if isinstance(module, nn.Dropout):
                module.p = 0.0
    optimizer = make_optimizer(optimizer_name, model)
    twin_optimizer = make_optimizer(optimizer_name, twin)
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(model, backend=backend)
    generator = torch.Generator().manual_seed(1)
    graphs, frames, losses, twin_losses = [], [], [], []
    for _ in range(STEPS):
        ids = torch.randint(0, VOCABULARY, (4, 16), generator=generator)
        for net, opt, out in ((compiled, optimizer, losses), (twin, twin_optimizer, twin_losses)):
            opt.zero_grad()
            loss = net(input_ids=ids, labels=ids).loss
            loss.backward()
            opt.step()
            out.append(loss.item())
        graphs.append(counters["stats"]["unique_graphs"])
        frames.append(counters["frames"]["ok"])
    torch._dynamo.reset()
    return {
        "graphs": graphs[-1],
        "breaks": sum(counters["graph_break"].values()),
        "frames compiled": frames[-1],
        "recompiles after step 2": frames[-1] - frames[2],
        "graphs per step": graphs,
        "frames per step": frames,
        "loss gap": max(abs(a - b) for a, b in zip(losses, twin_losses, strict=True)),
        "final loss": losses[-1],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backend", default="aot_eager")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    results: dict[str, Any] = {"backend": args.backend, "steps": STEPS, "T": T}
    for kind in ("gpt2", "llama"):
        for name in ("adamw", "singd"):
            results[f"{kind} {name}"] = figures = run(kind, name, args.backend)
            print(kind, name, {k: v for k, v in figures.items() if "per step" not in k})
    args.output.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""A compiled model does not recompile as the optimizer's step counter advances.

A recording step runs the model's forward pass eagerly (excluded from tracing), so the
graphs are those of the model alone: a model with no graph breaks of its own compiles
once, whatever ``T`` is, and the compiled model records what the eager one records.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch._dynamo.utils import counters
from torch.nn import functional

from singd_opt import SINGD


def test_twenty_steps_compile_at_most_twice() -> None:
    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.LayerNorm(16), nn.Linear(16, 3))
    eager = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.LayerNorm(16), nn.Linear(16, 3))
    eager.load_state_dict(model.state_dict())
    optimizer = SINGD(
        model, T=3, lr=0.05, lr_cov=0.05, defaults="reference", train_all_parameters=True
    )
    eager_optimizer = SINGD(
        eager, T=3, lr=0.05, lr_cov=0.05, defaults="reference", train_all_parameters=True
    )
    compiled = torch.compile(model, backend="eager")
    x, y = torch.randn(4, 8), torch.randint(0, 3, (4,))
    graphs = []
    for _ in range(20):
        for net, opt in ((compiled, optimizer), (eager, eager_optimizer)):
            opt.zero_grad()
            functional.cross_entropy(net(x), y).backward()
            opt.step()
        graphs.append(counters["stats"]["unique_graphs"])
    assert 1 <= graphs[-1] <= 2
    assert graphs[-1] == graphs[1]  # nothing new after a recording and a plain step
    for name, K in optimizer.Ks.items():  # the compiled model recorded like the eager one
        torch.testing.assert_close(K.to_dense(), eager_optimizer.Ks[name].to_dense())
    torch._dynamo.reset()


def test_the_forward_switch_is_removed_and_copies_do_not_record() -> None:
    model = nn.Sequential(nn.Linear(3, 2))
    optimizer = SINGD(model, T=1, elementwise_below=0)
    assert "forward" in model.__dict__  # the recording switch
    copied = copy.deepcopy(model)
    copied(torch.randn(4, 3)).sum().backward()  # the copy runs its own forward
    assert optimizer.H_Ks == {}
    model(torch.randn(4, 3)).sum().backward()
    assert set(optimizer.H_Ks) == {"0"}
    optimizer.remove_hooks()
    assert "forward" not in model.__dict__

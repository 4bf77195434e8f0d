"""A compiled model does not recompile as the optimizer's step counter advances.

Recording steps run eagerly (:mod:`singd_opt.compile_stance`), so the graphs are those
of the model alone: a model with no graph breaks of its own compiles once, whatever
``T`` is, and the compiled model records what the eager one records.
"""

from __future__ import annotations

import gc

import torch
from torch import nn
from torch._dynamo.utils import counters
from torch.nn import functional

from singd_opt import SINGD


def test_twenty_steps_compile_at_most_twice() -> None:
    gc.collect()  # optimizers of earlier tests release the eager stance
    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.LayerNorm(16), nn.Linear(16, 3))
    eager = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.LayerNorm(16), nn.Linear(16, 3))
    eager.load_state_dict(model.state_dict())
    optimizer = SINGD(model, T=3, lr=0.05, lr_cov=0.05)
    eager_optimizer = SINGD(eager, T=3, lr=0.05, lr_cov=0.05)
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


def _stance() -> str:
    from torch._dynamo import eval_frame

    return eval_frame._stance.stance


def test_the_eager_stance_covers_recording_steps_only() -> None:
    gc.collect()
    assert _stance() == "default"
    model = nn.Sequential(nn.Linear(3, 2))
    optimizer = SINGD(model, T=2)
    stances = []
    for _ in range(4):
        stances.append(_stance())  # the stance the coming step runs under
        optimizer.zero_grad()
        model(torch.randn(4, 3)).sum().backward()
        optimizer.step()
    assert stances == ["force_eager", "default", "force_eager", "default"]
    assert _stance() == "force_eager"  # step 4 records
    optimizer.remove_hooks()
    assert _stance() == "default"
    other = nn.Sequential(nn.Linear(3, 2))
    again = SINGD(other, T=1)
    assert _stance() == "force_eager"
    del again, other  # the model's hooks refer to the optimizer
    gc.collect()
    assert _stance() == "default"

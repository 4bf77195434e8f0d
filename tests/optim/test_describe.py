"""``SINGD.describe()``: one line per block with the bytes of its own state."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional

from singd_opt import SINGD
from singd_opt.summary import state_bytes, tensor_bytes


def test_views_of_one_flat_buffer_count_their_own_bytes() -> None:
    flat = torch.zeros(100, dtype=torch.float64)
    first, second = flat[:30], flat[30:]
    assert tensor_bytes([first], set()) == 30 * 8
    assert tensor_bytes([second], set()) == 70 * 8
    seen: set[tuple[int, int]] = set()
    assert tensor_bytes([first, first, second], seen) == 100 * 8
    assert tensor_bytes([first], seen) == 0  # counted before
    assert state_bytes([first]) == 100 * 8  # the whole storage


def test_each_block_line_has_the_bytes_of_its_state_and_momenta() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.LayerNorm(4), nn.Linear(4, 3))
    optimizer = SINGD(model, T=1, elementwise_below=0)
    for _ in range(2):
        optimizer.zero_grad()
        functional.mse_loss(model(torch.randn(6, 5)), torch.randn(6, 3)).backward()
        optimizer.step()
    lines = optimizer.describe().splitlines()
    by_name = {line.split()[0]: int(line.split()[-1].replace(",", "")) for line in lines[2:]}
    for block in optimizer.blocks:
        own = block.state_tensors() + [
            optimizer.state[rows.param]["momentum_buffer"] for rows in block.params
        ]
        assert by_name[block.name] == sum(t.numel() * t.element_size() for t in own)
    assert by_name["total"] == sum(by_name[b.name] for b in optimizer.blocks)

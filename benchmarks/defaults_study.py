r"""Which SINGD defaults beat AdamW on small real architectures: a 40-step study.

Each model is built in-process (Hugging Face ``transformers`` models from config
objects, nothing downloaded; a ViT and a ResNet written here) and trained for
:data:`STEPS` steps from the same initialisation on the same batches, on one thread,
by AdamW and by SINGD candidates, each with every learning rate of :data:`LR_GRID`.
The score is the training loss averaged over the last 5 steps (a run that produced a
non-finite loss scores ``inf``); each optimizer reports its best learning rate.

Models and data (all bundled):

- ``gpt2``: ``GPT2LMHeadModel`` (2 layers, width 64, 4 heads) on the characters of the
  demo language model's corpus (:mod:`singd_opt_demo.lm_data`), windows of 64,
  batches of 16. Its ``Conv1D`` weights are Kronecker blocks (element-wise in the rounds before 8).
- ``llama``: ``LlamaForCausalLM`` with tied embeddings (2 layers, width 64, 4 heads,
  2 key-value heads, MLP 128), same data.
- ``bert``: ``BertForSequenceClassification`` (2 layers, width 64) classifying the
  digits (:mod:`singd_opt_demo.data`) read as sequences of their 8 pixel rows, each
  row embedded by a linear map (``inputs_embeds``), batches of 32.
- ``vit``: a ViT (4x4 patches of the digits upsampled to 16x16, width 64, 2 layers of
  ``nn.TransformerEncoderLayer``, class token), batches of 32.
- ``resnet``: a ResNet (3 stages of 2 basic blocks, 16/32/64 channels, batch norm) on
  the digits upsampled to 16x16, batches of 32.

Usage::

    python benchmarks/defaults_study.py                       # every model and candidate
    python benchmarks/defaults_study.py --models bert vit --candidates adamw reference

Results go to ``benchmarks/results/defaults_study.json``: per model, candidate and
learning rate the final loss, the optimizer's state bytes and AdamW's (twice the
parameter bytes), and the seconds of training.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

from singd_opt import SINGD

STEPS = 40
LR_GRID = (3e-4, 1e-3, 3e-3)
SEED = 0
RESULTS = Path(__file__).parent / "results" / "defaults_study.json"

# ----------------------------------------------------------------------------- data


def _lm_batches(seed: int = SEED, batch_size: int = 16) -> list[tuple[Tensor, Tensor]]:
    from singd_opt_demo.lm_data import load_split

    split = load_split(validation=True)
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(split.x_train), generator=generator)[: STEPS * batch_size]
    return [(split.x_train[idx], split.y_train[idx]) for idx in order.view(STEPS, batch_size)]


def _digits(size: int) -> tuple[Tensor, Tensor]:
    from singd_opt_demo.data import load_split

    split = load_split(validation=True)
    x = split.x_train
    if size != 8:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x, split.y_train


def _digit_batches(
    seed: int = SEED, size: int = 16, batch_size: int = 32
) -> list[tuple[Tensor, Tensor]]:
    x, y = _digits(size)
    generator = torch.Generator().manual_seed(seed)
    order = torch.randint(len(x), (STEPS, batch_size), generator=generator)
    return [(x[idx], y[idx]) for idx in order]


def _row_sequence_batches(seed: int = SEED, batch_size: int = 32) -> list[tuple[Tensor, Tensor]]:
    x, y = _digits(8)
    rows = x.squeeze(1)  # (N, 8 rows, 8 pixels)
    generator = torch.Generator().manual_seed(seed)
    order = torch.randint(len(rows), (STEPS, batch_size), generator=generator)
    return [(rows[idx], y[idx]) for idx in order]


# --------------------------------------------------------------------------- models


class ViT(nn.Module):
    """A small vision transformer: linear patch embedding, class token, pre-norm layers."""

    def __init__(self, image: int = 16, patch: int = 4, width: int = 64, layers: int = 2):
        super().__init__()
        self.patch = patch
        count = (image // patch) ** 2
        self.embed = nn.Linear(patch * patch, width)
        self.cls = nn.Parameter(torch.zeros(1, 1, width))
        self.position = nn.Parameter(0.02 * torch.randn(1, count + 1, width))
        layer = nn.TransformerEncoderLayer(
            width, 4, 2 * width, dropout=0.0, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, 10)

    def forward(self, x: Tensor) -> Tensor:
        """Return the logits ``(N, 10)`` of images ``(N, 1, 16, 16)``."""
        patches = F.unfold(x, self.patch, stride=self.patch).mT  # (N, count, p*p)
        hidden = self.embed(patches)
        hidden = torch.cat([self.cls.expand(len(x), -1, -1), hidden], dim=1) + self.position
        hidden = self.encoder(hidden)
        return self.head(self.norm(hidden[:, 0]))


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and an identity or 1x1 shortcut."""

    def __init__(self, inputs: int, outputs: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(inputs, outputs, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(outputs)
        self.conv2 = nn.Conv2d(outputs, outputs, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(outputs)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or inputs != outputs:
            self.shortcut = nn.Sequential(
                nn.Conv2d(inputs, outputs, 1, stride, bias=False), nn.BatchNorm2d(outputs)
            )

    def forward(self, x: Tensor) -> Tensor:
        """Return the block's output."""
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet(nn.Module):
    """A ResNet for 16x16 images: stem, 3 stages of 2 basic blocks, pooling, linear head."""

    def __init__(self, widths: tuple[int, ...] = (16, 32, 64)):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU()
        )
        blocks: list[nn.Module] = []
        inputs = widths[0]
        for index, width in enumerate(widths):
            stride = 1 if index == 0 else 2
            blocks += [BasicBlock(inputs, width, stride), BasicBlock(width, width, 1)]
            inputs = width
        self.stages = nn.Sequential(*blocks)
        self.head = nn.Linear(inputs, 10)

    def forward(self, x: Tensor) -> Tensor:
        """Return the logits ``(N, 10)`` of images ``(N, 1, 16, 16)``."""
        hidden = self.stages(self.stem(x))
        return self.head(hidden.mean(dim=(2, 3)))


def _gpt2() -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    from singd_opt_demo.lm_data import CONTEXT, VOCAB_SIZE

    config = GPT2Config(
        vocab_size=VOCAB_SIZE,
        n_positions=CONTEXT,
        n_embd=64,
        n_layer=2,
        n_head=4,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    return GPT2LMHeadModel(config)


def _llama() -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    from singd_opt_demo.lm_data import CONTEXT, VOCAB_SIZE

    config = LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=CONTEXT,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config)


class RowBert(nn.Module):
    """BERT sequence classification of the digits' 8 pixel rows, each embedded linearly."""

    def __init__(self) -> None:
        super().__init__()
        from transformers import BertConfig, BertForSequenceClassification

        config = BertConfig(
            vocab_size=2,
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=128,
            max_position_embeddings=8,
            num_labels=10,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )
        self.rows = nn.Linear(8, 64)
        self.bert = BertForSequenceClassification(config)

    def forward(self, rows: Tensor) -> Tensor:
        """Return the logits ``(N, 10)`` of row sequences ``(N, 8, 8)``."""
        return self.bert(inputs_embeds=self.rows(rows)).logits


def _lm_loss(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    logits = model(input_ids=x).logits
    return F.cross_entropy(logits.flatten(0, 1), y.flatten())


def _image_loss(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(model(x), y)


@dataclass(frozen=True)
class Workload:
    """A model factory, its batches and its loss."""

    build: Callable[[], nn.Module]
    batches: Callable[[int], list[tuple[Tensor, Tensor]]]  # of a seed
    loss: Callable[[nn.Module, Tensor, Tensor], Tensor]
    loss_average: str  # the loss's average, for SINGD candidates that are told it


WORKLOADS: dict[str, Workload] = {
    "gpt2": Workload(_gpt2, _lm_batches, _lm_loss, "batch+sequence"),
    "llama": Workload(_llama, _lm_batches, _lm_loss, "batch+sequence"),
    "bert": Workload(RowBert, _row_sequence_batches, _image_loss, "batch"),
    "vit": Workload(ViT, _digit_batches, _image_loss, "batch"),
    "resnet": Workload(ResNet, _digit_batches, _image_loss, "batch"),
}

# ----------------------------------------------------------------------- optimizers

#: SINGD candidates: keyword arguments besides ``lr``. ``"reference"`` is the
#: reference's defaults; the others are measured against it and against AdamW.
_REF: dict[str, Any] = {"defaults": "reference", "train_all_parameters": True}
_ADA: dict[str, Any] = {**_REF, "graft": "adafactor", "momentum_dampening": True}
#: The momentum of the sets from round 12 to 16, the per-side budget of "auto"
#: structures before round 16, the Kronecker blocks for small maps before round 15,
#: their factor step bound before round 14, their factor learning rate before round 13,
#: and the momentum before round 12: the variants of the defaults measured before them
#: keep these, so that each stays the setting its stored results measured (later keys
#: win).
_MOMENTUM_0_8: dict[str, Any] = {"momentum": 0.8}
_BUDGET_0_25: dict[str, Any] = {**_MOMENTUM_0_8, "auto_budget": 0.25}
_KRONECKER_EVERYWHERE: dict[str, Any] = {**_BUDGET_0_25, "elementwise_below": 0}
_ENTRY_BOUND: dict[str, Any] = {**_KRONECKER_EVERYWHERE, "normalize_lr_cov": True}
_LR_COV_0_01: dict[str, Any] = {**_ENTRY_BOUND, "lr_cov": 0.01}
_MOMENTUM_0_9: dict[str, Any] = {**_LR_COV_0_01, "momentum": 0.9}
_REL: dict[str, Any] = {**_ADA, "relative_damping": 1e-2, "damping": 0.0}
_WARM: dict[str, Any] = {**_REL, "warm_start": True}
_SUM: dict[str, Any] = {**_WARM, "momentum_dampening": False}
_AUTO = {"structures": ("auto", "auto")}
CANDIDATES: dict[str, dict[str, Any]] = {
    "adamw": {},
    "reference": _REF,
    # round 1: one mechanism at a time
    "graft_rms": {**_REF, "graft": "rms", "momentum_dampening": True},
    "graft_ada": _ADA,
    "graft_ada_nodampening": {**_ADA, "momentum_dampening": False},
    "rel1e-3": {**_REL, "relative_damping": 1e-3},
    "rel1e-2": _REL,
    "rel1e-1": {**_REL, "relative_damping": 1e-1},
    "rel1e-2_warm": _WARM,
    "rel1e-2_warm_T1": {**_WARM, "T": 1},
    "rel1e-2_warm_lrcov0.1": {**_WARM, "lr_cov": 0.1},
    "rel1e-2_warm_auto": {**_WARM, **_AUTO},
    "rel1e-2_warm_rms_auto": {**_WARM, "graft": "rms", **_AUTO},
    # round 2: damping, T and the momentum's sum or average with the warm start
    "rel1e-1_warm": {**_WARM, "relative_damping": 0.1},
    "rel1_warm": {**_WARM, "relative_damping": 1.0},
    "rel1e-1_warm_T1": {**_WARM, "relative_damping": 0.1, "T": 1},
    "sum_rel1e-2_warm": _SUM,
    "sum_rel1e-1_warm": {**_SUM, "relative_damping": 0.1},
    "sum_rel1e-1_warm_T1": {**_SUM, "relative_damping": 0.1, "T": 1},
    "sum_rel1e-1_warm_auto": {**_SUM, "relative_damping": 0.1, **_AUTO},
    "sum_rel1e-1_warm_auto_alpha0": {**_SUM, "relative_damping": 0.1, **_AUTO, "alpha1": 0.0},
    # round 3: absolute damping (large curvature preconditioned, small left alone)
    "abs_warm_T1": {**_ADA, "warm_start": True, "T": 1},
    "abs_warm_T1_sum": {**_ADA, "warm_start": True, "T": 1, "momentum_dampening": False},
    "abs_warm_T10": {**_ADA, "warm_start": True},
    "abs_warm_T1_auto": {**_ADA, "warm_start": True, "T": 1, **_AUTO},
    "rel10_warm_T1": {**_WARM, "relative_damping": 10.0, "T": 1},
    # round 4: state within AdamW's (auto structures, no Riemannian momentum)
    "A_sum_rel1e-1_warm_T1_auto0": {
        **_SUM,
        "relative_damping": 0.1,
        "T": 1,
        **_AUTO,
        "alpha1": 0.0,
    },
    "B_sum_abs_warm_T1_auto0": {
        **_SUM,
        "relative_damping": 0.0,
        "damping": 1e-3,
        "T": 1,
        **_AUTO,
        "alpha1": 0.0,
    },
    "C_avg_rel1e-1_warm_T1_auto0": {
        **_WARM,
        "relative_damping": 0.1,
        "T": 1,
        **_AUTO,
        "alpha1": 0.0,
    },
    "D_sum_rel1_warm_T1_auto0": {**_SUM, "relative_damping": 1.0, "T": 1, **_AUTO, "alpha1": 0.0},
    "E_sum_rel1e-1_warm_auto0_f045": {
        **_SUM,
        "relative_damping": 0.1,
        **_AUTO,
        "alpha1": 0.0,
        "auto_budget": 0.45,
    },
    # round 5: absolute floor plus relative damping
    "F_sum_abs_rel1e-1_warm_T1_auto0": {
        **_SUM,
        "damping": 1e-3,
        "relative_damping": 0.1,
        "T": 1,
        **_AUTO,
        "alpha1": 0.0,
    },
    "G_sum_abs_rel1e-2_warm_T1_auto0": {
        **_SUM,
        "damping": 1e-3,
        "relative_damping": 0.01,
        "T": 1,
        **_AUTO,
        "alpha1": 0.0,
    },
    "H_avg_abs_rel1e-1_warm_T1_auto0": {
        **_WARM,
        "damping": 1e-3,
        "relative_damping": 0.1,
        "T": 1,
        **_AUTO,
        "alpha1": 0.0,
    },
    # round 6: the best of round 4 with the stateless grafting rule
    "A_rms": {**_SUM, "relative_damping": 0.1, "T": 1, **_AUTO, "alpha1": 0.0, "graft": "rms"},
    # round 7: the best of round 4 with a small absolute floor (bounded factors)
    "A_floor1e-8": {
        **_SUM,
        "damping": 1e-8,
        "relative_damping": 0.1,
        "T": 1,
        **_AUTO,
        "alpha1": 0.0,
    },
    "A_floor1e-6": {
        **_SUM,
        "damping": 1e-6,
        "relative_damping": 0.1,
        "T": 1,
        **_AUTO,
        "alpha1": 0.0,
    },
    # the cause of the BERT miss: its self-attention projections left at the identity
    "defaults_attention_identity": {**_MOMENTUM_0_9, "identity_for": ".attention.self."},
    "defaults": {},
    # round 8: the Riemannian step bounded (BERT's attention curvature grows by orders
    # of magnitude after the warm start, and the unbounded step diverged)
    "defaults_normalized": {**_MOMENTUM_0_9, "normalize_lr_cov": True, "momentum_dampening": False},
    # the set of round 7 (summed momentum, unbounded covariance step), for comparison
    "round7_defaults": {**_MOMENTUM_0_9, "normalize_lr_cov": False, "momentum_dampening": False},
    # round 9: a tied embedding as one Kronecker block (the defaults train it element-wise)
    "defaults_tied_kronecker": {**_MOMENTUM_0_9, "tied_embeddings": "kronecker"},
    # the momentum summed as in the reference (best at a tenth of AdamW's rate)
    "defaults_summed": {**_MOMENTUM_0_9, "momentum_dampening": False},
    # round 10: a packed projection (GPT-2's c_attn) as one Kronecker block (the
    # defaults give each projection its own)
    "defaults_packed_whole": {**_MOMENTUM_0_9, "packed_projections": "whole"},
    # round 11: a larger memory budget for "auto" structures (blocks of 32 for 64-wide
    # layers, about AdamW's state) and one whose blocks do not divide the heads (28)
    "defaults_budget0.5": {**_MOMENTUM_0_9, "auto_budget": 0.5},
    "defaults_budget0.45": {**_MOMENTUM_0_9, "auto_budget": 0.45},
    # dense factors: how much of SOAP's lead on BERT its memory buys
    "defaults_dense": {**_MOMENTUM_0_9, "structures": ("dense", "dense")},
    # round 12: the momentum of the previous set (the defaults now average over fewer
    # steps, momentum 0.8)
    "defaults_momentum0.9": dict(_MOMENTUM_0_9),
    "defaults_momentum0.7": {**_LR_COV_0_01, "momentum": 0.7},
    "defaults_momentum0.6": {**_LR_COV_0_01, "momentum": 0.6},
    # round 13: the factor learning rate (the defaults now take 0.1, the factors follow
    # the curvature over about ten steps instead of a hundred)
    "defaults_lr_cov0.01": dict(_LR_COV_0_01),
    "defaults_lr_cov0.03": {**_ENTRY_BOUND, "lr_cov": 0.03},
    "defaults_lr_cov0.3": {**_ENTRY_BOUND, "lr_cov": 0.3},
    # round 14: the factor step bounded by its spectrum as well (normalize_lr_cov=
    # "spectral"; a wide block's step no longer reverses a direction); the set of round 13
    "defaults_entry_bound": dict(_ENTRY_BOUND),
    # round 15: the weights of small maps trained element-wise (a Kronecker block's step
    # is a hundred or more operations whatever the layer's size); the defaults take 1024,
    # the set of round 14 gave every map a Kronecker block
    "defaults_elementwise_below0": dict(_KRONECKER_EVERYWHERE),
    "defaults_elementwise_below4096": {**_BUDGET_0_25, "elementwise_below": 4096},
    # round 16: each block's factors take what keeps its whole state within AdamW's, the
    # narrower side first (auto_budget="adamw"); the set of round 15 gave each side a
    # quarter of the weight's numbers
    "defaults_budget0.25": dict(_BUDGET_0_25),
    # round 17: a shorter momentum again (the defaults now take 0.7), with the factor
    # steps and budget of round 16; the set of round 16 kept 0.8
    "defaults_momentum0.8": dict(_MOMENTUM_0_8),
}


#: The peers by candidate name: heavyball's optimizers with their defaults (the optional
#: ``bench`` extra; without ``torch.compile``), Muon with AdamW for the non-matrix
#: parameters.
PEERS = {"soap": "SOAP", "muon": "MuonAdamW", "psgd_kron": "PSGDKron"}


def make_optimizer(name: str, model: nn.Module, lr: float) -> torch.optim.Optimizer:
    """Return AdamW (PyTorch's defaults), a peer (:data:`PEERS`) or the SINGD candidate."""
    if name == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=lr)
    if name in PEERS:
        from time_to_target import import_heavyball

        return getattr(import_heavyball(), PEERS[name])(model.parameters(), lr=lr)
    arguments = dict(CANDIDATES[name])
    fixed = arguments.pop("identity_for", None)
    if fixed is not None:  # parameters whose name contains it keep K = C = I
        params = dict(model.named_parameters())
        arguments["params"] = [
            {"params": [p for n, p in params.items() if fixed not in n]},
            {
                "params": [p for n, p in params.items() if fixed in n],
                "lr_cov": 0.0,
                "warm_start": False,
            },
        ]
    return SINGD(model, lr=lr, **arguments)


def tensor_bytes(value: Any) -> int:
    """Bytes of the distinct storages of the tensors in a nested state (dicts, lists)."""
    seen: set[int] = set()

    def walk(item: Any) -> int:
        if isinstance(item, Tensor):
            storage = item.untyped_storage()
            if storage.data_ptr() in seen:
                return 0
            seen.add(storage.data_ptr())
            return storage.nbytes()
        if isinstance(item, dict) or hasattr(item, "values"):
            return sum(walk(v) for v in item.values())
        if isinstance(item, list | tuple):
            return sum(walk(v) for v in item)
        return 0

    return walk(value)


def adamw_state_bytes(model: nn.Module) -> int:
    """AdamW's state: two tensors the size of every trainable parameter."""
    return 2 * sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)


def run(workload: Workload, candidate: str, lr: float, seed: int = SEED) -> dict[str, Any]:
    """Train 40 steps from the seeded initialisation; return the losses and costs."""
    torch.manual_seed(seed)
    model = workload.build()
    model.train()
    batches = workload.batches(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optimizer = make_optimizer(candidate, model, lr)
        losses: list[float] = []
        start = time.perf_counter()
        for x, y in batches:
            optimizer.zero_grad()
            loss = workload.loss(model, x, y)
            loss.backward()
            optimizer.step()
            losses.append(float(loss))
        seconds = time.perf_counter() - start
    if isinstance(optimizer, SINGD):
        state = optimizer.state_bytes()
    elif candidate in PEERS:
        state = tensor_bytes(optimizer.state)
    else:
        state = adamw_state_bytes(model)
    final = sum(losses[-5:]) / 5
    return {
        "lr": lr,
        "final_loss": final if math.isfinite(final) else math.inf,
        "losses": [round(loss, 5) for loss in losses],
        "state_bytes": state,
        "adamw_state_bytes": adamw_state_bytes(model),
        "seconds": seconds,
        "skipped_steps": getattr(optimizer, "skipped_steps", 0),
    }


def time_factor_updates(dims: tuple[int, ...] = (64, 128, 256, 512, 1024)) -> dict[str, Any]:
    """Seconds of one preconditioner update and one natural gradient of a ``d x d`` layer.

    Dense factors against block-diagonal ones with blocks of 64, and an AdamW step of
    the same weight, median of 3 (one thread), for the size above which ``"auto"``
    stops choosing dense factors.
    """
    from singd_opt.preconditioner import UpdateConfig, natural_gradient, update_preconditioner
    from structmat import get_structure

    config = UpdateConfig(1e-3, 0.5, False, False, 0.01)
    timings: dict[str, Any] = {}
    for dim in dims:
        grad = torch.randn(dim, dim)
        x = torch.randn(4 * dim, dim)
        row: dict[str, float] = {}
        for structure in ("dense", "block64diagonal"):
            cls = get_structure(structure)
            K, C = cls.eye(dim), cls.eye(dim)
            m_K, m_C = cls.zeros(dim), cls.zeros(dim)
            samples = []
            for _ in range(3):
                H_K, H_C = K.from_inner(x.T), C.from_inner(x.T)
                start = time.perf_counter()
                update_preconditioner(K, C, m_K, m_C, H_K, H_C, config)
                natural_gradient(K, C, grad)
                samples.append(time.perf_counter() - start)
            row[structure] = sorted(samples)[1]
        param = nn.Parameter(torch.randn(dim, dim))
        adamw = torch.optim.AdamW([param])
        samples = []
        for _ in range(3):
            param.grad = grad
            start = time.perf_counter()
            adamw.step()
            samples.append(time.perf_counter() - start)
        row["adamw"] = sorted(samples)[1]
        timings[str(dim)] = row
        print(f"d={dim:5d}  " + "  ".join(f"{k} {v * 1e3:.2f} ms" for k, v in row.items()))
    return timings


def table(results: dict[str, Any], candidates: list[str]) -> str:
    """Return an RST list-table: best loss (its learning rate) per model and candidate."""
    models = [m for m in WORKLOADS if m in results]
    lines = [".. list-table::", "   :header-rows: 1", "", "   * - optimizer"]
    lines += [f"     - {m}" for m in models]
    for candidate in candidates:
        lines.append(f"   * - {candidate}")
        for m in models:
            entry = results[m].get(candidate)
            if entry is None:
                lines.append("     - ")
                continue
            best = min(entry["runs"], key=lambda r: r["final_loss"])
            ratio = (
                best["state_bytes"] / best["adamw_state_bytes"]
                if "state_bytes" in best
                else best["state_over_adamw"]
            )
            lines.append(f"     - {best['final_loss']:.3f} ({best['lr']:g}; state {ratio:.2f})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(WORKLOADS))
    parser.add_argument("--candidates", nargs="+", default=list(CANDIDATES))
    parser.add_argument("--lrs", nargs="+", type=float, default=list(LR_GRID))
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--timing", action="store_true", help="time factor updates only")
    parser.add_argument("--table", action="store_true", help="print the stored results")
    parser.add_argument(
        "--seeds",
        nargs="+",
        type=int,
        default=None,
        help="re-run each candidate at its stored best learning rate with these seeds "
        "(initialisation and batches) and store the final losses",
    )
    args = parser.parse_args(argv)
    unknown = sorted(set(args.candidates) - set(CANDIDATES) - set(PEERS))
    if unknown:
        parser.error(f"unknown candidates {unknown}; choose from {[*CANDIDATES, *PEERS]}")
    torch.set_num_threads(1)
    results: dict[str, Any] = {}
    timings: dict[str, Any] = {}
    if args.output.exists():
        stored = json.loads(args.output.read_text())
        results, timings = stored.get("results", {}), stored.get("factor_update_seconds", {})
    if args.table:
        print(table(results, args.candidates))
        return
    if args.timing:
        timings = time_factor_updates()
        args.models = []
    for model_name in args.models if args.seeds else []:
        workload = WORKLOADS[model_name]
        for candidate in args.candidates:
            entry = results[model_name][candidate]
            finals = {
                str(seed): run(workload, candidate, entry["best_lr"], seed)["final_loss"]
                for seed in args.seeds
            }
            entry["seed_finals"] = {**entry.get("seed_finals", {}), **finals}
            print(f"{model_name:7s} {candidate:28s} lr {entry['best_lr']:g} seeds {finals}")
    for model_name in args.models if not args.seeds else []:
        workload = WORKLOADS[model_name]
        for candidate in args.candidates:
            runs = [run(workload, candidate, lr) for lr in args.lrs]
            best = min(runs, key=lambda r: r["final_loss"])
            results.setdefault(model_name, {})[candidate] = {
                "config": CANDIDATES.get(candidate, {"heavyball": PEERS.get(candidate)}),
                "runs": runs,
                "best_lr": best["lr"],
                "best_final_loss": best["final_loss"],
            }
            row = "  ".join(f"{r['lr']:g}:{r['final_loss']:.4f}" for r in runs)
            ratio = best["state_bytes"] / best["adamw_state_bytes"]
            print(
                f"{model_name:7s} {candidate:28s} best {best['final_loss']:.4f}  [{row}]  "
                f"state/AdamW {ratio:.2f}  {best['seconds']:.1f}s",
                flush=True,
            )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(
        json.dumps(
            {
                "protocol": {
                    "steps": STEPS,
                    "lr_grid": list(LR_GRID),
                    "score": "mean training loss of the last 5 steps",
                    "threads": 1,
                    "seed": SEED,
                },
                "machine": {"python": platform.python_version(), "torch": torch.__version__},
                "candidates": {k: v for k, v in CANDIDATES.items()},
                "results": results,
                "factor_update_seconds": timings,
            },
            default=str,
        )
    )


if __name__ == "__main__":
    main()

"""Preconditioner blocks: the units of state and work the optimizer loops over."""

from singd_opt.blocks.base import PreconditionerBlock, Proposal, StepContext
from singd_opt.blocks.elementwise import ElementwiseBlock
from singd_opt.blocks.kronecker import KroneckerBlock

__all__ = ["ElementwiseBlock", "KroneckerBlock", "PreconditionerBlock", "Proposal", "StepContext"]

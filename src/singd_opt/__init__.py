"""singd_opt: the SINGD optimizer (structured inverse-free natural gradient descent).

``from singd_opt import SINGD`` is a drop-in replacement for
``from singd.optim.optimizer import SINGD``; the Kronecker factors are structured
matrices from :mod:`structmat`. :func:`singd_opt.packed.declare_packed` declares a map
whose output packs several projections.
"""

from singd_opt.optimizer import SINGD

__all__ = ["SINGD"]

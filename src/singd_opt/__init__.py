"""singd_opt: the SINGD optimizer (structured inverse-free natural gradient descent).

``from singd_opt import SINGD`` is a drop-in replacement for
``from singd.optim.optimizer import SINGD``; the Kronecker factors are structured
matrices from :mod:`structmat`. :func:`declare_packed` declares a map whose output
packs several projections (:mod:`singd_opt.packed`).
"""

from singd_opt.optimizer import SINGD
from singd_opt.packed import declare_packed

__all__ = ["SINGD", "declare_packed"]

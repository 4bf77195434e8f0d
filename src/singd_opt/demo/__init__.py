"""The training demo behind the ``singd-opt`` command.

Small modules: :mod:`~singd_opt.demo.data` (the fixed split of scikit-learn's bundled
8x8 digits), :mod:`~singd_opt.demo.models` (the CNN) and
:mod:`~singd_opt.demo.training` (optimizers, the training loop and its metrics).
Importing this package needs only ``torch``; the data loader imports scikit-learn
when it is called.
"""

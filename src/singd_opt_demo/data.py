"""Scikit-learn's bundled 8x8 handwritten digits, split once and for all.

The 1797 images ship inside scikit-learn (:func:`sklearn.datasets.load_digits`), so
nothing is downloaded. :func:`load_split` returns a fixed, stratified train/test
split; :func:`load_split` with ``validation=True`` carves a validation split out of
the *training* part (the test part is never looked at), which is what the
hyper-parameter search in ``benchmarks/demo_tuning.py`` uses.
"""

from __future__ import annotations

import torch
from torch import Tensor

from singd_opt_demo.split import Split

#: Seed of the train/test split; fixed so every run sees the same split.
SPLIT_SEED = 0
#: Fraction of the images held out as the test split.
TEST_FRACTION = 0.2
#: Fraction of the training split held out as validation split (for tuning only).
VALIDATION_FRACTION = 0.2
#: Number of classes.
NUM_CLASSES = 10


def load_split(validation: bool = False) -> Split:
    """Load the digits and split them with the fixed seed :data:`SPLIT_SEED`.

    The split is stratified by class: 80% train, 20% test. Pixels (0 to 16) are
    standardised with the mean and standard deviation of the training pixels.

    Args:
        validation: If ``True``, split the *training* part once more (80/20,
            stratified, same seed) and return that training part and the validation
            part as evaluation split. The test split is then not returned at all.

    Returns:
        The split, as tensors on the CPU: images ``(N, 1, 8, 8)`` (float32,
        standardised) and labels ``(N,)`` (int64), with one evaluation set named
        ``"test"`` (or ``"validation"``).

    Raises:
        ImportError: If scikit-learn is not installed.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images, labels = digits.images, digits.target
    x_train, x_eval, y_train, y_eval = train_test_split(
        images, labels, test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=labels
    )
    if validation:
        x_train, x_eval, y_train, y_eval = train_test_split(
            x_train,
            y_train,
            test_size=VALIDATION_FRACTION,
            random_state=SPLIT_SEED,
            stratify=y_train,
        )
    mean, std = float(x_train.mean()), float(x_train.std())

    def images_to_tensor(x: object) -> Tensor:
        return ((torch.as_tensor(x, dtype=torch.float32) - mean) / std).unsqueeze(1)

    def labels_to_tensor(y: object) -> Tensor:
        return torch.as_tensor(y, dtype=torch.int64)

    eval_name = "validation" if validation else "test"
    return Split(
        images_to_tensor(x_train),
        labels_to_tensor(y_train),
        {eval_name: (images_to_tensor(x_eval), labels_to_tensor(y_eval))},
    )

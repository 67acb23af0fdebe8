"""scikit-learn's bundled handwritten digits: a dataset that needs no download.

1,797 grey 8x8 images with pixel values 0..16 (UCI "Optical Recognition of Handwritten
Digits", as shipped by ``sklearn.datasets.load_digits``). The split is fixed and documented so
that every QBench run and the zoo's training script see the same images:

* ``train_test_split(test_size=0.3, stratify=labels, random_state=0)`` gives
  1,257 train and 540 test images, each class in the same proportion in both.
* Each image becomes a PIL ``L`` image with ``round(value * 255 / 16)`` (0..16 -> 0..255), so
  digits go through the same transform path as any image file (a model's transform turns it
  into a float tensor; the zoo's transform gives values in [0, 1]).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image
from qbench.types import ModelBundle

from .batches import COMMON_PROPERTIES, Batches, make_batches

#: The documented split (module docstring); changing it invalidates the zoo's weights.
TEST_FRACTION = 0.3
SPLIT_SEED = 0
SPLITS = ("train", "test", "all")


@lru_cache(maxsize=1)
def load_split() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{"train": (images uint8 [N, 8, 8], labels int64 [N]), "test": ..., "all": ...}``."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    # 0..16 -> 0..255 rounded half-to-even (numpy's rint), exactly representable in uint8.
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)
    labels = digits.target.astype(np.int64)
    index = np.arange(len(labels))
    train_index, test_index = train_test_split(
        index, test_size=TEST_FRACTION, stratify=labels, random_state=SPLIT_SEED
    )
    return {
        "train": (images[train_index], labels[train_index]),
        "test": (images[test_index], labels[test_index]),
        "all": (images, labels),
    }


class DigitsDataset:
    """The ``digits`` dataset (no ``root``: the data ships with scikit-learn)."""

    name = "digits"
    options_schema: dict[str, Any] = {
        "type": "object",
        "properties": {
            "split": {"enum": list(SPLITS), "default": "test"},
            **COMMON_PROPERTIES,
        },
    }

    def build(self, options: Mapping[str, Any], *, bundle: ModelBundle) -> Batches:
        from qbench.errors import QBenchError

        split = options.get("split", "test")
        if split not in SPLITS:
            raise QBenchError(
                f"dataset.split: digits has no split {split!r}; allowed: {', '.join(SPLITS)}"
            )
        images, labels = load_split()[split]
        samples = [(i, int(label)) for i, label in enumerate(labels)]

        def opener(i: int) -> Image.Image:
            return Image.fromarray(images[i])  # uint8 [8, 8] -> mode "L"

        info = {"dataset": "digits", "split": split, "num_classes": 10}
        return make_batches("digits", samples, opener, options, bundle, info)

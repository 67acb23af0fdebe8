"""scikit-learn's bundled handwritten digits: a dataset that needs no download.

1,797 grey 8x8 images with pixel values 0..16 (UCI "Optical Recognition of Handwritten
Digits", the data behind ``sklearn.datasets.load_digits``). The file is read straight from the
installed scikit-learn (``sklearn/datasets/data/digits.csv.gz``, the file ``load_digits``
reads): importing ``sklearn.datasets`` costs seconds that would dominate the demo run.

The split is fixed and documented, so every QBench run and the zoo's training script see the
same images. It is stratified with seed 0 and 30 % test:

* ``rng = numpy.random.default_rng(0)``; for each digit 0..9 in turn, that digit's image
  indices (ascending) are permuted with ``rng`` and the first ``round(0.3 * count)`` go to
  test, the rest to train (1,258 train and 539 test images);
* each split is then permuted once more with ``rng`` (train first), so that ``limit: N``
  takes a mix of all digits.

Each image becomes a PIL ``L`` image with ``round(value * 255 / 16)`` (0..16 -> 0..255), so
digits go through the same transform path as any image file (the zoo's transform gives
values in [0, 1]).
"""

from __future__ import annotations

import gzip
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qbench.types import ModelBundle

from .options import COMMON_PROPERTIES

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    from PIL import Image

    from .batches import Batches

#: The documented split (module docstring); changing it invalidates the zoo's weights.
TEST_FRACTION = 0.3
SPLIT_SEED = 0
SPLITS = ("train", "test", "all")


_DATA_FILE = "sklearn/datasets/data/digits.csv.gz"


def _read_digits() -> tuple[np.ndarray, np.ndarray]:
    """(pixels float [1797, 64] in 0..16, labels int64 [1797]) from scikit-learn's data file."""
    from importlib import metadata

    import numpy as np

    try:
        path = Path(str(metadata.distribution("scikit-learn").locate_file(_DATA_FILE)))
    except metadata.PackageNotFoundError:  # pragma: no cover - scikit-learn is a dependency
        path = None
    if path is not None and path.is_file():
        with gzip.open(path, "rt") as handle:
            table = np.loadtxt(handle, delimiter=",")
        return table[:, :-1], table[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits  # the same file, found by scikit-learn itself

    digits = load_digits()
    return digits.data, digits.target.astype(np.int64)


@lru_cache(maxsize=1)
def load_split() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{"train": (images uint8 [N, 8, 8], labels int64 [N]), "test": ..., "all": ...}``."""
    import numpy as np

    pixels, labels = _read_digits()
    # 0..16 -> 0..255 rounded half-to-even (numpy's rint), exactly representable in uint8.
    images = np.rint(pixels.reshape(-1, 8, 8) * (255.0 / 16.0)).astype(np.uint8)
    rng = np.random.default_rng(SPLIT_SEED)
    train: list[np.ndarray] = []
    test: list[np.ndarray] = []
    for digit in range(10):
        members = rng.permutation(np.flatnonzero(labels == digit))
        n_test = round(TEST_FRACTION * len(members))
        test.append(members[:n_test])
        train.append(members[n_test:])
    train_index = rng.permutation(np.concatenate(train))
    test_index = rng.permutation(np.concatenate(test))
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
        "additionalProperties": False,
        "properties": {
            "split": {"enum": list(SPLITS), "default": "test"},
            **COMMON_PROPERTIES,
        },
    }

    def build(self, options: Mapping[str, Any], *, bundle: ModelBundle) -> Batches:
        from PIL import Image
        from qbench.errors import QBenchError

        from .batches import make_batches

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

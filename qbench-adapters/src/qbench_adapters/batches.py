"""Turning a list of (image source, label) samples into evaluation batches.

Every dataset of this package reduces to a list of samples, a function that opens one as a PIL
image and the model bundle's transform. This module does the rest the same way for all of
them: colour-mode conversion to what the model expects, the bundle's transform, the config's
``limit`` and ``batch_size``, optional worker processes, and unreadable files (an error naming
the file, or skip-and-count when ``dataset.skip_corrupt`` is true).
"""

from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image
from qbench.errors import QBenchError
from qbench.types import ModelBundle

from .options import COMMON_PROPERTIES  # noqa: F401  (re-exported for dataset plugins)

#: Errors PIL raises for a file that is not a readable image (UnidentifiedImageError is an
#: OSError; truncated data raises OSError; a decompression bomb raises its own error).
_UNREADABLE = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def image_mode(bundle: ModelBundle) -> str:
    """The PIL mode the model's transform expects: ``L`` for the zoo, ``RGB`` otherwise."""
    return str(bundle.info.get("image_mode", "RGB"))


class _Samples(torch.utils.data.Dataset):
    """Opens, converts and transforms one sample; reports failures instead of raising.

    Failures travel back as values so that worker processes never raise (DataLoader would
    re-raise them as a multi-line traceback) and the main process decides: error or skip.
    """

    def __init__(
        self,
        samples: Sequence[tuple[Any, int]],
        opener: Callable[[Any], Image.Image],
        transform: Callable[[Any], Any] | None,
        mode: str,
    ):
        self.samples = samples
        self.opener = opener
        self.transform = transform
        self.mode = mode

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int, Any, str | None]:
        source, target = self.samples[index]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                image = self.opener(source)
                image.load()  # decode now, so a truncated file fails here, not later
            if image.mode != self.mode:
                image = image.convert(self.mode)
        except _UNREADABLE as exc:
            return None, target, source, f"{type(exc).__name__}: {exc}"
        x = self.transform(image) if self.transform is not None else image
        return x, target, source, None


def _one_line(text: str) -> str:
    """A message on one line (PIL's errors are, but a decoder's may not be)."""
    return " ".join(text.split())


def _collate(
    items: list[tuple[Any, int, Any, str | None]],
) -> list[tuple[Any, int, Any, str | None]]:
    return items


@dataclass
class Batches:
    """A re-iterable stream of ``(images float NCHW, targets int64)`` batches.

    ``skipped`` lists the files skipped as unreadable during the last pass, each as
    ``{"path": str, "reason": str}`` (the one-line error that made it unreadable), for the
    report; ``info`` carries what a report may want to show (dataset name, root, split, image
    count, ``num_classes`` = the size of the label space the targets index, unmapped classes,
    ``skipped_corrupt`` = ``len(skipped)``).
    """

    dataset: str
    samples: Sequence[tuple[Any, int]]
    opener: Callable[[Any], Image.Image]
    transform: Callable[[Any], Any] | None
    mode: str
    batch_size: int = 64
    skip_corrupt: bool = False
    num_workers: int = 0
    info: dict[str, Any] = field(default_factory=dict)
    skipped: list[dict[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return math.ceil(len(self.samples) / self.batch_size)

    @property
    def num_images(self) -> int:
        return len(self.samples)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.skipped = []
        data = _Samples(self.samples, self.opener, self.transform, self.mode)
        loader = torch.utils.data.DataLoader(
            data,
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            collate_fn=_collate,
        )
        for items in loader:
            images: list[torch.Tensor] = []
            targets: list[int] = []
            for x, target, source, error in items:
                if error is not None:
                    if not self.skip_corrupt:
                        raise QBenchError(
                            f"dataset {self.dataset}: cannot read image {source}: {error}; "
                            "fix or remove the file, or set dataset.skip_corrupt: true to skip "
                            "and count unreadable files"
                        )
                    self.skipped.append({"path": str(source), "reason": _one_line(error)})
                    continue
                images.append(torch.as_tensor(x))
                targets.append(int(target))
            if images:
                yield torch.stack(images), torch.tensor(targets, dtype=torch.int64)
        self.info["skipped_corrupt"] = len(self.skipped)
        if self.skipped:  # counted in info; said aloud too, so no report reader misses it
            print(
                f"qbench: dataset {self.dataset}: skipped {len(self.skipped)} unreadable image(s) "
                f"(skip_corrupt), e.g. {self.skipped[0]['path']} ({self.skipped[0]['reason']})",
                file=sys.stderr,
            )


def make_batches(
    dataset: str,
    samples: Sequence[tuple[Any, int]],
    opener: Callable[[Any], Image.Image],
    options: Mapping[str, Any],
    bundle: ModelBundle,
    info: dict[str, Any] | None = None,
) -> Batches:
    """Apply the config's ``limit``/``batch_size`` and the bundle's transform to ``samples``."""
    batch_size = int(options.get("batch_size") or 64)
    if batch_size < 1:
        raise QBenchError(f"dataset.batch_size must be an integer >= 1, found {batch_size}")
    limit = options.get("limit")
    if limit is not None:
        if int(limit) < 1:
            raise QBenchError(f"dataset.limit must be an integer >= 1 or null, found {limit}")
        samples = samples[: int(limit)]
    details = dict(info or {})
    details.setdefault("num_images", len(samples))
    return Batches(
        dataset=dataset,
        samples=samples,
        opener=opener,
        transform=bundle.transform,
        mode=image_mode(bundle),
        batch_size=batch_size,
        skip_corrupt=bool(options.get("skip_corrupt", False)),
        num_workers=int(options.get("num_workers", 0) or 0),
        info=details,
    )

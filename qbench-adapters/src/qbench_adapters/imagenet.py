"""ImageNet-1k class identities: WordNet ids (wnids) in the order 1k models predict them.

torchvision's (and timm's) 1k classifiers index classes by the sorted list of the 1,000
ILSVRC-2012 synsets. That list is data, taken from timm's ``ImageNetInfo`` (a dependency kept
up to date by its maintainers) rather than typed in here. Imagenette and Tiny ImageNet name
their class folders by wnid, so an ImageNet-1k model is scored on its own labels through this
mapping.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType

NUM_CLASSES = 1000


#: The synset list inside timm's distribution (what ``timm.data.ImageNetInfo`` reads).
_TIMM_SYNSETS = "timm/data/_info/imagenet_synsets.txt"


@lru_cache(maxsize=1)
def imagenet1k_wnids() -> tuple[str, ...]:
    """The 1,000 ILSVRC-2012 wnids in class-index order.

    Read from timm's installed data file directly when it is there: importing ``timm`` loads
    its whole model zoo, seconds of start-up a data pipeline does not need. Falls back to
    ``timm.data.ImageNetInfo`` (the same file) if the layout of timm ever changes.
    """
    from importlib import metadata

    wnids: tuple[str, ...] = ()
    try:
        path = Path(str(metadata.distribution("timm").locate_file(_TIMM_SYNSETS)))
        if path.is_file():
            wnids = tuple(line.strip() for line in path.read_text().splitlines() if line.strip())
    except metadata.PackageNotFoundError:  # pragma: no cover - timm is a dependency
        pass
    if len(wnids) != NUM_CLASSES:
        from timm.data import ImageNetInfo

        wnids = tuple(ImageNetInfo("imagenet-1k").label_names())
    if len(wnids) != NUM_CLASSES:  # a changed upstream file must not silently shift labels
        raise RuntimeError(f"timm's ImageNet-1k synset list has {len(wnids)} entries, not 1000")
    return wnids


@lru_cache(maxsize=1)
def imagenet1k_class_index() -> Mapping[str, int]:
    """wnid -> class index of an ImageNet-1k classifier (read-only)."""
    return MappingProxyType({wnid: i for i, wnid in enumerate(imagenet1k_wnids())})

"""Image datasets read from folders: ``imagefolder``, ``imagenet``, ``imagenette``, ``tiny-imagenet``.

Layouts (``root`` is the dataset's top folder, relative paths are relative to the cwd):

* ``imagefolder``: ``root[/split]/<class>/**/<image>`` (torchvision's ImageFolder layout).
* ``imagenet``: ``root/<split>/<wnid>/<image>``, e.g. ILSVRC-2012 val sorted into wnid folders.
* ``imagenette``: ``root/<split>/<wnid>/<image>`` as fast.ai's archives unpack
  (``imagenette2-320/val/n01440764/...``).
* ``tiny-imagenet``: ``root/train/<wnid>/images/<image>``; ``root/val/images/<image>`` labelled by
  ``root/val/val_annotations.txt`` (tab-separated: file name, wnid, box).

Labels: when the model bundle carries a ``class_index`` (ImageNet-1k models) and the class
folders are its keys (wnids), each image is labelled with the model's own class index, so an
ImageNet model is scored on Imagenette or Tiny ImageNet in its 1k label space. Folders that
are not classes of the model are an error, or left out and counted with ``unmapped: skip``.
Otherwise classes are numbered in sorted folder-name order (torchvision's convention). A class
folder without images is an error, as in torchvision's ImageFolder: leaving it out would
renumber every later class. ``batches.info["num_classes"]`` is the size of the label space the
targets index (the model's 1k classes for wnid-mapped folders, else the number of folders).

Order: images are sorted within each class and the classes interleaved (first image of every
class, then the second...), so ``limit: N`` takes a class-balanced, reproducible subset.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Mapping, Sequence
from itertools import zip_longest
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qbench.errors import QBenchError
from qbench.types import ModelBundle

from .options import COMMON_PROPERTIES

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

    from .batches import Batches

#: File suffixes read as images (PIL decodes them all); matched case-insensitively.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".bmp", ".tif", ".tiff", ".webp")


def _open(path: str) -> Image.Image:
    from PIL import Image

    return Image.open(path)


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES)


def _raise(error: OSError) -> None:
    raise error


def _images_under(folder: Path) -> list[str]:
    found: list[str] = []
    # os.walk hides unreadable folders by default; raise instead (the dataset turns it into a
    # one-line error), so a folder that cannot be read never silently loses its images.
    for dirpath, dirnames, filenames in os.walk(folder, onerror=_raise):
        dirnames.sort()
        found.extend(os.path.join(dirpath, f) for f in sorted(filenames) if _is_image(f))
    return found


def unreadable_path_error(dataset: str, error: OSError, fallback: Path) -> QBenchError:
    """One line naming the path a filesystem error happened on (a symlink loop, no permission)."""
    path = error.filename if error.filename is not None else fallback
    reason = error.strerror or type(error).__name__
    hint = (
        "; a symbolic link there points (through others) back to itself: fix or remove it"
        if error.errno == errno.ELOOP
        else ""
    )
    return QBenchError(f"dataset {dataset}: cannot read {path} ({reason}){hint}")


def interleave(by_class: Mapping[str, Sequence[str]]) -> list[tuple[str, str]]:
    """``[(path, class)]`` taking one image of each class in turn (see module docstring)."""
    columns = [[(path, cls) for path in by_class[cls]] for cls in sorted(by_class)]
    return [item for row in zip_longest(*columns) for item in row if item is not None]


def assign_labels(
    dataset: str,
    named: Sequence[tuple[str, str]],
    classes: Sequence[str],
    bundle: ModelBundle,
    unmapped: str,
) -> tuple[list[tuple[str, int]], dict[str, Any]]:
    """Turn ``(path, class name)`` pairs into ``(path, class index)`` (module docstring)."""
    class_index = bundle.class_index
    if class_index is not None and any(c in class_index for c in classes):
        missing = [c for c in classes if c not in class_index]
        if missing and unmapped != "skip":
            raise QBenchError(
                f"dataset {dataset}: {len(missing)} of {len(classes)} class folders are not "
                f"classes of model {bundle.name} (e.g. {', '.join(missing[:3])}); set "
                "dataset.unmapped: skip to leave their images out"
            )
        samples = [(path, int(class_index[c])) for path, c in named if c in class_index]
        if missing:
            print(
                f"qbench: dataset {dataset}: left out {len(named) - len(samples)} image(s) of "
                f"{len(missing)} class(es) model {bundle.name} does not have (unmapped: skip)",
                file=sys.stderr,
            )
        info = {
            "labels": "model class_index (wnid)",
            # targets index the model's label space, not the folders
            "num_classes": len(class_index),
            "unmapped_classes": missing,
            "skipped_unmapped": len(named) - len(samples),
        }
        return samples, info
    if bundle.num_classes is not None and len(classes) > bundle.num_classes:
        raise QBenchError(
            f"dataset {dataset}: {len(classes)} class folders but model {bundle.name} predicts "
            f"{bundle.num_classes} classes and has no class_index naming them"
        )
    index = {c: i for i, c in enumerate(sorted(classes))}
    info = {"labels": "sorted folder names", "num_classes": len(index)}
    return [(path, index[c]) for path, c in named], info


class FolderDataset:
    """Shared logic; subclasses say where the images of a split are and how to get them."""

    name = "imagefolder"
    default_root: str | None = None
    splits: tuple[str, ...] | None = None
    default_split: str | None = None
    unmapped_default = "error"

    @property
    def options_schema(self) -> dict[str, Any]:
        root: dict[str, Any] = {"type": "string", "description": "dataset folder"}
        if self.default_root:
            root["default"] = self.default_root
        split: dict[str, Any] = (
            {"enum": list(self.splits)} if self.splits else {"type": ["string", "null"]}
        )
        split["default"] = self.default_split
        schema: dict[str, Any] = {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "root": root,
                "split": split,
                "unmapped": {
                    "enum": ["error", "skip"],
                    "default": self.unmapped_default,
                    "description": "class folders the model has no class for",
                },
                **COMMON_PROPERTIES,
            },
        }
        if not self.default_root:
            schema["required"] = ["root"]
        return schema

    # -- what subclasses override --------------------------------------------------------

    def how_to_get(self, root: Path) -> str:
        return "point dataset.root at a folder holding one sub-folder of images per class"

    def scan(self, root: Path, split: str | None) -> dict[str, list[str]]:
        """class name -> sorted image paths of ``split``."""
        base = root / split if split else root
        self._require_dir(base, root, f"{split}/ folder" if split else "folder")
        by_class = {
            entry.name: _images_under(Path(entry.path))
            for entry in sorted(os.scandir(base), key=lambda e: e.name)
            if entry.is_dir()
        }
        if not by_class:
            raise QBenchError(
                f"dataset {self.name}: no class folders under {base} "
                f"(expected one sub-folder of images per class)"
            )
        empty = [c for c, paths in by_class.items() if not paths]
        if empty:
            # Dropping it would shift the index of every later class (as torchvision's
            # ImageFolder, refuse instead): a model would be scored against wrong labels.
            others = f" (and {len(empty) - 1} more)" if len(empty) > 1 else ""
            raise QBenchError(
                f"dataset {self.name}: class folder {base / empty[0]}{others} holds no images "
                f"(image suffixes: {', '.join(IMAGE_SUFFIXES)}); add its images or remove the "
                "folder, since an empty class would renumber every class after it"
            )
        return by_class

    # -- shared --------------------------------------------------------------------------

    def _require_dir(self, path: Path, root: Path, what: str) -> None:
        try:
            path.stat()
        except OSError as exc:  # missing is said below; a symlink loop etc. is raised as is
            if exc.errno not in (errno.ENOENT, errno.ENOTDIR):
                raise
        if not path.is_dir():
            raise QBenchError(
                f"dataset {self.name}: {path} not found (no {what} in {root}); "
                f"{self.how_to_get(root)}"
            )

    def build(self, options: Mapping[str, Any], *, bundle: ModelBundle) -> Batches:
        root_value = options.get("root", self.default_root)
        if not root_value:
            raise QBenchError(f"dataset.root: the {self.name} dataset needs a root folder")
        root = Path(str(root_value)).expanduser()
        try:
            root.stat()
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ENOTDIR):
                raise unreadable_path_error(self.name, exc, root) from None
        if not root.is_dir():
            raise QBenchError(
                f"dataset {self.name}: root {root} does not exist (cwd {Path.cwd()}); "
                f"{self.how_to_get(root)}"
            )
        split = options.get("split", self.default_split)
        if self.splits and split not in self.splits:
            raise QBenchError(
                f"dataset.split: {self.name} has no split {split!r}; allowed: {', '.join(self.splits)}"
            )
        try:
            by_class = self.scan(root, split)
        except OSError as exc:  # a symlink loop, a folder without read permission ...
            raise unreadable_path_error(self.name, exc, root) from None
        named = interleave(by_class)
        unmapped = str(options.get("unmapped", self.unmapped_default))
        samples, info = assign_labels(self.name, named, sorted(by_class), bundle, unmapped)
        # info["num_classes"] (from assign_labels) is the size of the label space the targets
        # index: the model's 1k classes for wnid-mapped folders, else the number of folders.
        info.update(
            {
                "dataset": self.name,
                "root": str(root),
                "split": split,
                "dataset_classes": len(by_class),
            }
        )
        from .batches import make_batches

        return make_batches(self.name, samples, _open, options, bundle, info)


class ImageFolderDataset(FolderDataset):
    """Any class-per-folder tree (``dataset.root``, optional ``dataset.split`` sub-folder)."""

    name = "imagefolder"


class ImageNetDataset(FolderDataset):
    """ILSVRC-2012 with one folder per wnid under ``root/<split>``."""

    name = "imagenet"
    default_root = "data/imagenet"
    splits = ("val", "train")
    default_split = "val"

    def how_to_get(self, root: Path) -> str:
        return (
            "ImageNet cannot be downloaded automatically (its licence needs a sign-up at "
            f"image-net.org): put the ILSVRC-2012 images in one folder per wnid under {root}/val"
        )


class ImagenetteDataset(FolderDataset):
    """fast.ai's Imagenette (10 easy ImageNet classes), ``root`` = the unpacked archive."""

    name = "imagenette"
    default_root = "data/imagenette2-320"
    splits = ("val", "train")
    default_split = "val"

    def how_to_get(self, root: Path) -> str:
        return f"get it with: qbench data download imagenette --root {root.parent}"

    def download(self, root: Path, *, url: str | None = None, progress: bool = True) -> Path:
        """Fetch and unpack Imagenette (320 px) into ``root``; returns the dataset folder."""
        from .download import IMAGENETTE, fetch_dataset

        return fetch_dataset(IMAGENETTE, Path(root), url=url, progress=progress)


class TinyImageNetDataset(FolderDataset):
    """Stanford's Tiny ImageNet (200 classes, 64x64), ``root`` = ``tiny-imagenet-200``."""

    name = "tiny-imagenet"
    default_root = "data/tiny-imagenet-200"
    splits = ("val", "train")
    default_split = "val"
    # Tiny ImageNet's 200 classes were drawn from ImageNet, not promised to be a subset of the
    # 1k challenge classes: images of a class a 1k model lacks are left out and counted
    # (bundle info "skipped_unmapped") rather than stopping the run.
    unmapped_default = "skip"

    def how_to_get(self, root: Path) -> str:
        return f"get it with: qbench data download tiny-imagenet --root {root.parent}"

    def download(self, root: Path, *, url: str | None = None, progress: bool = True) -> Path:
        """Fetch and unpack Tiny ImageNet into ``root``; returns the dataset folder."""
        from .download import TINY_IMAGENET, fetch_dataset

        return fetch_dataset(TINY_IMAGENET, Path(root), url=url, progress=progress)

    def scan(self, root: Path, split: str | None) -> dict[str, list[str]]:
        if split == "train":
            return super().scan(root, "train")
        images = root / "val" / "images"
        annotations = root / "val" / "val_annotations.txt"
        self._require_dir(images, root, "val/images folder")
        if not annotations.is_file():
            raise QBenchError(
                f"dataset {self.name}: {annotations} not found (Tiny ImageNet labels its val "
                f"images there); {self.how_to_get(root)}"
            )
        by_class: dict[str, list[str]] = {}
        with open(annotations, encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                fields = line.rstrip("\n").split("\t")
                if len(fields) < 2 or not fields[0] or not fields[1]:
                    raise QBenchError(
                        f"dataset {self.name}: {annotations}:{number}: expected "
                        f"'<file>\\t<wnid>\\t...', found {line.strip()!r}"
                    )
                name = fields[0]
                if os.path.isabs(name) or ".." in Path(name).parts:
                    raise QBenchError(
                        f"dataset {self.name}: {annotations}:{number}: file name {name!r} "
                        "leaves val/images"
                    )
                by_class.setdefault(fields[1], []).append(str(images / name))
        if not by_class:
            raise QBenchError(f"dataset {self.name}: {annotations} lists no images")
        return {c: sorted(paths) for c, paths in by_class.items()}

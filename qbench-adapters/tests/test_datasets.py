"""Datasets over fabricated trees in each layout, label mapping, limits and bad files."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch
from adapters_image_files import write_corrupt, write_image
from qbench.errors import QBenchError
from qbench_adapters.digits import DigitsDataset, load_split
from qbench_adapters.folders import (
    ImageFolderDataset,
    ImageNetDataset,
    ImagenetteDataset,
    TinyImageNetDataset,
)
from qbench_adapters.imagenet import imagenet1k_class_index, imagenet1k_wnids

TENCH, SPRINGER, CHURCH = "n01440764", "n02102040", "n03028079"


def collect(batches) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*batches, strict=True)
    return torch.cat(xs), torch.cat(ys)


def test_imagenet_wnid_order_agrees_with_torchvision_category_names():
    # Independent check of the synset order: torchvision's ImageNet category names for the
    # same indices (a different package, typed by different people).
    from torchvision.models import ResNet18_Weights

    categories = ResNet18_Weights.IMAGENET1K_V1.meta["categories"]
    index = imagenet1k_class_index()
    assert len(imagenet1k_wnids()) == 1000 == len(set(imagenet1k_wnids()))
    assert categories[index[TENCH]] == "tench"
    assert categories[index[SPRINGER]] == "English springer"
    assert categories[index[CHURCH]] == "church"
    assert (index[TENCH], index[SPRINGER], index[CHURCH]) == (0, 217, 497)


def test_imagenette_maps_wnids_to_imagenet_indices(tmp_path, imagenet_bundle):
    root = tmp_path / "imagenette2-320"
    for wnid, value in ((TENCH, 10), (SPRINGER, 20), (CHURCH, 30)):
        for i in range(3):
            write_image(root / "val" / wnid / f"{wnid}_{i}.JPEG", value)
    write_image(root / "train" / TENCH / "x.JPEG", 99)  # another split: must not be read
    batches = ImagenetteDataset().build(
        {"name": "imagenette", "root": str(root), "batch_size": 4}, bundle=imagenet_bundle
    )
    x, y = collect(batches)
    assert batches.num_images == 9 and len(batches) == 3
    value_to_label = {10: 0, 20: 217, 30: 497}
    assert [value_to_label[round(v)] for v in x.flatten().tolist()] == y.tolist()
    assert y.dtype == torch.int64
    # interleaved order: one image of each class in turn, so a limit is class-balanced
    assert y[:3].tolist() == [0, 217, 497]
    limited = ImagenetteDataset().build(
        {"root": str(root), "batch_size": 2, "limit": 3}, bundle=imagenet_bundle
    )
    assert [len(b[1]) for b in limited] == [2, 1]
    assert sorted(collect(limited)[1].tolist()) == [0, 217, 497]


def test_imagenette_with_a_model_without_class_index_uses_sorted_folders(tmp_path, plain_bundle):
    root = tmp_path / "nette"
    for wnid, value in ((SPRINGER, 20), (TENCH, 10)):
        write_image(root / "val" / wnid / "a.png", value)
    x, y = collect(ImagenetteDataset().build({"root": str(root)}, bundle=plain_bundle))
    assert dict(zip(x.flatten().round().tolist(), y.tolist(), strict=True)) == {10.0: 0, 20.0: 1}


def test_unmapped_class_folders_error_or_skip(tmp_path, imagenet_bundle, capsys):
    root = tmp_path / "imagenet"
    write_image(root / "val" / TENCH / "a.jpg", 10)
    write_image(root / "val" / "n99999999" / "b.jpg", 20)
    with pytest.raises(QBenchError, match=r"1 of 2 class folders .*n99999999.*unmapped: skip"):
        ImageNetDataset().build({"root": str(root)}, bundle=imagenet_bundle)
    batches = ImageNetDataset().build(
        {"root": str(root), "unmapped": "skip"}, bundle=imagenet_bundle
    )
    assert collect(batches)[1].tolist() == [0]
    assert batches.info["skipped_unmapped"] == 1
    assert batches.info["unmapped_classes"] == ["n99999999"]
    assert "left out 1 image(s) of 1 class(es)" in capsys.readouterr().err


def make_tiny(root: Path, corrupt: bool = False) -> None:
    lines = []
    for i, (wnid, value) in enumerate([(TENCH, 10), (CHURCH, 30), (TENCH, 11), (SPRINGER, 20)]):
        write_image(root / "val" / "images" / f"val_{i}.JPEG", value, size=(64, 64))
        lines.append(f"val_{i}.JPEG\t{wnid}\t0\t0\t63\t63")
    if corrupt:
        write_corrupt(root / "val" / "images" / "val_4.JPEG")
        lines.append(f"val_4.JPEG\t{SPRINGER}\t0\t0\t63\t63")
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    write_image(root / "train" / CHURCH / "images" / f"{CHURCH}_0.JPEG", 31, size=(64, 64))
    write_image(root / "train" / TENCH / "images" / f"{TENCH}_0.JPEG", 12, size=(64, 64))


def test_tiny_imagenet_val_annotations_and_train_layout(tmp_path, imagenet_bundle):
    root = tmp_path / "tiny-imagenet-200"
    make_tiny(root)
    x, y = collect(TinyImageNetDataset().build({"root": str(root)}, bundle=imagenet_bundle))
    pairs = sorted(zip(x.flatten().round().tolist(), y.tolist(), strict=True))
    assert pairs == [(10.0, 0), (11.0, 0), (20.0, 217), (30.0, 497)]
    x, y = collect(
        TinyImageNetDataset().build({"root": str(root), "split": "train"}, bundle=imagenet_bundle)
    )
    assert sorted(zip(x.flatten().round().tolist(), y.tolist(), strict=True)) == [
        (12.0, 0),
        (31.0, 497),
    ]


def test_corrupt_jpeg_is_named_or_skipped_and_counted(tmp_path, imagenet_bundle, capsys):
    root = tmp_path / "tiny-imagenet-200"
    make_tiny(root, corrupt=True)
    with pytest.raises(QBenchError, match=r"cannot read image .*val_4\.JPEG.*skip_corrupt"):
        list(TinyImageNetDataset().build({"root": str(root)}, bundle=imagenet_bundle))
    batches = TinyImageNetDataset().build(
        {"root": str(root), "skip_corrupt": True, "batch_size": 2}, bundle=imagenet_bundle
    )
    x, y = collect(batches)
    assert len(y) == 4
    assert [Path(s["path"]).name for s in batches.skipped] == ["val_4.JPEG"]
    reason = batches.skipped[0]["reason"]
    assert reason.startswith("OSError: ") and "truncated" in reason.lower() and "\n" not in reason
    assert batches.info["skipped_corrupt"] == 1
    assert "skipped 1 unreadable image(s)" in capsys.readouterr().err


def test_corrupt_files_are_reported_from_worker_processes(tmp_path, plain_bundle):
    root = tmp_path / "folder"
    write_image(root / "a" / "0.png", 1)
    write_corrupt(root / "b" / "bad.jpg")
    options = {"root": str(root), "num_workers": 1, "skip_corrupt": True}
    batches = ImageFolderDataset().build(options, bundle=plain_bundle)
    assert collect(batches)[1].tolist() == [0]
    assert len(batches.skipped) == 1 and batches.info["skipped_corrupt"] == 1
    assert batches.skipped[0]["path"].endswith("bad.jpg") and batches.skipped[0]["reason"]


def test_tiny_imagenet_bad_annotation_line_names_file_and_line(tmp_path, imagenet_bundle):
    root = tmp_path / "tiny"
    make_tiny(root)
    with open(root / "val" / "val_annotations.txt", "a") as handle:
        handle.write("broken-line-without-tabs\n")
    with pytest.raises(QBenchError, match=r"val_annotations\.txt:5: expected"):
        TinyImageNetDataset().build({"root": str(root)}, bundle=imagenet_bundle)


def test_imagefolder_with_split_and_nested_images(tmp_path, plain_bundle):
    root = tmp_path / "pets"
    write_image(root / "test" / "cat" / "x" / "1.png", 5)
    write_image(root / "test" / "dog" / "2.bmp", 7)
    (root / "test" / "dog" / "notes.txt").write_text("not an image")
    x, y = collect(
        ImageFolderDataset().build({"root": str(root), "split": "test"}, bundle=plain_bundle)
    )
    assert dict(zip(x.flatten().round().tolist(), y.tolist(), strict=True)) == {5.0: 0, 7.0: 1}


def test_more_folders_than_model_classes_is_an_error(tmp_path, plain_bundle):
    for i in range(11):
        write_image(tmp_path / "f" / f"class{i:02d}" / "a.png", i)
    with pytest.raises(QBenchError, match="11 class folders but model plain predicts 10"):
        ImageFolderDataset().build({"root": str(tmp_path / "f")}, bundle=plain_bundle)


@pytest.mark.parametrize(
    ("dataset", "hint"),
    [
        (ImagenetteDataset(), "qbench data download imagenette --root"),
        (TinyImageNetDataset(), "qbench data download tiny-imagenet --root"),
        (ImageNetDataset(), "one folder per wnid"),
    ],
)
def test_missing_root_says_which_path_and_how_to_get_it(tmp_path, imagenet_bundle, dataset, hint):
    missing = tmp_path / "nowhere" / "data"
    with pytest.raises(QBenchError) as info:
        dataset.build({"root": str(missing)}, bundle=imagenet_bundle)
    message = str(info.value)
    assert str(missing) in message and hint in message and "\n" not in message
    if "download" in hint:
        assert f"--root {missing.parent}" in message


def test_missing_split_folder_is_reported(tmp_path, imagenet_bundle):
    (tmp_path / "imagenette2-320" / "train").mkdir(parents=True)
    with pytest.raises(QBenchError, match=r"imagenette2-320/val not found"):
        ImagenetteDataset().build(
            {"root": str(tmp_path / "imagenette2-320")}, bundle=imagenet_bundle
        )


def test_digits_split_is_fixed_stratified_and_complete():
    split = load_split()
    (x_train, y_train), (x_test, y_test) = split["train"], split["test"]
    assert (len(y_train), len(y_test)) == (1258, 539)
    assert len(split["all"][1]) == 1797
    assert x_test.dtype.name == "uint8" and x_test.max() == 255 and x_test.shape[1:] == (8, 8)
    counts_all = Counter(split["all"][1].tolist())
    counts_test = Counter(y_test.tolist())
    for digit, n in counts_all.items():  # stratified: 30 % of every class, +-1 image
        assert abs(counts_test[digit] - 0.3 * n) <= 1

    # train and test partition the data: every image (with its label) exactly once
    def rows(images, labels):
        return Counter(im.tobytes() + bytes([lab]) for im, lab in zip(images, labels, strict=True))

    assert rows(x_train, y_train) + rows(x_test, y_test) == rows(*split["all"])


def test_digits_pixels_match_sklearn_scaled_to_unit_range():
    from qbench_adapters.adapters import ZooAdapter
    from sklearn.datasets import load_digits

    bundle = ZooAdapter().build({"name": "tiny_cnn", "weights": "none"})
    x, y = collect(DigitsDataset().build({"split": "all", "batch_size": 700}, bundle=bundle))
    reference = load_digits()
    assert x.shape == (1797, 1, 8, 8) and x.dtype == torch.float32
    expected = torch.from_numpy(reference.images).float() / 16.0
    # one uint8 step of rounding (0..16 -> 0..255) is the only difference
    assert torch.allclose(x[:, 0], expected, atol=0.5 / 255 + 1e-6)
    assert y.tolist() == reference.target.tolist()


def test_digits_honours_batch_size_and_limit(plain_bundle):
    batches = DigitsDataset().build(
        {"split": "test", "batch_size": 64, "limit": 130}, bundle=plain_bundle
    )
    assert [len(t) for _, t in batches] == [64, 64, 2]
    with pytest.raises(QBenchError, match="no split 'validation'"):
        DigitsDataset().build({"split": "validation"}, bundle=plain_bundle)


def test_empty_class_folder_is_refused_not_relabelled(tmp_path, plain_bundle):
    # Dropping "b" would turn c's label 2 into 1: every later class scored against a wrong id.
    root = tmp_path / "folder"
    write_image(root / "a" / "0.png", 1)
    (root / "b").mkdir()
    (root / "b" / "readme.txt").write_text("no images here")
    write_image(root / "c" / "0.png", 3)
    with pytest.raises(QBenchError, match="holds no images") as info:
        ImageFolderDataset().build({"root": str(root)}, bundle=plain_bundle)
    assert str(root / "b") in str(info.value) and "\n" not in str(info.value)


def test_symlink_loop_in_a_dataset_root_is_a_user_error(tmp_path, plain_bundle, imagenet_bundle):
    root = tmp_path / "folder"
    write_image(root / "a" / "0.png", 1)
    (root / "loop").symlink_to(root / "loop")
    with pytest.raises(QBenchError, match="Too many levels of symbolic links") as info:
        ImageFolderDataset().build({"root": str(root)}, bundle=plain_bundle)
    assert str(root / "loop") in str(info.value) and "\n" not in str(info.value)
    # the root itself, and a split folder, caught in a loop
    looped = tmp_path / "looped"
    looped.symlink_to(looped)
    with pytest.raises(QBenchError, match=rf"cannot read {looped} .*symbolic link"):
        ImageFolderDataset().build({"root": str(looped)}, bundle=plain_bundle)
    nette = tmp_path / "nette"
    nette.mkdir()
    (nette / "val").symlink_to(nette / "val")
    with pytest.raises(QBenchError, match=rf"cannot read {nette / 'val'} "):
        ImagenetteDataset().build({"root": str(nette)}, bundle=imagenet_bundle)
    tiny = tmp_path / "tiny"
    make_tiny(tiny)
    (tiny / "val" / "val_annotations.txt").unlink()
    (tiny / "val" / "val_annotations.txt").symlink_to(tiny / "val" / "val_annotations.txt")
    with pytest.raises(QBenchError, match="val_annotations.txt"):
        TinyImageNetDataset().build({"root": str(tiny)}, bundle=imagenet_bundle)


def test_every_dataset_says_the_size_of_its_label_space(tmp_path, plain_bundle, imagenet_bundle):
    digits = DigitsDataset().build({"limit": 5}, bundle=plain_bundle)
    assert digits.info["num_classes"] == 10
    folder = tmp_path / "folder"
    for i, name in enumerate(("a", "b", "c")):
        write_image(folder / name / "0.png", i)
    assert (
        ImageFolderDataset().build({"root": str(folder)}, bundle=plain_bundle).info["num_classes"]
        == 3
    )
    nette = tmp_path / "nette"
    for wnid in (TENCH, CHURCH):
        write_image(nette / "val" / wnid / "0.png", 1)
    mapped = ImagenetteDataset().build({"root": str(nette)}, bundle=imagenet_bundle)
    assert max(collect(mapped)[1].tolist()) == 497  # targets are ImageNet-1k indices ...
    assert mapped.info["num_classes"] == 1000  # ... so the label space is the 1k classes
    assert mapped.info["dataset_classes"] == 2
    plain = ImagenetteDataset().build({"root": str(nette)}, bundle=plain_bundle)
    assert plain.info["num_classes"] == 2
    tiny = tmp_path / "tiny"
    make_tiny(tiny)
    assert (
        TinyImageNetDataset().build({"root": str(tiny)}, bundle=imagenet_bundle).info["num_classes"]
        == 1000
    )

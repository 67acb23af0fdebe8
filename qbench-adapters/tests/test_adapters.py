"""Every adapter builds its models; weights come from the hub cache, checkpoints or none."""

from __future__ import annotations

import sys

import jsonschema
import pytest
import torch
import torchvision
from PIL import Image
from qbench.errors import QBenchError
from qbench_adapters import checkpoints
from qbench_adapters.adapters import (
    RESNET_NAMES,
    VIT_NAMES,
    GenericAdapter,
    ResNetAdapter,
    ViTAdapter,
    ZooAdapter,
)
from qbench_adapters.zoo import MODELS, NarrowResNet
from safetensors.torch import save_file


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """An empty torch hub cache (never the user's), via TORCH_HOME."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch"


def test_resnet18_random_init_is_seeded_and_in_eval_mode(torch_home):
    a = ResNetAdapter().build({"adapter": "resnet", "name": "resnet18", "weights": "none"})
    b = ResNetAdapter().build({"name": "resnet18", "weights": "none"})
    c = ResNetAdapter().build({"name": "resnet18", "weights": "none", "seed": 1})
    assert isinstance(a.model, torchvision.models.ResNet) and not a.model.training
    assert a.name == "resnet18" and a.num_classes == 1000 and len(a.class_index) == 1000
    assert torch.equal(a.model.conv1.weight, b.model.conv1.weight)
    assert not torch.equal(a.model.conv1.weight, c.model.conv1.weight)
    image = Image.new("RGB", (300, 280), (120, 30, 200))
    x = a.transform(image)
    assert x.shape == (3, 224, 224)  # torchvision's ResNet18 preset: resize 256, crop 224
    assert a.model(x[None]).shape == (1, 1000)


def test_vit_b_16_random_init_lists_its_attention_modules(torch_home):
    bundle = ViTAdapter().build({"name": "vit_b_16", "weights": "none"})
    assert isinstance(bundle.model, torchvision.models.VisionTransformer)
    attention = bundle.info["attention_modules"]
    assert len(attention) == 12 and attention[0] == "encoder.layers.encoder_layer_0.self_attention"
    assert bundle.transform(Image.new("RGB", (256, 256))).shape == (3, 224, 224)


@pytest.mark.parametrize("name", RESNET_NAMES + VIT_NAMES)
def test_every_listed_architecture_exists_in_torchvision(name):
    # Built on the meta device: checks the name and constructor without 100s of MB of weights.
    with torch.device("meta"):
        model = torchvision.models.get_model(name, weights=None)
    expected = (
        torchvision.models.ResNet if name in RESNET_NAMES else torchvision.models.VisionTransformer
    )
    assert isinstance(model, expected)
    assert torchvision.models.get_model_weights(name).DEFAULT is not None


def test_missing_hub_weights_say_where_and_how(torch_home):
    with pytest.raises(QBenchError) as info:
        ResNetAdapter().build({"name": "resnet18", "weights": "DEFAULT"})
    message = str(info.value)
    expected = torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert (
        str(expected) in message
        and "download.pytorch.org" in message
        and "weights: none" in message
    )
    assert "\n" not in message


def test_weights_from_the_local_hub_cache(torch_home):
    reference = torchvision.models.resnet18(weights=None)
    torch.nn.init.constant_(reference.fc.bias, 0.25)
    cache = torch_home / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(reference.state_dict(), cache / "resnet18-f37072fd.pth")
    bundle = ResNetAdapter().build({"name": "resnet18", "weights": "IMAGENET1K_V1"})
    assert torch.equal(bundle.model.fc.bias, torch.full((1000,), 0.25))
    assert bundle.info["weights"] == "ResNet18_Weights.IMAGENET1K_V1"


def test_unknown_weights_name_lists_the_allowed_ones():
    with pytest.raises(
        QBenchError,
        match=r"'IMAGENET9K' is not a weights name of resnet18; allowed: DEFAULT, none, IMAGENET1K_V1",
    ):
        ResNetAdapter().build({"name": "resnet18", "weights": "IMAGENET9K"})
    with pytest.raises(QBenchError, match=r"'vit_b_16' is not a resnet model"):
        ResNetAdapter().build({"name": "vit_b_16"})


def test_checkpoint_paths_safetensors_and_torch(tmp_path):
    source = ZooAdapter().build({"name": "tiny_resnet", "weights": "none", "seed": 3}).model
    st = tmp_path / "model.safetensors"
    checkpoints.save_with_factory(source, st, "qbench_adapters.zoo:tiny_resnet")
    pt = tmp_path / "model.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, pt)
    for path in (st, pt):
        bundle = ZooAdapter().build({"name": "tiny_resnet", "weights": str(path)})
        for key, value in source.state_dict().items():
            assert torch.equal(bundle.model.state_dict()[key], value), key


class Evil:
    """Pickling this stores a reference to a class: weights_only loading must refuse it."""

    def __reduce__(self):
        return (print, ("unpickled code ran",))


def test_pickled_code_is_never_loaded(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    torch.save({"fc.weight": torch.zeros(1), "payload": Evil()}, path)
    with pytest.raises(QBenchError, match=r"weights_only=True.*never unpickles code"):
        ZooAdapter().build({"name": "tiny_cnn", "weights": str(path)})
    assert "unpickled code ran" not in capsys.readouterr().out


def test_checkpoint_that_does_not_fit_is_one_line(tmp_path):
    path = tmp_path / "cnn.safetensors"
    checkpoints.save_with_factory(
        ZooAdapter().build({"name": "tiny_cnn", "weights": "none"}).model, path, "x:y"
    )
    with pytest.raises(QBenchError) as info:
        ZooAdapter().build({"name": "tiny_resnet", "weights": str(path)})
    assert "does not fit the model" in str(info.value) and "missing" in str(info.value)
    assert "\n" not in str(info.value)
    with pytest.raises(QBenchError, match="not found"):
        ZooAdapter().build({"name": "tiny_cnn", "weights": str(tmp_path / "absent.safetensors")})


def test_resnet_checkpoint_with_other_class_count(tmp_path):
    model = torchvision.models.resnet18(weights=None, num_classes=10)
    path = tmp_path / "r18_10.safetensors"
    checkpoints.save_with_factory(model, path, "torchvision.models:resnet18", {"num_classes": 10})
    bundle = ResNetAdapter().build({"name": "resnet18", "weights": str(path)})
    assert bundle.num_classes == 10 and bundle.class_index is None
    assert torch.equal(bundle.model.fc.weight, model.fc.weight)


def test_generic_from_factory_and_from_a_self_describing_checkpoint(tmp_path):
    options = {
        "adapter": "generic",
        "factory": "torchvision.models:resnet18",
        "kwargs": {"num_classes": 7},
        "name": "my_r18",
    }
    bundle = GenericAdapter().build(options)
    assert bundle.name == "my_r18" and bundle.num_classes == 7 and bundle.class_index is None
    assert bundle.transform(Image.new("RGB", (64, 80))).shape == (3, 224, 224)
    path = tmp_path / "r.safetensors"
    checkpoints.save_with_factory(
        bundle.model, path, "torchvision.models:resnet18", {"num_classes": 7}
    )
    # torchvision's resnet18 is not on the allow-list: the file's factory needs confirming
    with pytest.raises(QBenchError, match="trust_checkpoint_factory"):
        GenericAdapter().build({"weights": str(path)})
    again = GenericAdapter().build({"weights": str(path), "trust_checkpoint_factory": True})
    assert again.name == "resnet18" and again.num_classes == 7
    assert torch.equal(again.model.fc.weight, bundle.model.fc.weight)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "needs factory"),
        ({"factory": "no_colon_here"}, "package.module:factory"),
        ({"factory": "qbench_adapters_nope:f"}, "cannot import"),
        ({"factory": "torchvision.models:nope"}, "has no attribute 'nope'"),
        ({"factory": "torchvision.models:resnet18", "kwargs": {"bogus": 1}}, "rejected"),
        ({"factory": "collections:OrderedDict"}, "returned OrderedDict, not a torch nn.Module"),
    ],
)
def test_generic_errors_are_one_line(options, message):
    with pytest.raises(QBenchError, match=message) as info:
        GenericAdapter().build(options)
    assert "\n" not in str(info.value)


def test_zoo_models_share_the_torchvision_classes():
    for name, expected in (
        ("tiny_resnet", torchvision.models.ResNet),
        ("tiny_vit", torchvision.models.VisionTransformer),
    ):
        bundle = ZooAdapter().build({"name": name})
        assert isinstance(bundle.model, expected)
        assert bundle.name == f"zoo_{name}" and bundle.info["image_mode"] == "L"
    resnet = ZooAdapter().build({"name": "tiny_resnet"}).model
    assert isinstance(resnet, NarrowResNet)
    # same module names as a torchvision ResNet, so per-layer config globs carry over
    names = {n for n, _ in resnet.named_modules()}
    assert {"conv1", "bn1", "layer1.0.conv1", "layer4.0.downsample.0", "fc"} <= names
    blocks = [m for m in resnet.modules() if isinstance(m, torchvision.models.resnet.BasicBlock)]
    assert len(blocks) == 4


@pytest.mark.parametrize("adapter", [GenericAdapter(), ResNetAdapter(), ViTAdapter(), ZooAdapter()])
def test_options_schemas_are_valid_json_schema(adapter):
    jsonschema.Draft202012Validator.check_schema(adapter.options_schema)
    assert adapter.options_schema["type"] == "object"


def test_device_auto_and_bad_device():
    assert ZooAdapter().build({"name": "tiny_cnn"}, device="auto").model is not None
    with pytest.raises(QBenchError, match="not a torch device"):
        ZooAdapter().build({"name": "tiny_cnn"}, device="toaster")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_zoo_on_cuda():
    bundle = ZooAdapter().build({"name": "tiny_vit"}, device="cuda")
    assert next(bundle.model.parameters()).is_cuda


# -- a factory named only by a checkpoint needs the user's confirmation ------------------------

MARKER_MODULE = "qbench_test_marker_factory"


@pytest.fixture
def marker_factory(tmp_path, monkeypatch):
    """``(spec, marker)``: an importable factory that creates ``marker`` when imported or called."""
    marker = tmp_path / "marker"
    package = tmp_path / "site"
    package.mkdir()
    (package / f"{MARKER_MODULE}.py").write_text(
        "import pathlib\n"
        "import torch\n"
        f"MARKER = pathlib.Path({str(marker)!r})\n"
        "MARKER.with_suffix('.imported').touch()\n"
        "def build(width=3):\n"
        "    MARKER.touch()\n"
        "    return torch.nn.Linear(2, width)\n"
    )
    monkeypatch.syspath_prepend(str(package))
    monkeypatch.delitem(sys.modules, MARKER_MODULE, raising=False)
    yield f"{MARKER_MODULE}:build", marker
    sys.modules.pop(MARKER_MODULE, None)


def test_checkpoint_factory_is_not_imported_without_confirmation(tmp_path, marker_factory):
    spec, marker = marker_factory
    path = tmp_path / "m.safetensors"
    checkpoints.save_with_factory(torch.nn.Linear(2, 4), path, spec, {"width": 4})
    with pytest.raises(QBenchError) as info:
        GenericAdapter().build({"adapter": "generic", "weights": str(path)})
    message = str(info.value)
    assert str(path) in message and repr(spec) in message and "\n" not in message
    for way in ("model.factory", "trust_checkpoint_factory: true", "trust_factory("):
        assert way in message
    assert not marker.exists() and not marker.with_suffix(".imported").exists()
    assert MARKER_MODULE not in sys.modules


def test_subprocess_run_named_by_a_checkpoint_never_runs(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.safetensors"
    checkpoints.save_with_factory(
        torch.nn.Linear(1, 1), path, "subprocess:run", {"args": ["touch", str(marker)]}
    )
    with pytest.raises(QBenchError, match=r"names factory 'subprocess:run'"):
        GenericAdapter().build({"weights": str(path)})
    assert not marker.exists()


def test_confirmed_checkpoint_factories_load(tmp_path, marker_factory, monkeypatch):
    spec, marker = marker_factory
    source = torch.nn.Linear(2, 4)
    path = tmp_path / "m.safetensors"
    checkpoints.save_with_factory(source, path, spec, {"width": 4})
    trusted = GenericAdapter().build({"weights": str(path), "trust_checkpoint_factory": True})
    assert marker.exists() and torch.equal(trusted.model.weight, source.weight)
    named = GenericAdapter().build({"weights": str(path), "factory": spec, "kwargs": {"width": 4}})
    assert torch.equal(named.model.weight, source.weight)
    # a plugin that registers the factory as trusted: no option needed
    monkeypatch.setattr(checkpoints, "TRUSTED_FACTORIES", set(checkpoints.TRUSTED_FACTORIES))
    checkpoints.trust_factory(spec)
    allowed = GenericAdapter().build({"weights": str(path)})
    assert torch.equal(allowed.model.weight, source.weight)
    with pytest.raises(QBenchError, match="package.module:callable"):
        checkpoints.trust_factory("not a spec")


def test_zoo_checkpoints_load_without_confirmation(tmp_path):
    assert {f"qbench_adapters.zoo:{name}" for name in MODELS} <= checkpoints.TRUSTED_FACTORIES
    source = ZooAdapter().build({"name": "tiny_cnn", "weights": "none", "seed": 5}).model
    path = tmp_path / "cnn.safetensors"
    checkpoints.save_with_factory(source, path, "qbench_adapters.zoo:tiny_cnn", {"num_classes": 10})
    bundle = GenericAdapter().build({"weights": str(path)})
    assert bundle.num_classes == 10
    for key, value in source.state_dict().items():
        assert torch.equal(bundle.model.state_dict()[key], value), key


def test_trust_option_is_in_the_schema():
    schema = GenericAdapter().options_schema
    option = schema["properties"]["trust_checkpoint_factory"]
    assert option["type"] == "boolean" and option["default"] is False and option["description"]
    jsonschema.validate({"trust_checkpoint_factory": True}, schema)


@pytest.mark.parametrize(
    ("raw", "found"), [("{not json", "is not JSON"), ("[1, 2]", "JSON list, not an object")]
)
def test_malformed_factory_kwargs_metadata_is_one_line(tmp_path, raw, found):
    path = tmp_path / "bad.safetensors"
    state = ZooAdapter().build({"name": "tiny_cnn", "weights": "none"}).model.state_dict()
    save_file(
        {k: v.contiguous() for k, v in state.items()},
        str(path),
        metadata={"qbench.factory": "qbench_adapters.zoo:tiny_cnn", "qbench.kwargs": raw},
    )
    with pytest.raises(QBenchError, match=found) as info:
        GenericAdapter().build({"weights": str(path)})
    assert str(path) in str(info.value) and "qbench.kwargs" in str(info.value)
    assert "\n" not in str(info.value)


# -- transform options --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("transform", "key", "schema_refuses"),
    [
        ({"std": [0]}, "std", True),
        ({"std": [0.2, 0.0, 0.2]}, "std", True),
        ({"std": [-1.0]}, "std", True),
        ({"std": [0.2, 0.2, 0.2, 0.2]}, "std", True),
        # lengths the schema cannot tell from the image mode: refused when building
        ({"mean": [0.5, 0.5]}, "mean", False),
        ({"image_mode": "L", "mean": [0.5, 0.5, 0.5]}, "mean", False),
    ],
)
def test_bad_normalisation_options_are_refused(transform, key, schema_refuses):
    options = {"factory": "qbench_adapters.zoo:tiny_cnn", "transform": transform}
    with pytest.raises(QBenchError, match=rf"^model\.transform\.{key}: found ") as info:
        GenericAdapter().build(options)
    assert "\n" not in str(info.value)
    if schema_refuses:
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(options, GenericAdapter().options_schema)


def test_normalisation_with_one_value_or_grey_images():
    bundle = GenericAdapter().build(
        {"factory": "qbench_adapters.zoo:tiny_cnn", "transform": {"mean": [0.5], "std": [0.25]}}
    )
    x = bundle.transform(Image.new("RGB", (8, 8), (255, 255, 255)))
    assert torch.allclose(x, torch.full_like(x, 2.0))
    grey = GenericAdapter().build(
        {"factory": "qbench_adapters.zoo:tiny_cnn", "transform": {"image_mode": "L"}}
    )
    assert grey.transform(Image.new("L", (300, 300))).shape == (1, 224, 224)


# -- model.num_classes ----------------------------------------------------------------------------


def test_generic_passes_num_classes_to_the_factory():
    options = {"factory": "torchvision.models:mobilenet_v3_small", "num_classes": 10}
    bundle = GenericAdapter().build(options)
    assert bundle.num_classes == 10 and bundle.class_index is None
    assert bundle.model(torch.zeros(1, 3, 64, 64)).shape == (1, 10)
    zoo = GenericAdapter().build({"factory": "qbench_adapters.zoo:tiny_cnn", "num_classes": 3})
    assert zoo.model[-1].out_features == 3 and zoo.num_classes == 3
    assert "num_classes" in GenericAdapter().options_schema["properties"]


def test_generic_num_classes_that_cannot_be_honoured_is_refused():
    options = {
        "factory": "torch.nn:Linear",
        "kwargs": {"in_features": 4, "out_features": 3},
        "num_classes": 10,
    }
    with pytest.raises(QBenchError, match=r"model.num_classes: 10, .* 3 outputs") as info:
        GenericAdapter().build(options)
    assert "\n" not in str(info.value)
    clash = {"factory": "qbench_adapters.zoo:tiny_cnn", "kwargs": {"num_classes": 7}}
    with pytest.raises(QBenchError, match=r"model.num_classes: 10 disagrees .* num_classes 7"):
        GenericAdapter().build({**clash, "num_classes": 10})
    assert GenericAdapter().build({**clash, "num_classes": 7}).num_classes == 7

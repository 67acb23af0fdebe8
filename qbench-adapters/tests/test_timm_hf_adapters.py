"""The ``timm`` and ``hf`` adapters: offline builds, checkpoints, transforms, one-line errors.

Only timm's ``test_*`` architectures (a few hundred thousand parameters) and a two-layer BERT
are built, so the file runs in seconds.
"""

from __future__ import annotations

import os
import sys

import jsonschema
import pytest
import torch
from PIL import Image
from qbench.errors import QBenchError
from qbench_adapters.hf_models import HFAdapter
from qbench_adapters.timm_models import TimmAdapter
from safetensors.torch import save_file

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach a model hub

TINY = "test_efficientnet"  # timm's own test architecture: Conv2dSame-free, 356 k parameters


def _image(size=(200, 150)) -> Image.Image:
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (size[1], size[0], 3), dtype=torch.uint8, generator=generator)
    return Image.fromarray(pixels.numpy(), "RGB")


# -- timm -------------------------------------------------------------------------------------


def test_timm_random_init_is_seeded_in_eval_mode_with_timms_transform():
    import timm

    bundle = TimmAdapter().build({"name": TINY, "weights": "none", "seed": 3})
    again = TimmAdapter().build({"name": TINY, "seed": 3})  # weights default: none
    other = TimmAdapter().build({"name": TINY, "seed": 4})
    first = bundle.model.state_dict()
    assert all(torch.equal(v, again.model.state_dict()[k]) for k, v in first.items())
    assert not torch.equal(first["conv_stem.weight"], other.model.state_dict()["conv_stem.weight"])
    assert not bundle.model.training
    assert not any(p.requires_grad for p in bundle.model.parameters())
    assert bundle.name == TINY and bundle.num_classes == 1000
    assert bundle.class_index is not None and len(bundle.class_index) == 1000
    assert bundle.info["adapter"] == "timm" and bundle.info["input_size"] == (3, 160, 160)
    # the transform is timm's evaluation pipeline for this model, step for step
    expected = timm.data.create_transform(
        **timm.data.resolve_data_config({}, model=timm.create_model(TINY))
    )
    assert repr(bundle.transform) == repr(expected)
    x = bundle.transform(_image())
    assert x.shape == (3, 160, 160)
    assert torch.equal(x, expected(_image()))
    with torch.no_grad():
        assert bundle.model(x[None]).shape == (1, 1000)


def test_timm_num_classes():
    bundle = TimmAdapter().build({"name": "test_resnet", "num_classes": 7})
    assert bundle.num_classes == 7 and bundle.class_index is None
    with torch.no_grad():
        assert bundle.model(torch.zeros(2, 3, 160, 160)).shape == (2, 7)
    features = TimmAdapter().build({"name": "test_resnet", "num_classes": 0})
    assert features.num_classes is None  # no classifier: pooled features


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_timm_checkpoint_round_trip(tmp_path, suffix):
    source = TimmAdapter().build({"name": TINY, "num_classes": 5, "seed": 1}).model
    path = tmp_path / f"tiny{suffix}"
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save({"state_dict": state}, path)
    # the class count comes from the checkpoint's classifier when num_classes is not given
    bundle = TimmAdapter().build({"name": TINY, "weights": str(path), "seed": 9})
    assert bundle.num_classes == 5 and bundle.info["weights"] == str(path)
    loaded = bundle.model.state_dict()
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    x = torch.randn(1, 3, 160, 160, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(bundle.model(x), source(x))


def test_timm_checkpoint_that_does_not_fit_is_one_line(tmp_path):
    path = tmp_path / "resnet.safetensors"
    save_file(TimmAdapter().build({"name": "test_resnet"}).model.state_dict(), str(path))
    with pytest.raises(QBenchError) as info:
        TimmAdapter().build({"name": TINY, "weights": str(path)})
    assert "does not fit the model" in str(info.value) and "\n" not in str(info.value)


def test_timm_unknown_name_lists_close_names():
    with pytest.raises(QBenchError) as info:
        TimmAdapter().build({"name": "resnet_18"})
    message = str(info.value)
    assert "\n" not in message and "'resnet_18' is not a timm model" in message
    assert "close names: " in message and "resnet18" in message.split("close names: ")[1]
    with pytest.raises(QBenchError, match="close names: .*efficientnet_b0"):
        TimmAdapter().build({"name": "efficientnet_bo"})


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"name": TINY, "weights": "DEFAULT"}, "never does at run time"),
        ({"name": TINY, "weights": "pretrained"}, "never does at run time"),
        ({"name": "hf-hub:timm/resnet18.a1_in1k"}, "Hugging Face hub"),
        ({"name": TINY, "weights": "missing/model.safetensors"}, "not found"),
    ],
)
def test_timm_never_downloads(options, message):
    with pytest.raises(QBenchError, match=message) as info:
        TimmAdapter().build(options)
    assert "\n" not in str(info.value)


def test_timm_tagged_name_and_timm_layer_subclasses_build():
    bundle = TimmAdapter().build({"name": "test_resnet.r160_in1k"})
    assert bundle.info["architecture"] == "test_resnet.r160_in1k"


# -- hf -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory):
    """A two-layer BERT saved as save_pretrained writes it (config.json + model.safetensors)."""
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=128,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=3,
    )
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(config).eval()
    folder = tmp_path_factory.mktemp("bert")
    model.save_pretrained(folder)
    assert (folder / "model.safetensors").is_file()
    return folder, model


def test_hf_sequence_classification_from_a_local_folder(bert_folder):
    folder, reference = bert_folder
    bundle = HFAdapter().build({"path": str(folder), "task": "sequence-classification"})
    assert bundle.num_classes == 3 and bundle.name == folder.name
    assert bundle.info["architecture"] == "BertForSequenceClassification"
    assert not bundle.model.training
    ids = torch.randint(0, 128, (2, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = bundle.model(ids)
        assert torch.equal(logits, reference(input_ids=ids).logits)
    assert logits.shape == (2, 3)


def test_hf_feature_extraction_and_random_init(bert_folder):
    folder, reference = bert_folder
    bundle = HFAdapter().build({"path": str(folder), "name": "bert2"})
    assert bundle.name == "bert2" and bundle.num_classes is None
    ids = torch.randint(0, 128, (1, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        hidden = bundle.model(ids, attention_mask=torch.ones_like(ids))
    assert hidden.shape == (1, 7, 32)
    assert torch.equal(hidden, reference.bert(input_ids=ids).last_hidden_state)
    random = HFAdapter().build({"path": str(folder), "weights": "none", "seed": 2})
    same = HFAdapter().build({"path": str(folder), "weights": "none", "seed": 2})
    assert random.info["weights"].startswith("none")
    a, b = random.model.state_dict(), same.model.state_dict()
    assert all(torch.equal(v, b[k]) for k, v in a.items())


def test_hf_errors_are_one_line(tmp_path, bert_folder, monkeypatch):
    with pytest.raises(QBenchError, match="no config.json") as info:
        HFAdapter().build({"path": str(tmp_path / "nowhere")})
    assert "\n" not in str(info.value)
    folder, _ = bert_folder
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text((folder / "config.json").read_text())
    with pytest.raises(QBenchError, match="no model.safetensors"):
        HFAdapter().build({"path": str(pickled)})
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if not installed
    with pytest.raises(QBenchError) as info:
        HFAdapter().build({"path": str(folder)})
    assert str(info.value) == (
        "model.adapter: hf needs the transformers package, which is not installed; "
        "pip install 'qbench-adapters[hf]'"
    )


@pytest.mark.parametrize("adapter", [TimmAdapter(), HFAdapter()])
def test_schemas_are_valid_and_described(adapter):
    schema = adapter.options_schema
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["additionalProperties"] is False
    assert all("description" in spec for spec in schema["properties"].values())

"""Registration through the entry point, option schemas, and the repository's configs."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import qbench.plugins
import yaml

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))
ADAPTERS = {"generic", "resnet", "vit", "zoo", "timm", "hf"}
DATASETS = {"imagenet", "imagenette", "tiny-imagenet", "imagefolder", "digits"}
#: Keys core owns in each section (core's schema adds them to every component's options).
CORE_KEYS = {
    "model": {"adapter": {"type": "string"}},
    "dataset": {
        "name": {"type": "string"},
        "batch_size": {"type": "integer", "minimum": 1},
        "limit": {"type": ["integer", "null"], "minimum": 1},
    },
}


def test_components_come_from_the_entry_point():
    for kind, names in (("adapter", ADAPTERS), ("dataset", DATASETS)):
        registry = qbench.plugins.registry(kind)
        assert names <= set(registry.names())
        for name in names:
            assert registry.plugin_of(name).distribution == "qbench-adapters"


def test_downloadable_datasets_have_download():
    for name in ("imagenette", "tiny-imagenet"):
        assert callable(qbench.plugins.get("dataset", name).download)
    assert not hasattr(qbench.plugins.get("dataset", "imagenet"), "download")


@pytest.mark.parametrize("kind", ["adapter", "dataset"])
def test_option_schemas_are_valid_and_closed(kind):
    names = ADAPTERS if kind == "adapter" else DATASETS
    for name in names:
        schema = qbench.plugins.get(kind, name).options_schema
        jsonschema.Draft202012Validator.check_schema(schema)
        assert schema.get("additionalProperties") is False, name  # typos are caught


def with_core_keys(schema: dict, section: str) -> dict:
    schema = copy.deepcopy(schema)
    schema["properties"].update(CORE_KEYS[section])
    return schema


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_configs_model_and_dataset_sections_fit_the_schemas(path):
    config = yaml.safe_load(path.read_text())
    adapter = qbench.plugins.get("adapter", config["model"]["adapter"])
    jsonschema.validate(config["model"], with_core_keys(adapter.options_schema, "model"))
    dataset = qbench.plugins.get("dataset", config["dataset"]["name"])
    jsonschema.validate(config["dataset"], with_core_keys(dataset.options_schema, "dataset"))


def test_the_expected_configs_exist():
    names = {p.stem for p in CONFIGS}
    headline = {"fp8_e5m2", "fp4_e2m1", "fp4_e3m0", "int8", "mxfp4_e2m1", "nvfp4"}
    assert {"quickstart", "fp8_e4m3_chunk128", "imagenet_fp8"} | headline <= names
    quickstart = yaml.safe_load((CONFIGS[0].parent / "quickstart.yaml").read_text())
    assert quickstart["model"] == {"adapter": "zoo", "name": "tiny_resnet"}
    assert quickstart["dataset"]["name"] == "digits"


def test_a_typo_in_options_is_rejected():
    schema = with_core_keys(qbench.plugins.get("dataset", "digits").options_schema, "dataset")
    with pytest.raises(jsonschema.ValidationError, match="splt"):
        jsonschema.validate({"name": "digits", "splt": "test"}, schema)


def test_registration_imports_no_heavy_modules():
    # `qbench validate` and `qbench schema` register every plugin; ours must stay cheap.
    code = (
        "import sys\n"
        "from qbench_adapters import plugin\n"
        "found = []\n"
        "plugin.qbench_register_adapters(register=found.append)\n"
        "plugin.qbench_register_datasets(register=found.append)\n"
        "[c.options_schema for c in found]\n"
        "print(sorted(m for m in ('torch', 'torchvision', 'PIL', 'numpy', 'sklearn', 'timm', 'transformers') if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_zoo_names_in_the_schema_match_the_zoo():
    from qbench_adapters import zoo
    from qbench_adapters.adapters import ZOO_IMAGE_SIZE, ZOO_MODELS

    assert ZOO_MODELS == tuple(zoo.MODELS) and ZOO_IMAGE_SIZE == zoo.IMAGE_SIZE

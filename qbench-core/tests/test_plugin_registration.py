"""What plugins register is checked when they register it, and registration order is fixed.

In-process plugins and fake entry points (no installs): the rules are those of
:class:`qbench.plugins.PluginHost`, whatever the source of the plugin.
"""

from __future__ import annotations

import json
import random

import pytest
import qbench.plugins as plugins
from core_toys import ToyAdapter, ToyDataset, ToyFormat, ToyMetric, toy_config
from qbench import hookimpl
from qbench.cli import main
from qbench.config import config_schema, load_config


class StrSchemaAdapter(ToyAdapter):
    name = "str_schema"
    options_schema = "str"


class BadSchemaDataset(ToyDataset):
    name = "bad_schema"
    options_schema = {"type": "object", "properties": {"split": {"type": "nope"}}}


class NoQuantizeFormat:
    name = "no_quantize"
    bits = 4
    max_value = 6.0


class TextBitsFormat(ToyFormat):
    def __init__(self) -> None:
        super().__init__("text_bits")
        self.bits = "four"
        self.round = "nearest"  # not a method


class NoUpdateMetric:
    name = "no_update"

    def attach(self, reference, quantized, context):
        pass

    def result(self):
        return {}


class NoWriteReporter:
    name = "no_write"


class NoBuildDataset:
    name = "no_build"


class NoBuildAdapter:
    name = "no_build_adapter"
    options_schema = {"type": "object"}


class GoodAdapter(ToyAdapter):
    name = "good_adapter"


class MixedPlugin:
    """One good component of each kind that has options, and broken ones beside them."""

    @hookimpl
    def qbench_register_formats(self, register):
        register(ToyFormat("good_fmt"))
        register(NoQuantizeFormat())
        register(TextBitsFormat())

    @hookimpl
    def qbench_register_adapters(self, register):
        register(GoodAdapter())
        register(StrSchemaAdapter())
        register(NoBuildAdapter())

    @hookimpl
    def qbench_register_datasets(self, register):
        register(BadSchemaDataset())
        register(NoBuildDataset())

    @hookimpl
    def qbench_register_metrics(self, register):
        register(NoUpdateMetric)

    @hookimpl
    def qbench_register_reporters(self, register):
        register(NoWriteReporter())


REFUSED = {
    "format": {"no_quantize": "has no quantize() method", "text_bits": "bits must be"},
    "adapter": {
        "str_schema": "options_schema must be a JSON-schema mapping, found str 'str'",
        "no_build_adapter": "has no build() method",
    },
    "dataset": {
        "bad_schema": "options_schema is not a valid JSON schema: at properties/split/type",
        "no_build": "has no build() method",
    },
    "metric": {"no_update": "has no update() method"},
    "reporter": {"no_write": "has no write() method"},
}


@pytest.fixture
def mixed(toy_plugins, capsys):
    info = toy_plugins.add_plugin(
        MixedPlugin(), "mixed", distribution="qbench-mixed", version="9.9"
    )
    yield info, capsys.readouterr().err


def test_bad_components_are_refused_and_recorded_against_their_plugin(mixed):
    info, err = mixed
    assert info.status == "broken"
    for kind, refused in REFUSED.items():
        for name, problem in refused.items():
            assert name not in plugins.registry(kind), (kind, name)
            assert f"{kind} {name!r} refused: {problem}" in info.error
            lines = [line for line in err.splitlines() if f"{kind} {name!r} refused" in line]
            assert len(lines) == 1 and "from qbench-mixed 9.9 is broken" in lines[0], err
    assert "text_bits" in info.error and "round must be a method" in info.error
    # the same plugin's good components, and every other plugin's, keep working
    assert info.components == {"format": ["good_fmt"], "adapter": ["good_adapter"]}
    assert plugins.get("format", "good_fmt").name == "good_fmt"
    assert plugins.get("adapter", "toy").name == "toy"


def test_schema_and_validation_keep_working_beside_a_broken_plugin(mixed, tmp_path, capsys):
    schema = config_schema()
    assert schema["properties"]["model"]["properties"]["adapter"]["enum"] == [
        "good_adapter",
        "toy",
    ]
    assert load_config(toy_config())["model"]["adapter"] == "toy"
    path = tmp_path / "ok.yaml"
    path.write_text(json.dumps(toy_config()))
    with pytest.raises(SystemExit) as exit_info:
        main(["validate", str(path)])
    assert exit_info.value.code == 0, capsys.readouterr().err


def test_plugins_command_lists_the_refused_components(mixed, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["plugins", "--json"])
    assert exit_info.value.code in (0, None)
    listing = {p["name"]: p for p in json.loads(capsys.readouterr().out)}
    entry = listing["mixed"]
    assert entry["status"] == "broken"
    assert entry["distribution"] == "qbench-mixed" and entry["version"] == "9.9"
    assert "adapter 'str_schema' refused" in entry["error"]
    assert entry["components"] == {"adapter": ["good_adapter"], "format": ["good_fmt"]}
    assert listing["toy"]["status"] == "ok"


def test_metric_schema_that_is_not_a_mapping_is_refused(toy_plugins, capsys):
    class ListSchemaMetric(ToyMetric):
        name = "list_schema"
        options_schema = ["not", "a", "schema"]

    class Plugin:
        @hookimpl
        def qbench_register_metrics(self, register):
            register(ListSchemaMetric)

    info = toy_plugins.add_plugin(Plugin(), "listy")
    assert "list_schema" not in plugins.registry("metric")
    assert "options_schema must be a JSON-schema mapping, found list" in info.error
    assert "list_schema" not in json.dumps(config_schema())


# -- deterministic order ----------------------------------------------------------------


class FakeDistribution:
    def __init__(self, name: str):
        self.metadata = {"Name": name}
        self.version = "1.0"


class FakeEntryPoint:
    def __init__(self, distribution: str, name: str):
        self.name = name
        self.value = f"{distribution.replace('-', '_')}:{name}"
        self.dist = FakeDistribution(distribution)

    def load(self):
        label = f"{self.dist.metadata['Name']}/{self.name}"

        class Plugin:
            @hookimpl
            def qbench_register_formats(self, register):
                register(ToyFormat("dupfmt"))
                own = ToyFormat(f"own_{label.replace('-', '_').replace('/', '_')}")
                register(own)

        return Plugin()


ENTRY_POINTS = [
    ("qbench-alpha", "a"),
    ("qbench-alpha", "b"),
    ("qbench-Beta", "a"),  # distribution names sort as PyPI normalizes them
    ("qbench_gamma", "a"),
    ("qbench-zeta", "a"),
]


@pytest.mark.parametrize("order", ["sorted", "reversed", "shuffled"])
def test_entry_points_are_registered_in_sorted_order(monkeypatch, capsys, order):
    found = [FakeEntryPoint(dist, name) for dist, name in ENTRY_POINTS]
    if order == "reversed":
        found.reverse()
    elif order == "shuffled":
        random.Random(3).shuffle(found)
        found = found[2:] + found[:2]
    monkeypatch.setattr(plugins.metadata, "entry_points", lambda group: list(found))
    monkeypatch.delenv(plugins.DISABLE_ENV, raising=False)
    host = plugins.PluginHost()
    host.discover()
    host.register_all()
    assert [(p.distribution, p.name) for p in host.plugins] == ENTRY_POINTS
    registry = host.registries["format"]
    # the first in that order wins; the others' registrations are refused, naming both
    assert registry._entries["dupfmt"].plugin.distribution == "qbench-alpha"
    assert registry._entries["dupfmt"].plugin.name == "a"
    assert host.plugins[0].error is None
    for later in host.plugins[1:]:
        assert later.error.startswith(
            "duplicate format 'dupfmt': registered by qbench-alpha 1.0 and again by "
            f"{later.distribution} 1.0"
        )
        assert later.components == {
            "format": [f"own_{later.distribution}_{later.name}".replace("-", "_")]
        }

"""Everything QBench reads off a format object is declared in ``qbench.types`` (Format,
BlockScaledFormat, FloatFields) and so documented in qbench-core's plugin guide
(``qbench-core/tests/test_protocol_docs.py`` holds the protocols to the README).

Formats are wrapped in a proxy that records every attribute read, then run through what
reads them: the quantizer (every mode, scale format and codes), the compliance audit,
config resolution and ``qbench formats``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import qbench
import qbench.plugins
import torch
from click.testing import CliRunner
from qbench import types
from qbench.spec import spec_from_arguments
from qbench.types import BatchOutputs, QuantSpec, Scaling

quantizer = pytest.importorskip("qbench_formats.quantizer")
compliance = pytest.importorskip("qbench_eval.compliance")
from qbench_formats import GridFormat  # noqa: E402


def _members() -> set[str]:
    members: set[str] = set()
    for protocol in types.FORMAT_PROTOCOLS:
        for cls in protocol.__mro__:
            if getattr(cls, "_is_protocol", False) and cls.__name__ != "Protocol":
                members |= set(getattr(cls, "__annotations__", {}))
                members |= {n for n, v in vars(cls).items() if callable(v)}
    return {m for m in members if not m.startswith("_")}


class Recording:
    """Forwards every attribute to ``inner`` and records its name."""

    def __init__(self, inner: Any, reads: set[str]):
        object.__setattr__(self, "_inner", inner)
        object.__setattr__(self, "_reads", reads)

    def __getattr__(self, name: str) -> Any:  # only for names the proxy itself lacks
        if not name.startswith("__"):
            self._reads.add(name)
        return getattr(self._inner, name)


class Levels(GridFormat):
    """A new kind of grid: {0, ±0.5, ±1, ±3}, nearest level."""

    name = "proto_levels"
    bits = 3

    def values(self) -> torch.Tensor:
        return torch.tensor([-3.0, -1.0, -0.5, 0.0, 0.5, 1.0, 3.0])

    def round(self, x, rounding="nearest_even", overflow="saturate", generator=None):  # noqa: ANN001, ANN201
        table = self.values().to(torch.float64)
        nearest = table[(x.to(torch.float64).unsqueeze(-1) - table).abs().argmin(-1)]
        return torch.where(torch.isnan(x), x, nearest.to(x.dtype))


READS: set[str] = set()
PROXIES = {
    "proto_levels": Recording(Levels(), READS),
    "proto_fp8": None,  # filled with the built-in fp8_e4m3 once the registry is up
    "proto_mx": None,  # and the mxfp4_e2m1 preset
}


class _Plugin:
    @staticmethod
    @qbench.hookimpl
    def qbench_register_formats(register: Any) -> None:
        for name, proxy in PROXIES.items():
            register(proxy, name=name)


@pytest.fixture(scope="module", autouse=True)
def registered() -> Iterator[None]:
    PROXIES["proto_fp8"] = Recording(qbench.get_format("fp8_e4m3"), READS)
    PROXIES["proto_mx"] = Recording(qbench.get_format("mxfp4_e2m1"), READS)
    qbench.plugins.register_plugin(_Plugin, "format-protocol-usage")
    yield
    qbench.plugins.unregister_plugin("format-protocol-usage")


def _exercise(name: str) -> None:
    proxy = qbench.get_format(name)
    torch.manual_seed(0)
    x = torch.randn(4, 40) * 3
    metric = compliance.ComplianceMetric(None)
    preparation = {"quantized": [{"name": "fc", "type": "Linear", "roles": {"weight": ""}}]}
    metric.attach(None, None, {"preparation": preparation, "config_dir": "."})
    scalings = [
        Scaling(),
        Scaling(mode="channel", axis=0),
        Scaling(mode="chunk", chunk_size=16, scale_format="e8m0"),
        Scaling(mode="chunk", chunk_size=16, scale_format="fp8_e4m3", second_level="fp32"),
    ]
    for scaling in scalings:
        for path in ("auto", "reference"):
            spec = QuantSpec(name, scaling)
            result = quantizer.quantize(proxy, x, spec, return_codes=True, path=path)
            metric.on_tensor("fc", "weight", result)
            quantizer.quantize(proxy, x, spec, path=path)
    metric.update(BatchOutputs(torch.zeros(1), torch.zeros(1, 1), torch.zeros(1, 1)))
    assert metric.result()["status"] == "PASS", metric.result()["failures"]
    spec_from_arguments(name)
    qbench.spec.role_spec({"format": name}, "weight")
    from qbench.cli import cli

    listing = CliRunner().invoke(cli, ["formats", name])
    assert listing.exit_code == 0, listing.output


def test_everything_read_off_a_format_is_declared_in_the_protocols() -> None:
    for name in PROXIES:
        _exercise(name)
    # the proxies really saw the reads (a proxy that saw nothing would prove nothing)
    assert {"max_value", "values", "round", "decode", "bits", "element_format"} <= READS
    undeclared = READS - _members()
    assert not undeclared, f"read off formats but not declared in qbench.types: {undeclared}"

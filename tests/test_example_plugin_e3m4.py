"""The example plugin's ``fp8_e3m4`` is the usual, IEEE-like E3M4 (``ml_dtypes.float8_e3m4``:
bias 3, max 15.5, inf and NaN in exponent field 111), checked on every code point."""

from __future__ import annotations

import sys

import pytest
import torch
from integration_helpers import REPO

ml_dtypes = pytest.importorskip("ml_dtypes")
np = pytest.importorskip("numpy")

sys.path.insert(0, str(REPO / "examples" / "qbench-example-formats" / "src"))
from qbench_example_formats import FORMATS  # noqa: E402

E3M4 = next(fmt for fmt in FORMATS if fmt.name == "fp8_e3m4")
ML_E3M4 = ml_dtypes.float8_e3m4


def _ml_decoded() -> torch.Tensor:
    return torch.from_numpy(np.arange(256, dtype=np.uint8).view(ML_E3M4).astype(np.float32))


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.view(torch.int32) == b.view(torch.int32)) | (torch.isnan(a) & torch.isnan(b))


def test_facts_match_ml_dtypes() -> None:
    info = ml_dtypes.finfo(ML_E3M4)
    assert E3M4.bits == 8 and E3M4.has_inf and E3M4.has_nan
    assert E3M4.max_value == float(info.max) == 15.5
    assert E3M4.min_normal == float(info.smallest_normal)
    assert E3M4.min_subnormal == float(info.smallest_subnormal)


def test_every_code_decodes_as_ml_dtypes() -> None:
    codes = torch.arange(256, dtype=torch.int32)
    mine, theirs = E3M4.decode(codes), _ml_decoded()
    assert bool(_same_bits(mine, theirs).all()), codes[~_same_bits(mine, theirs)].tolist()
    finite = theirs[torch.isfinite(theirs)].double().unique().float()
    assert torch.equal(E3M4.values(), finite)


def test_every_finite_value_encodes_to_its_ml_dtypes_code() -> None:
    values = _ml_decoded()
    finite = torch.isfinite(values)
    codes = torch.arange(256, dtype=torch.int32)
    assert torch.equal(E3M4.encode(values[finite]), codes[finite])
    infinities = torch.tensor([float("inf"), float("-inf")])
    assert E3M4.encode_grid(infinities).tolist() == [0x70, 0xF0]


def _probes() -> torch.Tensor:
    """Every value, every midpoint between neighbours (the ties), one float32 ulp either side
    of each, values past max (15.75 is the tie between 15.5 and the first value out of
    range), ±inf, NaN and ±0."""
    values = _ml_decoded()
    grid = values[torch.isfinite(values)].double().unique()
    beyond = torch.tensor([15.75, 16.0, 100.0], dtype=torch.float64)
    grid = torch.cat([grid, beyond, -beyond])
    grid = grid.sort().values
    mids = ((grid[1:] + grid[:-1]) / 2).float()
    probes = torch.cat([grid.float(), mids])
    up = torch.nextafter(probes, torch.tensor(float("inf")))
    down = torch.nextafter(probes, torch.tensor(float("-inf")))
    specials = torch.tensor([float("inf"), float("-inf"), float("nan"), 0.0, -0.0])
    return torch.cat([probes, up, down, specials])


@pytest.mark.parametrize("path", ["auto", "reference"])
def test_rounding_matches_ml_dtypes_at_ties_and_between(path: str) -> None:
    x = _probes()
    with np.errstate(invalid="ignore", over="ignore"):
        theirs = torch.from_numpy(x.numpy().astype(ML_E3M4).astype(np.float32))
    # ml_dtypes overflows to inf, as IEEE: QBench's overflow="format"
    mine = E3M4.round(x, "nearest_even", "format", path=path)
    bad = ~_same_bits(mine, theirs)
    assert not bool(bad.any()), list(zip(x[bad].tolist(), mine[bad].tolist(), theirs[bad].tolist()))
    # the default overflow saturates to ±max instead
    saturated = E3M4.round(torch.tensor([16.0, -100.0, float("inf")]), path=path)
    assert saturated.tolist() == [15.5, -15.5, 15.5]

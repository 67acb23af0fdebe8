"""Every named format and preset QBench ships, as data."""

from __future__ import annotations

from qbench.types import Scaling

from .families import FloatFormat, IntFormat, LutFormat
from .presets import BlockPreset

# OCP 8-bit Floating Point Specification (OFP8) rev 1.0, table 1: E4M3 has no inf and NaN
# only at S.1111.111 (max 448); E5M2 is IEEE-like (max 57344).
FP8_E4M3 = FloatFormat("fp8_e4m3", 4, 3, 7, "fn", description="OCP FP8 E4M3 (E4M3FN)")
FP8_E5M2 = FloatFormat("fp8_e5m2", 5, 2, 15, "ieee", description="OCP FP8 E5M2 (IEEE-like)")
# GraphCore/AMD "fnuz" variants (as ml_dtypes float8_e4m3fnuz / float8_e5m2fnuz): bias one
# higher, no inf, no -0, NaN at 0x80.
FP8_E4M3FNUZ = FloatFormat("fp8_e4m3fnuz", 4, 3, 8, "fnuz", description="FP8 E4M3, fnuz encoding")
FP8_E5M2FNUZ = FloatFormat("fp8_e5m2fnuz", 5, 2, 16, "fnuz", description="FP8 E5M2, fnuz encoding")
# OCP Microscaling Formats (MX) v1.0 §5.3: FP6 and FP4 elements have no inf and no NaN.
FP6_E2M3 = FloatFormat("fp6_e2m3", 2, 3, 1, "none", description="OCP MX FP6 E2M3 (max 7.5)")
FP6_E3M2 = FloatFormat("fp6_e3m2", 3, 2, 3, "none", description="OCP MX FP6 E3M2 (max 28)")
FP4_E2M1 = FloatFormat("fp4_e2m1", 2, 1, 1, "none", description="OCP MX FP4 E2M1 (max 6)")
# No standard defines FP4 E3M0; QBench's: bias 3, no inf/NaN: ±{0, 0.25, 0.5, 1, 2, 4, 8, 16}.
FP4_E3M0 = FloatFormat("fp4_e3m0", 3, 0, 3, "none", description="FP4 E3M0, powers of two")
INT8 = IntFormat("int8", 8, description="symmetric int8, -127...127")
INT4 = IntFormat("int4", 4, description="symmetric int4, -7...7")
# OCP MX v1.0 §5.4: MXINT8's element is 8-bit two's complement with an implicit 2^-6.
MXINT8_ELEMENT = IntFormat("mxint8_element", 8, -6, description="k/64, k in -127...127 (MXINT8)")
# OCP MX v1.0 §5.4: E8M0 scale, 2^-127...2^127, NaN 0xFF, no zero, no sign.
E8M0 = FloatFormat(
    "e8m0",
    8,
    0,
    127,
    "fn",
    signed=False,
    subnormals=False,
    description="OCP MX shared scale",
    kind="scale",
)
FP32 = FloatFormat("fp32", 8, 23, 127, "ieee", description="IEEE 754 binary32", kind="scale")
# QLoRA (Dettmers et al. 2023), appendix E: the 16 NormalFloat4 levels.
NF4 = LutFormat(
    "nf4",
    (
        -1.0,
        -0.6961928009986877,
        -0.5250730514526367,
        -0.39491748809814453,
        -0.28444138169288635,
        -0.18477343022823334,
        -0.09105003625154495,
        0.0,
        0.07958029955625534,
        0.16093020141124725,
        0.24611230194568634,
        0.33791524171829224,
        0.44070982933044434,
        0.5626170039176941,
        0.7229568362236023,
        1.0,
    ),
    description="QLoRA NormalFloat4 lookup table",
)

ELEMENT_FORMATS = (
    FP8_E4M3,
    FP8_E4M3FNUZ,
    FP8_E5M2,
    FP8_E5M2FNUZ,
    FP6_E2M3,
    FP6_E3M2,
    FP4_E2M1,
    FP4_E3M0,
    INT8,
    INT4,
    MXINT8_ELEMENT,
    NF4,
    E8M0,
    FP32,
)

# OCP MX v1.0 §6: blocks of 32 along the last axis, one E8M0 scale each.
_MX = Scaling(mode="chunk", chunk_size=32, axis=-1, scale_format="e8m0")


def _mx(name: str, element: object) -> BlockPreset:
    return BlockPreset(name, element, _MX, 8, description=f"OCP MX v1.0 {name.upper()}")


PRESETS = (
    _mx("mxfp8_e4m3", FP8_E4M3),
    _mx("mxfp8_e5m2", FP8_E5M2),
    _mx("mxfp6_e2m3", FP6_E2M3),
    _mx("mxfp6_e3m2", FP6_E3M2),
    _mx("mxfp4_e2m1", FP4_E2M1),
    _mx("mxint8", MXINT8_ELEMENT),
    # NVIDIA NVFP4: E2M1 elements, blocks of 16, E4M3 block scales, fp32 per-tensor scale.
    BlockPreset(
        "nvfp4",
        FP4_E2M1,
        Scaling(mode="chunk", chunk_size=16, axis=-1, scale_format="fp8_e4m3", second_level="fp32"),
        8,
        description="NVIDIA NVFP4 (E2M1, 16-blocks, E4M3 scales, fp32 tensor scale)",
    ),
)

ALL_FORMATS = ELEMENT_FORMATS + PRESETS
BY_NAME = {fmt.name: fmt for fmt in ALL_FORMATS}

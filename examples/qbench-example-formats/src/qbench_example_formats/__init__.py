"""Two extra formats for QBench, declared as data on qbench-formats' float family."""

from qbench import hookimpl
from qbench_formats.families import FloatFormat

FORMATS = (
    # IEEE-like E3M4, as ml_dtypes.float8_e3m4: bias 3, exponent field 111 holds inf
    # (mantissa 0) and NaN (mantissa != 0), so the largest finite value is 2^3 * 1.9375 = 15.5.
    FloatFormat(
        name="fp8_e3m4",
        exponent_bits=3,
        mantissa_bits=4,
        bias=3,
        special="ieee",
        description="8-bit float E3M4, IEEE-like: max 15.5, inf and NaN (example plugin)",
    ),
    FloatFormat(
        name="fp5_e2m2",
        exponent_bits=2,
        mantissa_bits=2,
        bias=1,
        special="none",
        description="5-bit float E2M2 without inf/NaN (example plugin)",
    ),
)


@hookimpl
def qbench_register_formats(register):
    for fmt in FORMATS:
        register(fmt)

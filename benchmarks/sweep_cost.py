"""What a sweep of N configs costs, in FP32 passes over the data (results: benchmarks/README.md).

A sweep runs every config's twin beside one FP32 forward per batch. With ``c`` the cost of
one twin beside the FP32 model (a one-config run's time, less the plain FP32 loop's, over
the plain loop's), N separate runs cost ``N (1 + c)`` FP32 passes and the sweep should cost
at most ``1 + N c``. This prints all three, measured in one process on the same built model
and data (model building and imports excluded from every figure), best of ``--repeats``.

    .venv/bin/python benchmarks/sweep_cost.py                      # configs/sweep_demo.yaml
    .venv/bin/python benchmarks/sweep_cost.py --configs 4 --repeats 3
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from qbench.config import load_config
from qbench.runner import build_reference, plan_twin, run_twins
from qbench.sweep import expand

REPO = Path(__file__).resolve().parents[1]


def plain_pass(reference) -> float:
    start = time.perf_counter()
    with torch.no_grad():
        for inputs, _ in reference.batches:
            reference.model(inputs.to(reference.dev))
    return time.perf_counter() - start


def twins_pass(reference, configs, output: Path) -> float:
    twins = [plan_twin(reference, cfg, output=output, overwrite=True) for cfg in configs]
    start = time.perf_counter()
    run_twins(reference, twins)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "sweep_demo.yaml"))
    parser.add_argument("--configs", type=int, default=8, help="N: the first N configs of the grid")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--output", default="/tmp/qbench-sweep-cost")
    args = parser.parse_args()

    configs = [cfg for cfg, _ in expand(load_config(args.config))][: args.configs]
    for cfg in configs:  # plain JSON reports: the figure is the run, not the HTML
        cfg.data["output"]["reporters"] = ["json"]
    n = len(configs)
    reference = build_reference(configs[0], limit=args.limit)
    output = Path(args.output)
    plain_pass(reference)  # warm-up: data pipeline, allocator
    fp32 = min(plain_pass(reference) for _ in range(args.repeats))
    single = [
        min(twins_pass(reference, [cfg], output) for _ in range(args.repeats)) for cfg in configs
    ]
    sweep = min(twins_pass(reference, configs, output) for _ in range(args.repeats))
    twin_costs = [(t - fp32) / fp32 for t in single]
    bound = 1 + sum(twin_costs)
    separate = sum(single) / fp32
    print(f"{n} configs of {args.config}, {reference.total} batches; plain FP32 pass {fp32:.3f} s")
    print(f"twin cost c per config (FP32 passes): {', '.join(f'{c:.2f}' for c in twin_costs)}")
    print(f"N separate runs: {separate:.2f} FP32 passes (N (1 + c))")
    print(f"sweep:           {sweep / fp32:.2f} FP32 passes (bound 1 + N c = {bound:.2f})")
    print(
        f"sweep / separate runs: {sweep / sum(single):.3f}; "
        f"sweep within the bound: {'yes' if sweep / fp32 <= bound * 1.05 else 'NO'} (5 % noise)"
    )


if __name__ == "__main__":
    main()

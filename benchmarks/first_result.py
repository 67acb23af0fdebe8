"""Time to first result: a fresh-process ``qbench run`` ÷ a plain FP32 evaluation script.

For each model (timm ``tf_efficientnet_b0`` and torchvision ``resnet18``, random weights, 2
classes), both sides run in a fresh Python process over the same folder of random 256x256
PNGs (32 by default), and both include their imports, the model's construction and the
reading of the images: the plain script decodes, transforms and classifies them; ``qbench
run`` does that for the FP32 model and its fp8_e4m3 chunk-128 twin with all three metrics and
writes its reports. ``qbench run`` runs twice: first with an empty compile cache (cold: a new
``QBENCH_CACHE_DIR``), then again with the cache the first run left (warm). Printed per model:
wall time of each, the ratios (targets: <= 3 warm, <= 6 cold), the peak resident memory of
each process and its ratio (target <= 2), and where a run's time went (the report's
``timings``).

    .venv/bin/python benchmarks/first_result.py [--models tf_efficientnet_b0,resnet18]
        [--images 32] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_WARM, TARGET_COLD, TARGET_MEMORY = 3.0, 6.0, 2.0

#: The child wrapper: run a module or a script, then print this process's peak RSS (KiB).
_MEASURED = """
import resource, runpy, sys
kind, target, *argv = sys.argv[1:]
sys.argv = [target, *argv]
try:
    if kind == "module":
        runpy.run_module(target, run_name="__main__")
    else:
        runpy.run_path(target, run_name="__main__")
except SystemExit as exc:
    code = exc.code
else:
    code = 0
print("PEAK_RSS_KIB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)
sys.exit(code)
"""

#: The plain FP32 evaluation script a researcher would write (same model, same images).
_PLAIN = """
import sys
from pathlib import Path

import torch
from PIL import Image

model_name, root, batch_size = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
torch.manual_seed(0)
if model_name == "resnet18":
    import torchvision
    from torchvision import transforms

    model = torchvision.models.resnet18(weights=None, num_classes=2).eval()
    transform = transforms.Compose([
        transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
        transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    ])
else:
    import timm

    model = timm.create_model(model_name, pretrained=False, num_classes=2).eval()
    config = timm.data.resolve_data_config({}, model=model)
    transform = timm.data.create_transform(**config)
files = sorted((p, i) for i, d in enumerate(sorted(root.iterdir())) for p in sorted(d.iterdir()))
correct = 0
with torch.no_grad():
    for start in range(0, len(files), batch_size):
        chunk = files[start : start + batch_size]
        x = torch.stack([transform(Image.open(p).convert("RGB")) for p, _ in chunk])
        y = torch.tensor([label for _, label in chunk])
        correct += int((model(x).argmax(1) == y).sum())
print(f"top-1 {correct / len(files):.4f} on {len(files)} images")
"""


def _images(root: Path, count: int) -> Path:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(count):
        folder = root / f"class{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
        Image.fromarray(pixels, "RGB").save(folder / f"{i:04d}.png")
    return root


def _run(args: list[str], env: dict[str, str]) -> tuple[float, int, str]:
    """Wall seconds, peak RSS (KiB) and stdout of one fresh process."""
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", _MEASURED, *args], env=env, capture_output=True, text=True
    )
    wall = time.perf_counter() - start
    if done.returncode not in (0, 3):  # 3: the run finished and an audit said FAIL
        raise SystemExit(f"{' '.join(args[:3])} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    peak = next(
        int(line.split()[1]) for line in done.stderr.splitlines() if line.startswith("PEAK_RSS")
    )
    return wall, peak, done.stdout


def _config(model: str, root: Path, batch_size: int, out: Path) -> dict[str, object]:
    if model == "resnet18":
        spec: dict[str, object] = {
            "adapter": "resnet",
            "name": "resnet18",
            "weights": "none",
            "num_classes": 2,
        }
    else:
        spec = {"adapter": "timm", "name": model, "weights": "none", "num_classes": 2}
    return {
        "name": f"first_{model}",
        "model": spec,
        "dataset": {"name": "imagefolder", "root": str(root), "batch_size": batch_size},
        "quantization": {"format": "fp8_e4m3", "mode": "chunk", "chunk_size": 128},
        "evaluation": {"metrics": ["accuracy", "layerwise", "compliance"]},
        "output": {"dir": str(out)},
    }


def measure(model: str, images: int, batch_size: int, work: Path) -> None:
    root = _images(work / "images", images)
    script = work / "plain.py"
    script.write_text(_PLAIN)
    env = {**os.environ}
    plain, plain_rss, _ = _run(["script", str(script), model, str(root), str(batch_size)], env)
    config = work / f"{model}.json"  # JSON is YAML
    config.write_text(json.dumps(_config(model, root, batch_size, work / "reports")))
    env["QBENCH_CACHE_DIR"] = str(work / "cache")  # empty: the first run is cold
    env.pop("TORCHINDUCTOR_CACHE_DIR", None)
    command = ["module", "qbench.cli", "run", str(config), "--no-progress", "--overwrite"]
    cold, cold_rss, _ = _run(command, env)
    warm, warm_rss, _ = _run(command, env)
    report = json.loads(
        (
            work / "reports" / _model_folder(work / "reports") / f"first_{model}" / "report.json"
        ).read_text()
    )
    timings = report.get("timings") or {}
    print(
        f"{model:18s} plain {plain:5.1f} s  qbench run cold {cold:5.1f} s ({cold / plain:4.2f}x, "
        f"target <= {TARGET_COLD}: {'met' if cold / plain <= TARGET_COLD else 'NOT met'})  "
        f"warm {warm:5.1f} s ({warm / plain:4.2f}x, target <= {TARGET_WARM}: "
        f"{'met' if warm / plain <= TARGET_WARM else 'NOT met'})"
    )
    memory = max(cold_rss, warm_rss) / plain_rss
    print(
        f"{'':18s} peak RSS plain {plain_rss / 1024:6.0f} MiB, run {warm_rss / 1024:6.0f} MiB "
        f"warm / {cold_rss / 1024:6.0f} MiB cold ({memory:4.2f}x, target <= {TARGET_MEMORY}: "
        f"{'met' if memory <= TARGET_MEMORY else 'NOT met'})"
    )
    if timings:
        parts = ", ".join(f"{k} {v:.2f} s" for k, v in timings.items())
        print(f"{'':18s} warm run: {parts}; imports and start-up the rest of {warm:.1f} s")


def _model_folder(reports: Path) -> str:
    return next(p.name for p in reports.iterdir() if p.is_dir())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tf_efficientnet_b0,resnet18")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    print(
        f"fresh-process qbench run / plain FP32 script, {args.images} random 256x256 images, "
        f"batch {args.batch_size}, fp8_e4m3 chunk128, all three metrics"
    )
    for model in args.models.split(","):
        with tempfile.TemporaryDirectory(prefix="qbench-first-") as folder:
            measure(model, args.images, args.batch_size, Path(folder))


if __name__ == "__main__":
    main()

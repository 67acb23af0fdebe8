"""Train QBench's zoo models on the digits train split and write their shipped weights.

    .venv/bin/python qbench-adapters/scripts/train_zoo.py            # all three, ~1-3 min CPU
    .venv/bin/python qbench-adapters/scripts/train_zoo.py tiny_vit   # one of them

Deterministic: fixed seeds, one CPU thread, deterministic algorithms, data in the fixed order
of qbench_adapters.digits. Images come through the same path QBench evaluates them with
(digits dataset -> zoo adapter transform), so training and evaluation inputs are identical.
Writes src/qbench_adapters/zoo_weights/<name>.safetensors (state_dict + factory metadata) and
prints the FP32 test accuracy of each model, measured by the same dataset code QBench runs.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from qbench_adapters import zoo
from qbench_adapters.adapters import ZooAdapter
from qbench_adapters.checkpoints import save_with_factory
from qbench_adapters.digits import DigitsDataset

OUT_DIR = Path(__file__).resolve().parents[1] / "src" / "qbench_adapters" / "zoo_weights"

#: Per-model recipe: epochs, peak learning rate, weight decay. AdamW with a cosine schedule and
#: a one-epoch linear warm-up; ViTs want a lower rate and more epochs than the CNNs.
RECIPES = {
    "tiny_cnn": {"epochs": 30, "lr": 3e-3, "weight_decay": 1e-4},
    "tiny_resnet": {"epochs": 30, "lr": 3e-3, "weight_decay": 1e-4},
    "tiny_vit": {"epochs": 80, "lr": 2e-3, "weight_decay": 0.05},
}
BATCH_SIZE = 64
SEED = 0


def load(split: str, model_name: str) -> tuple[torch.Tensor, torch.Tensor]:
    bundle = ZooAdapter().build({"name": model_name, "weights": "none"})
    batches = DigitsDataset().build({"split": split, "batch_size": 512}, bundle=bundle)
    xs, ys = zip(*batches, strict=True)
    return torch.cat(xs), torch.cat(ys)


def shift(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random translation by up to one pixel each way (zero fill): digits are not centred
    identically, so this is the one augmentation that matches the data."""
    padded = F.pad(images, (1, 1, 1, 1))
    offsets = torch.randint(0, 3, (images.shape[0], 2), generator=generator)
    out = torch.empty_like(images)
    for dy in range(3):
        for dx in range(3):
            mask = (offsets[:, 0] == dy) & (offsets[:, 1] == dx)
            out[mask] = padded[mask, :, dy : dy + 8, dx : dx + 8]
    return out


@torch.no_grad()
def accuracy(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    model.eval()
    return (model(images).argmax(1) == labels).float().mean().item()


def train(model_name: str) -> float:
    recipe = RECIPES[model_name]
    x_train, y_train = load("train", model_name)
    x_test, y_test = load("test", model_name)
    model = zoo.build(model_name, seed=SEED)
    generator = torch.Generator().manual_seed(SEED)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=recipe["lr"], weight_decay=recipe["weight_decay"]
    )
    steps_per_epoch = math.ceil(len(x_train) / BATCH_SIZE)
    total = recipe["epochs"] * steps_per_epoch

    def lr_at(step: int) -> float:
        if step < steps_per_epoch:
            return (step + 1) / steps_per_epoch
        return 0.5 * (1 + math.cos(math.pi * (step - steps_per_epoch) / (total - steps_per_epoch)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    start = time.perf_counter()
    for epoch in range(recipe["epochs"]):
        model.train()
        order = torch.randperm(len(x_train), generator=generator)
        for i in range(0, len(order), BATCH_SIZE):
            index = order[i : i + BATCH_SIZE]
            loss = F.cross_entropy(
                model(shift(x_train[index], generator)), y_train[index], label_smoothing=0.1
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
        if (epoch + 1) % 10 == 0:
            print(
                f"{model_name} epoch {epoch + 1}: loss {loss.item():.3f} "
                f"test acc {accuracy(model, x_test, y_test):.4f}",
                flush=True,
            )
    model.eval()
    test_acc = accuracy(model, x_test, y_test)
    path = OUT_DIR / f"{model_name}.safetensors"
    save_with_factory(model, path, f"qbench_adapters.zoo:{model_name}")
    print(
        f"{model_name}: {zoo.count_parameters(model)} parameters, {path.stat().st_size} bytes, "
        f"test accuracy {test_acc:.4f} ({time.perf_counter() - start:.0f} s)",
        flush=True,
    )
    return test_acc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", help=f"any of {', '.join(zoo.MODELS)} (default: all)")
    args = parser.parse_args(argv)
    unknown = [m for m in args.models if m not in zoo.MODELS]
    if unknown:
        parser.error(
            f"unknown zoo model(s) {', '.join(unknown)}; choose from {', '.join(zoo.MODELS)}"
        )
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    for name in args.models or list(zoo.MODELS):
        train(name)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""BatchNorm folding (qbench_ops.folding): the folded model computes what the original
computes, every foldable BatchNorm is folded, the others are reported with a reason, and the
original model is never touched."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from ops_inputs import image_like
from qbench.errors import QBenchError
from qbench_ops.folding import fold_batchnorm
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


def randomize_statistics(model: nn.Module, seed: int = 0) -> nn.Module:
    """Running statistics and affine parameters far from the identity, so a wrong fold shows."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, _BatchNorm) and module.running_mean is not None:
                n = module.num_features
                module.running_mean.copy_(torch.randn(n, generator=generator))
                module.running_var.copy_(torch.rand(n, generator=generator) * 2.0 + 0.25)
                if module.weight is not None:
                    module.weight.copy_(torch.rand(n, generator=generator) * 1.5 + 0.25)
                    module.bias.copy_(torch.randn(n, generator=generator) * 0.5)
    return model.eval()


def snapshot(model: nn.Module) -> tuple[dict[str, torch.Tensor], list[tuple[str, type]]]:
    state = {name: value.detach().clone() for name, value in model.state_dict().items()}
    return state, [(name, type(module)) for name, module in model.named_modules()]


def assert_untouched(model: nn.Module, before: tuple) -> None:
    state, structure = before
    after = model.state_dict()
    assert after.keys() == state.keys()
    for name, value in state.items():
        assert torch.equal(after[name], value), name
    assert [(name, type(module)) for name, module in model.named_modules()] == structure


def assert_same_output(reference: torch.Tensor, folded: torch.Tensor) -> None:
    # float32 tolerance, relative to the output's scale: folding reorders the arithmetic
    scale = float(reference.abs().max())
    torch.testing.assert_close(folded, reference, rtol=1e-4, atol=1e-5 * scale)


def batchnorm_names(model: nn.Module) -> list[str]:
    return [name for name, module in model.named_modules() if isinstance(module, _BatchNorm)]


def folds(report: list[dict]) -> dict[str, str]:
    return {entry["bn"]: entry["conv"] for entry in report if "conv" in entry}


def reasons(report: list[dict]) -> dict[str, str]:
    return {entry["bn"]: entry["reason"] for entry in report if "reason" in entry}


# ---------------------------------------------------------------------------------------
# Real models: every BatchNorm follows a conv
# ---------------------------------------------------------------------------------------


def resnet18() -> nn.Module:
    torchvision = pytest.importorskip("torchvision")
    return torchvision.models.resnet18()


def mobilenet_v3_small() -> nn.Module:
    torchvision = pytest.importorskip("torchvision")
    return torchvision.models.mobilenet_v3_small()


def tf_efficientnet_b0() -> nn.Module:
    timm = pytest.importorskip("timm")
    return timm.create_model("tf_efficientnet_b0", pretrained=False)


# a few pairs each model must report, named as the model names them
EXPECTED_PAIRS = {
    resnet18: {
        "bn1": "conv1",
        "layer1.0.bn2": "layer1.0.conv2",
        "layer2.0.downsample.1": "layer2.0.downsample.0",
    },
    mobilenet_v3_small: {"features.0.1": "features.0.0", "features.12.1": "features.12.0"},
    tf_efficientnet_b0: {
        "bn1": "conv_stem",
        "blocks.1.0.bn2": "blocks.1.0.conv_dw",
        "bn2": "conv_head",
    },
}


@pytest.mark.parametrize(
    "build", [resnet18, mobilenet_v3_small, tf_efficientnet_b0], ids=lambda b: b.__name__
)
@pytest.mark.parametrize("method", ["fx", "hooks"])
def test_real_models_fold_every_batchnorm(build, method: str) -> None:
    torch.manual_seed(0)
    model = randomize_statistics(build())
    images = image_like(2, 64, seed=1)
    before = snapshot(model)
    expected = batchnorm_names(model)

    folded, report = fold_batchnorm(model, images, method=method)

    assert reasons(report) == {}
    assert sorted(folds(report)) == sorted(expected)  # every BatchNorm, counted by name
    assert len(report) == len(expected)
    assert batchnorm_names(folded) == []
    for bn_name, conv_name in EXPECTED_PAIRS[build].items():
        assert folds(report)[bn_name] == conv_name
    with torch.no_grad():
        assert_same_output(model(images), folded(images))
    assert_untouched(model, before)


def test_timm_subclasses_keep_their_forward_and_activation() -> None:
    pytest.importorskip("timm")
    from timm.layers import BatchNormAct2d
    from timm.layers.conv2d_same import Conv2dSame

    model = randomize_statistics(tf_efficientnet_b0())
    assert isinstance(model.conv_stem, Conv2dSame) and isinstance(model.bn1, BatchNormAct2d)
    stem_bn = model.bn1
    folded, _ = fold_batchnorm(model)  # traces: no example inputs needed for convs

    # Conv2dSame stays itself (its "same" padding still runs); only weight and bias change
    assert type(folded.conv_stem) is Conv2dSame
    assert folded.conv_stem.bias is not None and model.conv_stem.bias is None
    # BatchNormAct2d: normalization gone, its activation kept; no activation -> Identity
    assert isinstance(folded.bn1, nn.Sequential) and isinstance(folded.bn1[0], nn.SiLU)
    assert type(folded.blocks[0][0].bn2) is nn.Identity  # apply_act=False in the block
    assert model.bn1 is stem_bn and isinstance(model.bn1, BatchNormAct2d)


def test_fx_without_example_inputs_folds_convs() -> None:
    model = randomize_statistics(resnet18())
    folded, report = fold_batchnorm(model)
    assert len(folds(report)) == len(batchnorm_names(model)) == 20
    images = image_like(1, 48, seed=2)
    with torch.no_grad():
        assert_same_output(model(images), folded(images))


# ---------------------------------------------------------------------------------------
# A small model with BatchNorms that must be left
# ---------------------------------------------------------------------------------------


class Mixed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.input_bn = nn.BatchNorm2d(3)  # normalizes the input: no conv before it
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(8)  # conv2's output is also the residual branch
        self.post_act_bn = nn.BatchNorm2d(8)  # after a ReLU: not foldable
        self.fc = nn.Linear(8, 6)
        self.fc_bn = nn.BatchNorm1d(6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(self.input_bn(x))))
        z = self.conv2(y)
        y = self.post_act_bn(F.relu(self.bn2(z) + z))
        return self.fc_bn(self.fc(y.mean(dim=(2, 3))))


class Branchy(Mixed):
    """Mixed with data-dependent control flow: torch.fx cannot trace it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # data-dependent: fx raises a TraceError here
            x = x * 1.5
        return super().forward(x)


MIXED_FOLDS = {"bn1": "conv1", "fc_bn": "fc"}


@pytest.mark.parametrize("model_class", [Mixed, Branchy])
def test_batchnorms_without_a_sole_conv_producer_are_left_with_reasons(model_class) -> None:
    torch.manual_seed(0)
    model = randomize_statistics(model_class())
    x = torch.randn(4, 3, 10, 10) + 0.5
    before = snapshot(model)

    folded, report = fold_batchnorm(model, x)

    assert [entry["bn"] for entry in report] == batchnorm_names(model)
    assert folds(report) == MIXED_FOLDS
    why = reasons(report)
    assert set(why) == {"input_bn", "bn2", "post_act_bn"}
    if model_class is Mixed:  # the graph names the producer
        assert "does not follow a conv or linear" in why["input_bn"]
        assert "relu" in why["post_act_bn"]
        assert "also used by" in why["bn2"] and "add" in why["bn2"]
    else:  # module order proposed conv2/bn2; the forward pass saw the other use
        assert "does not follow a conv or linear" in why["input_bn"]
        assert "in module order" in why["post_act_bn"]
        assert "also read by" in why["bn2"]
    assert isinstance(folded.bn1, nn.Identity) and isinstance(folded.fc_bn, nn.Identity)
    assert isinstance(folded.input_bn, nn.BatchNorm2d) and isinstance(folded.bn2, nn.BatchNorm2d)
    with torch.no_grad():
        assert_same_output(model(x), folded(x))
    assert_untouched(model, before)


def test_untraceable_model_needs_example_inputs() -> None:
    model = randomize_statistics(Branchy())
    folded, report = fold_batchnorm(model)
    assert folds(report) == {}
    why = reasons(report)
    assert "not traceable by torch.fx" in why["bn1"] and "example_inputs" in why["bn1"]
    assert isinstance(folded.bn1, nn.BatchNorm2d)
    with pytest.raises(QBenchError, match="not traceable by torch.fx"):
        fold_batchnorm(model, method="fx")


def test_linear_pair_needs_a_forward_to_confirm_the_features_axis() -> None:
    model = randomize_statistics(Mixed())
    _, report = fold_batchnorm(model)  # traced, but no example inputs
    assert folds(report) == {"bn1": "conv1"}
    assert "example_inputs" in reasons(report)["fc_bn"]


class Tokens(nn.Module):
    """Linear on (batch, sequence, features) followed by BatchNorm1d over the sequence axis,
    with sequence length == features: channel counts match, yet folding would be wrong."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(5, 5)
        self.bn = nn.BatchNorm1d(5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.fc(x))


def test_linear_output_with_more_dims_is_left() -> None:
    model = randomize_statistics(Tokens())
    x = torch.randn(3, 5, 5)
    folded, report = fold_batchnorm(model, x)
    assert folds(report) == {}
    assert "another axis" in reasons(report)["bn"]
    with torch.no_grad():
        assert torch.equal(model(x), folded(x))


# ---------------------------------------------------------------------------------------
# Subclasses: fold what is linear in the weight, leave what is not
# ---------------------------------------------------------------------------------------


class StdConv2d(nn.Conv2d):
    """Weight standardization (timm's StdConv2d): scaling the weight is undone in forward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = F.batch_norm(
            self.weight.reshape(1, self.out_channels, -1), None, None, training=True, eps=1e-6
        ).reshape_as(self.weight)
        return F.conv2d(x, weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


class ScaledClampBatchNorm(nn.BatchNorm2d):
    """An unknown BatchNorm subclass that does more after normalizing."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp(2.0 * super().forward(x), -1.0, 3.0)


class Subclasses(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.std = StdConv2d(3, 4, 3, padding=1)
        self.bn_std = nn.BatchNorm2d(4)
        self.conv = nn.Conv2d(4, 6, 1)
        self.bn_clamp = ScaledClampBatchNorm(6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn_clamp(self.conv(self.bn_std(self.std(x))))


@pytest.mark.parametrize("method", ["fx", "hooks"])
def test_subclasses(method: str) -> None:
    model = randomize_statistics(Subclasses())
    x = torch.randn(2, 3, 8, 8)
    folded, report = fold_batchnorm(model, x, method=method)
    assert folds(report) == {"bn_clamp": "conv"}
    assert "not linear in its weight" in reasons(report)["bn_std"]
    # the unknown subclass keeps running, its normalization made an identity
    assert type(folded.bn_clamp) is ScaledClampBatchNorm
    assert torch.equal(folded.std.weight, model.std.weight)
    with torch.no_grad():
        assert_same_output(model(x), folded(x))


def test_training_mode_and_statless_batchnorms_are_left() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3),
        nn.BatchNorm2d(4),
        nn.Conv2d(4, 4, 1),
        nn.BatchNorm2d(4, track_running_stats=False),
    )
    model = randomize_statistics(model)
    model[1].train()
    folded, report = fold_batchnorm(model)
    why = reasons(report)
    assert "training mode" in why["1"] and "track_running_stats" in why["3"]
    assert folds(report) == {}


def test_unknown_method_is_refused() -> None:
    with pytest.raises(QBenchError, match="unknown method 'trace'"):
        fold_batchnorm(nn.Sequential(), method="trace")  # type: ignore[arg-type]


def test_torchvision_frozen_batchnorm_folds() -> None:
    misc = pytest.importorskip("torchvision.ops.misc")
    frozen = misc.FrozenBatchNorm2d(4)
    generator = torch.Generator().manual_seed(3)
    for name in ("weight", "bias", "running_mean"):
        getattr(frozen, name).copy_(torch.randn(4, generator=generator))
    frozen.running_var.copy_(torch.rand(4, generator=generator) + 0.5)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), frozen, nn.ReLU())
    x = torch.randn(2, 3, 7, 7)
    folded, report = fold_batchnorm(model, x, method="hooks")
    assert report == [{"conv": "0", "bn": "1"}]
    assert isinstance(folded[1], nn.Identity)
    with torch.no_grad():
        assert_same_output(model(x), folded(x))


def test_fold_batchnorm_in_a_config_folds_the_twin_and_keeps_the_reference():
    """quantization.fold_batchnorm: the twin is the folded graph (no BatchNorm left, each fold
    in the preparation report), the model given to prepare keeps its BatchNorms, and with a
    pass-through quantization the twin computes the FP32 output within float32 tolerance."""
    import qbench
    import torchvision
    from qbench.preparation import preparation_report
    from qbench_ops.quantizer import identity_quantization

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    spec = {"format": "fp8_e4m3", "mode": "chunk", "chunk_size": 128, "fold_batchnorm": True}
    twin = qbench.prepare(model, spec)
    report = preparation_report(twin)
    assert len([r for r in report["rewrites"] if "conv" in r]) == 20
    assert not any(isinstance(m, nn.BatchNorm2d) for m in twin.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 20
    plain = qbench.prepare(model, spec)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), identity_quantization():
        expected, got = model(x), plain(x)
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-5 * float(expected.abs().max()))
    assert "rewrites" not in preparation_report(qbench.prepare(model, {"format": "fp8_e4m3"}))

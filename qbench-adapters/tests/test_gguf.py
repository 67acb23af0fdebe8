"""QBench's GGUF reader against gguf-py (ggml's own Python package, an independent writer,
reader and dequantizer), on files gguf-py writes; on hostile files (one QBenchError naming the
file and the field, never another exception); and Llama models through it against the model
they were written from and against transformers' own GGUF loader."""

from __future__ import annotations

import math
import re
import struct
from pathlib import Path
from typing import Any

import pytest
import torch
from qbench.errors import QBenchError
from qbench_adapters import gguf as reader

gguf = pytest.importorskip("gguf")
np = pytest.importorskip("numpy")

T = gguf.GGMLQuantizationType
TYPES = [T.F32, T.F16, T.BF16, T.Q8_0, T.Q4_0, T.Q4_1]


def _values(shape: tuple[int, ...], seed: int) -> Any:
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * np.logspace(-3, 3, shape[-1])).astype(np.float32)
    x.reshape(-1, shape[-1])[0, :32] = 0.0  # an all-zero block
    x.reshape(-1)[40] = -60000.0  # near float16's largest
    x.reshape(-1)[41] = 3e-8  # float16 subnormal territory
    return x


def _write(path: Path, tensors: dict[str, tuple[Any, Any]], **metadata: Any) -> Path:
    """A GGUF file written by gguf-py: ``tensors`` name -> (float32 array, ggml type)."""
    writer = gguf.GGUFWriter(str(path), arch=metadata.pop("arch", "llama"))
    for key, value in metadata.items():
        writer.add_key_value(key, *value)
    for name, (values, qtype) in tensors.items():
        if qtype == T.F32:
            writer.add_tensor(name, values)
        elif qtype == T.F16:
            writer.add_tensor(name, values.astype(np.float16))
        else:
            writer.add_tensor(name, gguf.quants.quantize(values, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("shape", [(64,), (3, 96), (2, 3, 32)])
def test_every_type_reads_as_gguf_py_dequantizes_it(tmp_path, qtype, shape) -> None:
    values = _values(shape, seed=len(shape))
    path = _write(tmp_path / "t.gguf", {"w": (values, qtype)})
    ours = reader.read(path)
    info = ours.tensors["w"]
    assert info.shape == shape and info.type_name == qtype.name
    [theirs] = gguf.GGUFReader(str(path)).tensors
    expected = gguf.quants.dequantize(theirs.data, qtype).reshape(shape).astype(np.float32)
    got = ours.tensor("w")
    ours.close()
    assert got.dtype == torch.float32 and tuple(got.shape) == shape
    assert torch.equal(got, torch.from_numpy(expected)), qtype.name
    if qtype == T.F32:
        assert torch.equal(got, torch.from_numpy(values))


def test_metadata_reads_as_written(tmp_path) -> None:
    V = gguf.GGUFValueType
    path = _write(
        tmp_path / "m.gguf",
        {"w": (np.ones(32, np.float32), T.F32)},
        **{
            "a.u8": (7, V.UINT8),
            "a.i32": (-5, V.INT32),
            "a.u64": (2**40, V.UINT64),
            "a.f32": (0.1, V.FLOAT32),
            "a.f64": (math.pi, V.FLOAT64),
            "a.bool": (True, V.BOOL),
            "a.text": ("ünïcödé", V.STRING),
            "a.words": (["a", "bb", ""], V.ARRAY),
            "a.ints": ([1, -2, 3], V.ARRAY),
        },
    )
    with reader.read(path) as ours:
        meta = ours.metadata
    assert meta["general.architecture"] == "llama"
    assert (meta["a.u8"], meta["a.i32"], meta["a.u64"]) == (7, -5, 2**40)
    assert meta["a.f32"] == struct.unpack("<f", struct.pack("<f", 0.1))[0]
    assert meta["a.f64"] == math.pi and meta["a.bool"] is True and meta["a.text"] == "ünïcödé"
    assert meta["a.words"] == ["a", "bb", ""] and meta["a.ints"] == [1, -2, 3]


# -- hostile files -------------------------------------------------------------------------


def _string(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(raw)) + raw


def _raw(
    keys: list[bytes] = (),
    tensors: list[bytes] = (),
    data: bytes = b"",
    version: int = 3,
    counts: tuple[int, int] | None = None,
) -> bytes:
    """GGUF bytes from hand-made pieces (``counts``: the header's, else the pieces')."""
    n_tensors, n_keys = counts if counts is not None else (len(tensors), len(keys))
    head = b"GGUF" + struct.pack("<IQQ", version, n_tensors, n_keys) + b"".join(keys)
    head += b"".join(tensors)
    return head + b"\0" * (-len(head) % 32) + data


def _key(name: str, type_id: int, payload: bytes) -> bytes:
    return _string(name) + struct.pack("<I", type_id) + payload


def _tensor(name: str, dims: list[int], type_id: int = 0, offset: int = 0) -> bytes:
    packed = struct.pack(f"<I{len(dims)}Q", len(dims), *dims)
    return _string(name) + packed + struct.pack("<IQ", type_id, offset)


F32_64 = struct.pack("<64f", *range(64))

HOSTILE = {
    "not GGUF": (b"PK\x03\x04" + b"\0" * 60, "not a GGUF file"),
    "version 1": (_raw(version=1), "GGUF version 1; readable: 2, 3"),
    "empty": (b"", "empty file"),
    "huge key count": (_raw(counts=(0, 2**62)), "the metadata count is"),
    "huge tensor count": (_raw(counts=(2**62, 0)), "the tensor count is"),
    "huge string": (
        _raw([struct.pack("<Q", 2**60) + b"key"], counts=(0, 1)),
        "the length of a metadata key",
    ),
    "bad value type": (_raw([_key("k", 99, b"")]), "metadata 'k' has value type 99"),
    "duplicate key": (
        _raw([_key("k", 4, b"\1\0\0\0"), _key("k", 4, b"\2\0\0\0")]),
        "metadata key 'k' appears twice",
    ),
    "deep arrays": (
        _raw([_key("k", 9, struct.pack("<IQ", 9, 1) + struct.pack("<IQ", 9, 1) * 2)]),
        "arrays nested deeper",
    ),
    "not UTF-8": (_raw([_key("k", 8, _string(b"\xff\xfe"))]), "metadata 'k' is not UTF-8"),
    "odd alignment": (
        _raw([_key("general.alignment", 4, struct.pack("<I", 3))]),
        "general.alignment is 3",
    ),
    "unsupported type": (
        _raw(tensors=[_tensor("w", [256], type_id=12)], data=b"\0" * 256),
        "tensor 'w' has ggml type 12; readable: F32 (0)",
    ),
    "five dimensions": (
        _raw(tensors=[_tensor("w", [1, 1, 1, 1, 1])], data=b"\0" * 32),
        "tensor 'w' has 5 dimensions",
    ),
    "zero dimension": (_raw(tensors=[_tensor("w", [0])]), "tensor 'w' has dimensions [0]"),
    "huge dimensions": (
        _raw(tensors=[_tensor("w", [2**40, 2**40])]),
        "more than the file can hold",
    ),
    "data beyond the end": (
        _raw(tensors=[_tensor("w", [64])], data=F32_64[:100]),
        "tensor 'w': 256 bytes at offset",
    ),
    "misaligned offset": (
        _raw(tensors=[_tensor("w", [8], offset=4)], data=F32_64),
        "aligned to 32",
    ),
    "partial block": (
        _raw(tensors=[_tensor("w", [48], type_id=8)], data=b"\0" * 64),
        "rows of 48 elements are not whole blocks of 32",
    ),
    "duplicate tensor": (
        _raw(tensors=[_tensor("w", [8]), _tensor("w", [8], offset=32)], data=F32_64),
        "tensor 'w' appears twice",
    ),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_a_hostile_file_is_one_error_naming_it(tmp_path, case) -> None:
    raw, message = HOSTILE[case]
    path = tmp_path / "model.gguf"
    path.write_bytes(raw)
    with pytest.raises(QBenchError) as caught:
        reader.read(path)
    text = str(caught.value)
    assert text.startswith(f"{path}: ") and message in text and "\n" not in text, text


def test_every_truncation_of_a_real_file_is_one_error(tmp_path) -> None:
    """Cut a gguf-py file anywhere before its end: the reader names the problem, never
    another exception and never a read of the truncated file."""
    full = _write(
        tmp_path / "full.gguf",
        {"a": (_values((2, 64), 1), T.Q4_1), "b": (_values((64,), 2), T.F32)},
        **{"x.words": (["one", "two"], gguf.GGUFValueType.ARRAY)},
    ).read_bytes()
    cut = tmp_path / "cut.gguf"
    for end in range(0, len(full), 7):
        cut.write_bytes(full[:end])
        try:
            reader.read(cut).close()
        except QBenchError as exc:
            assert str(exc).startswith(f"{cut}: "), end
        else:
            pytest.fail(f"a file cut at {end} of {len(full)} bytes was read")


def test_a_missing_file_or_a_folder_is_one_error(tmp_path) -> None:
    with pytest.raises(QBenchError, match=r"absent\.gguf: cannot read GGUF file \(No such file"):
        reader.read(tmp_path / "absent.gguf")
    with pytest.raises(QBenchError, match=r"cannot read GGUF file \(Is a directory\)"):
        reader.read(tmp_path)


# -- Llama models -----------------------------------------------------------------------------

transformers = pytest.importorskip("transformers")

CONFIG = {
    "vocab_size": 96,
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 128,
    "rope_theta": 10000.0,
    "rms_norm_eps": 1e-5,
}


def _converter_permutation(weight: Any, heads: int) -> Any:
    """What llama.cpp's converter (convert_hf_to_gguf.py, LlamaModel.permute) does to a query
    or key projection: each head's rows, first half then second half, interleaved pairwise."""
    return (
        weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


GGUF_NAMES = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}


def _llama_file(path: Path, tied: bool = True, **extra: Any) -> tuple[Any, Path]:
    """A tiny random Llama written to GGUF as llama.cpp's converter writes one (float32)."""
    config = transformers.LlamaConfig(**CONFIG, tie_word_embeddings=tied)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    V = gguf.GGUFValueType
    metadata = {
        "llama.embedding_length": (64, V.UINT32),
        "llama.feed_forward_length": (96, V.UINT32),
        "llama.block_count": (2, V.UINT32),
        "llama.attention.head_count": (4, V.UINT32),
        "llama.attention.head_count_kv": (2, V.UINT32),
        "llama.context_length": (128, V.UINT32),
        "llama.rope.freq_base": (10000.0, V.FLOAT32),
        "llama.rope.dimension_count": (16, V.UINT32),
        "llama.attention.layer_norm_rms_epsilon": (1e-5, V.FLOAT32),
        "llama.vocab_size": (96, V.UINT32),
        **extra,
    }
    tensors = {}
    for name, value in model.state_dict().items():
        w = value.numpy()
        if name == "model.embed_tokens.weight":
            target = "token_embd.weight"
        elif name == "model.norm.weight":
            target = "output_norm.weight"
        elif name == "lm_head.weight":
            if tied:
                continue
            target = "output.weight"
        else:
            _, _, index, *rest = name.split(".")
            module = ".".join(rest[:-1])
            target = f"blk.{index}.{GGUF_NAMES[module]}.weight"
            if module == "self_attn.q_proj":
                w = _converter_permutation(w, 4)
            elif module == "self_attn.k_proj":
                w = _converter_permutation(w, 2)
        tensors[target] = (np.ascontiguousarray(w), T.F32)
    return model, _write(path, tensors, **metadata)


@pytest.mark.parametrize("tied", [True, False])
def test_a_llama_file_loads_as_the_model_it_was_written_from(tmp_path, tied) -> None:
    original, path = _llama_file(tmp_path / "llama.gguf", tied=tied)
    model, tokenizer = reader.load_llama(path)
    assert tokenizer is None  # no tokenizer metadata in this file
    assert model.config.num_key_value_heads == 2 and model.config.tie_word_embeddings is tied
    state, expected = model.state_dict(), original.state_dict()
    assert set(state) == set(expected)
    for name, value in expected.items():
        assert torch.equal(state[name], value), name
    ids = torch.tensor([[3, 14, 15, 92, 65]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, original(ids).logits)


def test_a_llama_file_loads_as_transformers_loads_it(tmp_path) -> None:
    pytest.importorskip("accelerate")  # transformers' GGUF loading needs it
    _, path = _llama_file(tmp_path / "llama.gguf")
    ours, _ = reader.load_llama(path)
    theirs = transformers.LlamaForCausalLM.from_pretrained(
        str(tmp_path), gguf_file=path.name, dtype=torch.float32
    ).eval()
    for name, value in theirs.state_dict().items():
        assert torch.equal(ours.state_dict()[name], value), name


@pytest.mark.parametrize(
    ("extra", "arch", "message"),
    [
        (
            {"llama.rope.scaling.type": ("linear", gguf.GGUFValueType.STRING)},
            "llama",
            "metadata llama.rope.scaling.type is not supported",
        ),
        ({}, "gpt2", "general.architecture is 'gpt2'; readable: 'llama'"),
        (
            {"llama.rope.dimension_count": (8, gguf.GGUFValueType.UINT32)},
            "llama",
            "llama.rope.dimension_count is 8; supported: the head size 16",
        ),
        (
            {"llama.attention.key_length": (32, gguf.GGUFValueType.UINT32)},
            "llama",
            "llama.attention.key_length is 32; supported: the head size 16",
        ),
        (
            {
                "tokenizer.ggml.model": ("gpt2", gguf.GGUFValueType.STRING),
                "tokenizer.ggml.pre": ("qwen2", gguf.GGUFValueType.STRING),
            },
            "llama",
            "tokenizer.ggml.pre is 'qwen2'; readable: 'gpt-2', 'smollm'",
        ),
        (
            {"tokenizer.ggml.model": ("llama", gguf.GGUFValueType.STRING)},
            "llama",
            "tokenizer.ggml.model is 'llama'; readable: 'gpt2'",
        ),
    ],
)
def test_a_llama_file_the_loader_cannot_build_faithfully_is_refused(
    tmp_path, extra, arch, message
) -> None:
    path = tmp_path / "llama.gguf"
    if arch == "llama":
        _, path = _llama_file(path, **extra)
    else:
        _write(path, {"w": (np.ones(32, np.float32), T.F32)}, arch=arch)
    with pytest.raises(QBenchError, match=re.escape(message)):
        reader.load_llama(path)
    if "tokenizer" in message:  # the model alone still loads
        model, tokenizer = reader.load_llama(path, tokenizer=False)
        assert tokenizer is None and model.config.num_hidden_layers == 2


def test_a_llama_file_missing_a_weight_or_holding_a_stranger_is_refused(tmp_path) -> None:
    original, full = _llama_file(tmp_path / "full.gguf")
    with reader.read(full) as source:
        tensors = {name: (source.tensor(name).numpy(), T.F32) for name in source.tensors}
        metadata = {
            k: (
                v,
                gguf.GGUFValueType.FLOAT32 if isinstance(v, float) else gguf.GGUFValueType.UINT32,
            )
            for k, v in source.metadata.items()
            if k.startswith("llama.")
        }
    missing = dict(tensors)
    del missing["blk.1.ffn_up.weight"]
    _write(tmp_path / "missing.gguf", missing, **metadata)
    with pytest.raises(QBenchError, match=r"no tensor for the model's model\.layers\.1\.mlp"):
        reader.load_llama(tmp_path / "missing.gguf")
    stranger = {**tensors, "blk.0.attn_q.bias": (np.zeros(64, np.float32), T.F32)}
    _write(tmp_path / "stranger.gguf", stranger, **metadata)
    with pytest.raises(QBenchError, match="tensor 'blk.0.attn_q.bias' is not part of a Llama"):
        reader.load_llama(tmp_path / "stranger.gguf")
    del original

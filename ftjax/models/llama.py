"""Llama-family decoders (Touvron et al. 2023) as Hugging Face's `LlamaForCausalLM` computes them.

One block: h += attn(RMSNorm(h)); h += mlp(RMSNorm(h)), with
- RMSNorm: x / sqrt(mean(x²) + eps) · weight (no mean, no bias), statistics in float32;
- rotary position embeddings (Su et al. 2021) on queries and keys, in Hugging Face's "rotate half"
  layout: dimension j pairs with j + D/2, rotated by position · inv_freq[j mod D/2], where
  inv_freq[j] = rope_theta^(-2j/D). `rope_scaling` rescales inv_freq: "linear" divides it by `factor`,
  "llama3" (Llama 3.1) divides only the low frequencies and interpolates in between;
- grouped-query attention: `num_key_value_heads` key/value heads, each serving a group of query heads;
- SwiGLU MLP: down_proj(silu(gate_proj(x)) · up_proj(x)).
The LM head is `lm_head` unless `tie_word_embeddings`, then the token embedding `embed_tokens`.

The same module computes the Llama variants (config.json's `model_type`, kept in the config):
- mistral: Llama with a sliding attention window (`sliding_window`): a query attends the last
  `sliding_window` slots only (itself included), in every layer;
- qwen2 (Qwen2, Qwen2.5): biases on the q/k/v projections, none on o_proj; a sliding window only where
  `use_sliding_window`, on layers ≥ `max_window_layers` (or as `layer_types` says);
- qwen3: an RMSNorm over each head's dimensions on queries and keys (`q_norm`, `k_norm`), before rotary.

Module paths mirror Hugging Face's (`layers_0/self_attn/q_proj`, `layers_0/mlp/gate_proj`,
`embed_tokens`, `norm`), so PEFT-style LoRA targets ("self_attn/(q_proj|v_proj)$") work as written.
torch's Linear stores (out, in): every kernel is transposed on loading (see `hf_names`).

PEFT hooks as in GPT-2: LoRA through `Dense`, Houlsby/Pfeiffer adapters after attention and MLP, soft
prompts prepended (they take positions 0…P-1, so the text's positions shift by P), and key/value prefixes
with `num_key_value_heads` heads. Prefix keys are NOT rotated: a prefix has no position, and rotating
it by some fixed position would only be a reparametrisation of the same learned vectors.

Incremental decoding uses the explicit key/value cache of gpt2.py, with the same contract: cache slots
hold keys already rotated by their own positions, so `position_ids` must be given for every position a
cached call writes.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ftjax.models.dropout import Dropout
from ftjax.models.layers import (
  ACTIVATIONS,
  Dense,
  Embed,
  adapter,
  attention,
  causal_bias,
  decoder_inputs,
  prepend_prefix,
)
from ftjax.models.outputs import DecoderOutput
from ftjax.peft import prompts
from ftjax.peft.spec import NO_PEFT, PeftSpec

ROPE_TYPES = ("default", "linear", "llama3")
MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")  # the config.json model_types this module computes
LAYER_TYPES = ("full_attention", "sliding_attention")


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
  vocab_size: int = 32000
  hidden_size: int = 4096
  intermediate_size: int = 11008
  num_hidden_layers: int = 32
  num_attention_heads: int = 32
  num_key_value_heads: int | None = None  # None → num_attention_heads (plain multi-head attention)
  head_dim: int | None = None  # None → hidden_size // num_attention_heads
  hidden_act: str = "silu"
  max_position_embeddings: int = 2048  # nominal only: rotary embeddings have no table to outgrow
  rms_norm_eps: float = 1e-6
  rope_theta: float = 10000.0
  # ("rope_type", …) and its parameters as sorted (key, value) pairs: a tuple keeps the config hashable.
  rope_scaling: tuple[tuple[str, object], ...] = ()
  attention_bias: bool = False  # biases on the q/k/v projections (and o_proj unless attention_out_bias=False)
  attention_out_bias: bool | None = None  # None → attention_bias; Qwen2: q/k/v biases only
  qk_norm: bool = False  # Qwen3: RMSNorm over head_dim on queries and keys, before rotary
  sliding_window: int | None = None  # [slots] attended by each query in sliding layers; None → no window
  layer_types: tuple[str, ...] = ()  # per layer, one of LAYER_TYPES; () → all "sliding_attention" if
  # sliding_window else "full_attention"
  model_type: str = "llama"  # which variant (MODEL_TYPES): names the transformers class on export
  mlp_bias: bool = False
  attention_dropout: float = 0.0
  tie_word_embeddings: bool = False
  bos_token_id: int | None = 1
  eos_token_id: int | tuple[int, ...] | None = 2

  model_types = MODEL_TYPES  # class constants (no annotation: not fields), which gemma3.py overrides
  norm_unit_offset = False  # RMSNorm multiplies by `weight` (Gemma: by 1 + weight)
  embedding_scale = None  # factor on the token embeddings (Gemma: √hidden_size)
  final_logit_softcapping = None  # logits → cap · tanh(logits / cap) (Gemma 3, where set)

  def __post_init__(self):
    if self.num_key_value_heads is None:
      object.__setattr__(self, "num_key_value_heads", self.num_attention_heads)
    if self.head_dim is None:
      object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)
    if self.num_attention_heads % self.num_key_value_heads:
      raise ValueError(
        f"num_key_value_heads={self.num_key_value_heads} must divide num_attention_heads={self.num_attention_heads}"
      )
    if self.hidden_act not in ACTIVATIONS:
      raise ValueError(f"unknown hidden_act {self.hidden_act!r}; known: {sorted(ACTIVATIONS)}")
    if self.model_type not in self.model_types:
      raise ValueError(
        f"model_type {self.model_type!r} is not one that {type(self).__name__} reads: {self.model_types}"
      )
    if self.attention_out_bias is None:
      object.__setattr__(self, "attention_out_bias", self.attention_bias)
    if not self.layer_types:
      kind = "sliding_attention" if self.sliding_window else "full_attention"
      object.__setattr__(self, "layer_types", (kind,) * self.num_hidden_layers)
    if len(self.layer_types) != self.num_hidden_layers or not set(self.layer_types) <= set(LAYER_TYPES):
      raise ValueError(f"layer_types must give one of {LAYER_TYPES} per layer, got {self.layer_types}")
    if self.sliding_window is not None and self.sliding_window <= 0:
      raise ValueError(f"sliding_window must be positive or None, got {self.sliding_window}")
    rope_type = dict(self.rope_scaling).get("rope_type", "default")
    if rope_type not in ROPE_TYPES:
      raise ValueError(f"rope_scaling type {rope_type!r} is not supported; ftjax implements {ROPE_TYPES}")

  @classmethod
  def from_hf(cls, hf: dict) -> "LlamaConfig":
    """From a config.json dict: transformers ≥ 5 writes `rope_parameters` (theta inside), older versions
    `rope_theta` and `rope_scaling` (with `type` or `rope_type`). The variants' own keys as transformers
    reads them: Qwen's window applies only with `use_sliding_window`, to layers ≥ `max_window_layers`."""
    rope = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
    theta = rope.pop("rope_theta", hf.get("rope_theta", 10000.0))
    rope_type = rope.pop("rope_type", rope.pop("type", "default"))
    if rope.pop("partial_rotary_factor", 1.0) != 1.0:
      raise ValueError("partial_rotary_factor != 1 is not supported")
    scaling = () if rope_type == "default" else tuple(sorted({"rope_type": rope_type, **rope}.items()))
    names = {f.name for f in dataclasses.fields(cls)} - {"rope_theta", "rope_scaling", "attention_out_bias", "qk_norm"}
    fields = {k: v for k, v in hf.items() if k in names}
    if isinstance(fields.get("eos_token_id"), list):
      fields["eos_token_id"] = tuple(fields["eos_token_id"])
    model_type = hf.get("model_type", "llama")
    if model_type in ("llama", "mistral"):  # Llama has no window; Mistral's covers every layer
      fields.pop("layer_types", None)
    if model_type == "llama":  # a stray key must not switch a window on
      fields.pop("sliding_window", None)
    if model_type in ("qwen2", "qwen3"):
      if not hf.get("use_sliding_window", False):
        fields["sliding_window"] = None
      if not hf.get("layer_types"):
        first = hf.get("max_window_layers", 28) if fields.get("sliding_window") else hf["num_hidden_layers"]
        fields["layer_types"] = [
          "sliding_attention" if i >= first else "full_attention" for i in range(hf["num_hidden_layers"])
        ]
    if model_type == "qwen2":  # Qwen2Attention: q/k/v biases always, none on o_proj
      fields.update(attention_bias=True, attention_out_bias=False)
    fields["qk_norm"] = model_type == "qwen3"
    fields["layer_types"] = tuple(fields.get("layer_types") or ())
    return cls(**fields, rope_theta=float(theta), rope_scaling=scaling)

  @property
  def max_positions(self) -> int:
    return self.max_position_embeddings

  def window(self, layer: int) -> int | None:
    """The sliding window of `layer` [slots], None for full attention."""
    return self.sliding_window if self.layer_types[layer] == "sliding_attention" else None

  def rope_frequencies(self, layer: int) -> np.ndarray:
    """The rotary frequencies of `layer` (the same in every Llama layer)."""
    del layer
    return inverse_frequencies(self)

  @property
  def attention_scale(self) -> float:
    """The factor on the attention scores: 1/√head_dim."""
    return 1.0 / math.sqrt(self.head_dim)


def inverse_frequencies(config: LlamaConfig) -> np.ndarray:
  """The (head_dim/2,) float32 rotation frequencies of `config`."""
  return rope_frequencies(config.head_dim, config.rope_theta, config.rope_scaling)


def rope_frequencies(dim: int, theta: float, rope_scaling: tuple = ()) -> np.ndarray:
  """The (dim/2,) float32 rotation frequencies, computed as transformers' rope init functions do."""
  inv_freq = (
    np.float32(1.0) / (np.float32(theta) ** (np.arange(0, dim, 2).astype(np.float32) / np.float32(dim)))
  ).astype(np.float32)
  scaling = dict(rope_scaling)
  rope_type = scaling.get("rope_type", "default")
  if rope_type == "linear":
    return (inv_freq / np.float32(scaling["factor"])).astype(np.float32)
  if rope_type == "llama3":
    factor, low, high = (np.float32(scaling[k]) for k in ("factor", "low_freq_factor", "high_freq_factor"))
    old_context = np.float32(scaling["original_max_position_embeddings"])
    wavelen = np.float32(2 * math.pi) / inv_freq
    # Short wavelengths (< old_context/high) keep their frequency; long ones (> old_context/low) are
    # divided by `factor`; in between, a smooth interpolation of the two.
    scaled = np.where(wavelen > old_context / low, inv_freq / factor, inv_freq)
    smooth = (old_context / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < old_context / high) & ~(wavelen > old_context / low)
    return np.where(medium, smoothed, scaled).astype(np.float32)
  return inv_freq


def rotary(x: jax.Array, positions: jax.Array, inv_freq: np.ndarray) -> jax.Array:
  """Rotates x (B, T, H, D) by its positions (B, T), in float32, "rotate half" layout."""
  angles = positions[..., None].astype(jnp.float32) * jnp.asarray(inv_freq)  # (B, T, D/2)
  angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]  # (B, T, 1, D)
  x32 = x.astype(jnp.float32)
  half = x.shape[-1] // 2
  rotated_half = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
  return (x32 * jnp.cos(angles) + rotated_half * jnp.sin(angles)).astype(x.dtype)


class RMSNorm(nn.Module):
  """x / sqrt(mean(x²) + eps) · scale, statistics in float32 (Hugging Face's LlamaRMSNorm `weight`).
  With `unit_offset`, · (1 + scale): Gemma stores the weight minus one (initialised at zero)."""

  epsilon: float = 1e-6
  dtype: jnp.dtype = jnp.float32
  unit_offset: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.square(x32).mean(-1, keepdims=True) + self.epsilon)
    init = nn.initializers.zeros if self.unit_offset else nn.initializers.ones
    scale = self.param("scale", init, (x.shape[-1],), jnp.float32)
    return ((1.0 + scale if self.unit_offset else scale) * normed).astype(self.dtype)


class LlamaAttention(nn.Module):
  config: LlamaConfig
  peft: PeftSpec = NO_PEFT
  dtype: jnp.dtype = jnp.float32
  layer: int = 0  # which layer: its window and rotary frequencies (config.window, config.rope_frequencies)

  @nn.compact
  def __call__(self, hidden, key_mask, position_ids, first_slot, layer_cache, deterministic):
    c = self.config
    dense = functools.partial(Dense, use_bias=c.attention_bias, peft=self.peft, dtype=self.dtype)
    batch, length = hidden.shape[:2]
    q = dense(c.num_attention_heads * c.head_dim, name="q_proj")(hidden, deterministic)
    k = dense(c.num_key_value_heads * c.head_dim, name="k_proj")(hidden, deterministic)
    v = dense(c.num_key_value_heads * c.head_dim, name="v_proj")(hidden, deterministic)
    q = q.reshape(batch, length, c.num_attention_heads, c.head_dim)
    k = k.reshape(batch, length, c.num_key_value_heads, c.head_dim)
    v = v.reshape(batch, length, c.num_key_value_heads, c.head_dim)
    if c.qk_norm:  # Qwen3: per-head RMSNorm, before rotary
      q = RMSNorm(c.rms_norm_eps, self.dtype, c.norm_unit_offset, name="q_norm")(q)
      k = RMSNorm(c.rms_norm_eps, self.dtype, c.norm_unit_offset, name="k_norm")(k)
    inv_freq = c.rope_frequencies(self.layer)
    q, k = rotary(q, position_ids, inv_freq), rotary(k, position_ids, inv_freq)
    if layer_cache is not None:  # write this call's (rotated) keys/values into their slots
      k = jax.lax.dynamic_update_slice(layer_cache["key"], k.astype(layer_cache["key"].dtype), (0, first_slot, 0, 0))
      v = jax.lax.dynamic_update_slice(
        layer_cache["value"], v.astype(layer_cache["value"].dtype), (0, first_slot, 0, 0)
      )
      layer_cache = {"key": k, "value": v}
    bias = causal_bias(key_mask, length, first_slot, c.window(self.layer))
    if self.peft.prefix_length:  # unrotated: prefixes have no position
      k, v, bias = prepend_prefix(
        k, v, bias, *prompts.key_value_prefix(self, c.num_key_value_heads, c.head_dim, self.peft)
      )
    out = attention(q, k, v, bias, Dropout(c.attention_dropout), deterministic, self.dtype, c.attention_scale)
    out = out.reshape(batch, length, c.num_attention_heads * c.head_dim)
    o_proj = Dense(c.hidden_size, use_bias=c.attention_out_bias, peft=self.peft, dtype=self.dtype, name="o_proj")
    return o_proj(out, deterministic), layer_cache


class LlamaMLP(nn.Module):
  config: LlamaConfig
  peft: PeftSpec = NO_PEFT
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, hidden, deterministic):
    c = self.config
    dense = functools.partial(Dense, use_bias=c.mlp_bias, peft=self.peft, dtype=self.dtype)
    gate = ACTIVATIONS[c.hidden_act](dense(c.intermediate_size, name="gate_proj")(hidden, deterministic))
    up = dense(c.intermediate_size, name="up_proj")(hidden, deterministic)
    return dense(c.hidden_size, name="down_proj")(gate * up, deterministic)


class LlamaBlock(nn.Module):
  config: LlamaConfig
  peft: PeftSpec = NO_PEFT
  dtype: jnp.dtype = jnp.float32
  layer: int = 0

  @nn.compact
  def __call__(self, hidden, key_mask, position_ids, first_slot, layer_cache, deterministic):
    c = self.config
    a, layer_cache = LlamaAttention(c, self.peft, self.dtype, self.layer, name="self_attn")(
      RMSNorm(c.rms_norm_eps, self.dtype, name="input_layernorm")(hidden),
      key_mask,
      position_ids,
      first_slot,
      layer_cache,
      deterministic,
    )
    hidden = hidden + adapter(self, a, self.peft, "attention", self.dtype)
    m = LlamaMLP(c, self.peft, self.dtype, name="mlp")(
      RMSNorm(c.rms_norm_eps, self.dtype, name="post_attention_layernorm")(hidden), deterministic
    )
    return hidden + adapter(self, m, self.peft, "ffn", self.dtype), layer_cache


class LlamaForCausalLM(nn.Module):
  """`apply({"params": ...}, input_ids, attention_mask=..., deterministic=True)` → DecoderOutput."""

  config: LlamaConfig
  peft: PeftSpec = NO_PEFT
  dtype: jnp.dtype = jnp.float32  # compute dtype; parameters stay float32
  remat: bool = False
  is_decoder = True  # class constants (no annotation: not module fields)
  block = LlamaBlock  # gemma3.py's model is this one with its own block

  @nn.compact
  def __call__(
    self,
    input_ids,
    attention_mask=None,
    position_ids=None,
    deterministic: bool = True,
    embedding_perturbation=None,
    cache: dict | None = None,
    cache_index=0,
    prepend_prompt: bool = True,
  ) -> DecoderOutput:
    c = self.config
    embed = Embed(c.vocab_size, c.hidden_size, self.dtype, c.embedding_scale, name="embed_tokens")
    hidden, attention_mask, position_ids, n_prompt = decoder_inputs(
      self, embed, input_ids, attention_mask, position_ids, embedding_perturbation, cache, prepend_prompt
    )
    block_cls = nn.remat(self.block, static_argnums=(6,)) if self.remat else self.block
    new_cache = {} if cache is not None else None
    for i in range(c.num_hidden_layers):
      name = f"layers_{i}"
      hidden, layer_cache = block_cls(c, self.peft, self.dtype, i, name=name)(
        hidden, attention_mask, position_ids, cache_index, None if cache is None else cache[name], deterministic
      )
      if cache is not None:
        new_cache[name] = layer_cache
    hidden = RMSNorm(c.rms_norm_eps, self.dtype, c.norm_unit_offset, name="norm")(hidden)
    if n_prompt:  # drop the soft-prompt positions: outputs align with input_ids again
      hidden = hidden[:, n_prompt:]
    if c.tie_word_embeddings:
      logits = embed.attend(hidden)
    else:
      # A Dense, so LoRA can target "lm_head"; its output is in the compute dtype, then float32.
      logits = Dense(c.vocab_size, use_bias=False, peft=self.peft, dtype=self.dtype, name="lm_head")(
        hidden, deterministic
      ).astype(jnp.float32)
    if c.final_logit_softcapping is not None:
      logits = jnp.tanh(logits / c.final_logit_softcapping) * c.final_logit_softcapping
    return DecoderOutput(logits=logits, last_hidden_state=hidden, cache=new_cache)

  def init_cache(self, batch: int, length: int, dtype=None) -> dict:
    """An empty cache of `length` slots in the compute dtype: what `ftjax.generation` asks every decoder for."""
    return init_cache(self.config, batch, length, self.dtype if dtype is None else dtype)


def init_cache(config: LlamaConfig, batch: int, length: int, dtype=jnp.float32) -> dict:
  """An empty key/value cache of `length` slots per layer, with the key/value heads only (GQA)."""
  shape = (batch, length, config.num_key_value_heads, config.head_dim)
  return {
    f"layers_{i}": {"key": jnp.zeros(shape, dtype), "value": jnp.zeros(shape, dtype)}
    for i in range(config.num_hidden_layers)
  }


# Our names are LlamaForCausalLM's full names ("model.layers.0…", "lm_head.weight"): nothing to strip.
HF_PREFIXES = ()

# LoRA's default targets (config lora.targets="default"): q_proj and v_proj, as PEFT for Llama-family models.
LORA_TARGETS = r"self_attn/(q_proj|v_proj)$"


def hf_names(config: LlamaConfig, hf_keys) -> list[tuple[str, str, bool]]:
  """(our path, HF name, transpose) for every tensor. torch Linear weights are (out, in): transposed.
  With tied embeddings there is no `lm_head.weight` to read: the head is `embed_tokens`."""
  names = [("embed_tokens/embedding", "model.embed_tokens.weight", False), ("norm/scale", "model.norm.weight", False)]
  if not config.tie_word_embeddings:
    names.append(("lm_head/kernel", "lm_head.weight", True))
  denses = [(f"self_attn/{p}", config.attention_bias) for p in ("q_proj", "k_proj", "v_proj")]
  denses.append(("self_attn/o_proj", config.attention_out_bias))
  denses += [(f"mlp/{p}", config.mlp_bias) for p in ("gate_proj", "up_proj", "down_proj")]
  for i in range(config.num_hidden_layers):
    for dense, has_bias in denses:
      hf = f"model.layers.{i}.{dense.replace('/', '.')}"
      names.append((f"layers_{i}/{dense}/kernel", f"{hf}.weight", True))
      if has_bias:
        names.append((f"layers_{i}/{dense}/bias", f"{hf}.bias", False))
    norms = ("input_layernorm", "post_attention_layernorm")
    norms += ("self_attn/q_norm", "self_attn/k_norm") if config.qk_norm else ()
    for norm in norms:
      names.append((f"layers_{i}/{norm}/scale", f"model.layers.{i}.{norm.replace('/', '.')}.weight", False))
  return names


# Where each parameter lives on the (data, fsdp, tensor) mesh (ftjax/sharding.py): column-parallel
# q/k/v/gate/up kernels, row-parallel o/down kernels, vocabulary-parallel embedding and lm_head, FSDP over
# the other dimension; RMSNorm scales (and biases, where a config has them) replicated.
SHARDING = (
  r"^backbone/.*/(q_proj|k_proj|v_proj|gate_proj|up_proj)/kernel$:fsdp,tensor",
  r"^backbone/.*/(o_proj|down_proj)/kernel$:tensor,fsdp",
  r"^backbone/embed_tokens/embedding$:tensor,fsdp",
  r"^backbone/lm_head/kernel$:fsdp,tensor",
  r"^backbone/.*/(scale|bias)$:",
)

Config, Model = LlamaConfig, LlamaForCausalLM  # what `ftjax.models.loading` looks up per architecture

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
  attention_bias: bool = False  # biases on q/k/v/o projections (Qwen-style checkpoints)
  mlp_bias: bool = False
  attention_dropout: float = 0.0
  tie_word_embeddings: bool = False
  bos_token_id: int | None = 1
  eos_token_id: int | tuple[int, ...] | None = 2

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
    rope_type = dict(self.rope_scaling).get("rope_type", "default")
    if rope_type not in ROPE_TYPES:
      raise ValueError(f"rope_scaling type {rope_type!r} is not supported; ftjax implements {ROPE_TYPES}")

  @classmethod
  def from_hf(cls, hf: dict) -> "LlamaConfig":
    """From a config.json dict: transformers ≥ 5 writes `rope_parameters` (theta inside), older versions
    `rope_theta` and `rope_scaling` (with `type` or `rope_type`)."""
    rope = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
    theta = rope.pop("rope_theta", hf.get("rope_theta", 10000.0))
    rope_type = rope.pop("rope_type", rope.pop("type", "default"))
    if rope.pop("partial_rotary_factor", 1.0) != 1.0:
      raise ValueError("partial_rotary_factor != 1 is not supported")
    scaling = () if rope_type == "default" else tuple(sorted({"rope_type": rope_type, **rope}.items()))
    names = {f.name for f in dataclasses.fields(cls)} - {"rope_theta", "rope_scaling"}
    fields = {k: v for k, v in hf.items() if k in names}
    if isinstance(fields.get("eos_token_id"), list):
      fields["eos_token_id"] = tuple(fields["eos_token_id"])
    return cls(**fields, rope_theta=float(theta), rope_scaling=scaling)

  @property
  def max_positions(self) -> int:
    return self.max_position_embeddings


def inverse_frequencies(config: LlamaConfig) -> np.ndarray:
  """The (head_dim/2,) float32 rotation frequencies, computed as transformers' rope init functions do."""
  dim = config.head_dim
  inv_freq = (
    np.float32(1.0) / (np.float32(config.rope_theta) ** (np.arange(0, dim, 2).astype(np.float32) / np.float32(dim)))
  ).astype(np.float32)
  scaling = dict(config.rope_scaling)
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
  """x / sqrt(mean(x²) + eps) · scale, statistics in float32 (Hugging Face's LlamaRMSNorm `weight`)."""

  epsilon: float = 1e-6
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.square(x32).mean(-1, keepdims=True) + self.epsilon)
    return (self.param("scale", nn.initializers.ones, (x.shape[-1],), jnp.float32) * normed).astype(self.dtype)


class LlamaAttention(nn.Module):
  config: LlamaConfig
  peft: PeftSpec = NO_PEFT
  dtype: jnp.dtype = jnp.float32

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
    inv_freq = inverse_frequencies(c)
    q, k = rotary(q, position_ids, inv_freq), rotary(k, position_ids, inv_freq)
    if layer_cache is not None:  # write this call's (rotated) keys/values into their slots
      k = jax.lax.dynamic_update_slice(layer_cache["key"], k.astype(layer_cache["key"].dtype), (0, first_slot, 0, 0))
      v = jax.lax.dynamic_update_slice(
        layer_cache["value"], v.astype(layer_cache["value"].dtype), (0, first_slot, 0, 0)
      )
      layer_cache = {"key": k, "value": v}
    bias = causal_bias(key_mask, length, first_slot)
    if self.peft.prefix_length:  # unrotated: prefixes have no position
      k, v, bias = prepend_prefix(
        k, v, bias, *prompts.key_value_prefix(self, c.num_key_value_heads, c.head_dim, self.peft)
      )
    out = attention(
      q, k, v, bias, nn.Dropout(c.attention_dropout), deterministic, self.dtype, 1.0 / math.sqrt(c.head_dim)
    )
    out = out.reshape(batch, length, c.num_attention_heads * c.head_dim)
    return dense(c.hidden_size, name="o_proj")(out, deterministic), layer_cache


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

  @nn.compact
  def __call__(self, hidden, key_mask, position_ids, first_slot, layer_cache, deterministic):
    c = self.config
    a, layer_cache = LlamaAttention(c, self.peft, self.dtype, name="self_attn")(
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
  is_decoder = True  # class constant (no annotation: not a module field)

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
    embed = Embed(c.vocab_size, c.hidden_size, self.dtype, name="embed_tokens")
    hidden, attention_mask, position_ids, n_prompt = decoder_inputs(
      self, embed, input_ids, attention_mask, position_ids, embedding_perturbation, cache, prepend_prompt
    )
    block_cls = nn.remat(LlamaBlock, static_argnums=(6,)) if self.remat else LlamaBlock
    new_cache = {} if cache is not None else None
    for i in range(c.num_hidden_layers):
      name = f"layers_{i}"
      hidden, layer_cache = block_cls(c, self.peft, self.dtype, name=name)(
        hidden, attention_mask, position_ids, cache_index, None if cache is None else cache[name], deterministic
      )
      if cache is not None:
        new_cache[name] = layer_cache
    hidden = RMSNorm(c.rms_norm_eps, self.dtype, name="norm")(hidden)
    if n_prompt:  # drop the soft-prompt positions: outputs align with input_ids again
      hidden = hidden[:, n_prompt:]
    if c.tie_word_embeddings:
      logits = embed.attend(hidden)
    else:
      # A Dense, so LoRA can target "lm_head"; its output is in the compute dtype, then float32.
      logits = Dense(c.vocab_size, use_bias=False, peft=self.peft, dtype=self.dtype, name="lm_head")(
        hidden, deterministic
      ).astype(jnp.float32)
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


def hf_names(config: LlamaConfig, hf_keys) -> list[tuple[str, str, bool]]:
  """(our path, HF name, transpose) for every tensor. torch Linear weights are (out, in): transposed.
  With tied embeddings there is no `lm_head.weight` to read: the head is `embed_tokens`."""
  names = [("embed_tokens/embedding", "model.embed_tokens.weight", False), ("norm/scale", "model.norm.weight", False)]
  if not config.tie_word_embeddings:
    names.append(("lm_head/kernel", "lm_head.weight", True))
  denses = [(f"self_attn/{p}", config.attention_bias) for p in ("q_proj", "k_proj", "v_proj", "o_proj")]
  denses += [(f"mlp/{p}", config.mlp_bias) for p in ("gate_proj", "up_proj", "down_proj")]
  for i in range(config.num_hidden_layers):
    for dense, has_bias in denses:
      hf = f"model.layers.{i}.{dense.replace('/', '.')}"
      names.append((f"layers_{i}/{dense}/kernel", f"{hf}.weight", True))
      if has_bias:
        names.append((f"layers_{i}/{dense}/bias", f"{hf}.bias", False))
    for norm in ("input_layernorm", "post_attention_layernorm"):
      names.append((f"layers_{i}/{norm}/scale", f"model.layers.{i}.{norm}.weight", False))
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

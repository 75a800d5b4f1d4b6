"""GPT-2 (Radford et al. 2019) as Hugging Face's `GPT2LMHeadModel` computes it: pre-LayerNorm decoder.

Module paths mirror Hugging Face's (`h_0/attn/c_attn`), so PEFT-style LoRA targets ("c_attn") work as
written. GPT-2's `Conv1D` stores weights as (in, out), which is already Flax's layout: no transposes.
The LM head is tied to the token embedding `wte` (Hugging Face ties them too).

Incremental decoding uses an explicit key/value cache, a pytree the caller owns (see `init_cache`):
`apply(..., cache=cache, cache_index=i)` writes this call's keys/values at slots i… and returns the
updated cache in the output. In that mode `attention_mask` (B, S) covers every cache slot (1 = holds or
will hold a real token; 0 = padding or free) and `position_ids` cover every position the call writes.
"""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from ftjax.models.dropout import Dropout
from ftjax.models.layers import (
  ACTIVATIONS,
  Dense,
  Embed,
  LayerNorm,
  adapter,
  attention,
  causal_bias,
  decoder_inputs,
  prepend_prefix,
)
from ftjax.models.outputs import DecoderOutput
from ftjax.peft import prompts
from ftjax.peft.spec import NO_PEFT, PeftSpec


@dataclasses.dataclass(frozen=True)
class GPT2Config:
  vocab_size: int = 50257
  n_positions: int = 1024
  n_embd: int = 768
  n_layer: int = 12
  n_head: int = 12
  n_inner: int | None = None  # None → 4 × n_embd
  activation_function: str = "gelu_new"
  resid_pdrop: float = 0.1
  embd_pdrop: float = 0.1
  attn_pdrop: float = 0.1
  layer_norm_epsilon: float = 1e-5
  scale_attn_weights: bool = True
  scale_attn_by_inverse_layer_idx: bool = False
  bos_token_id: int = 50256
  eos_token_id: int = 50256

  @classmethod
  def from_hf(cls, hf: dict) -> "GPT2Config":
    if hf.get("activation_function", "gelu_new") not in ACTIVATIONS:
      raise ValueError(f"unknown activation_function {hf['activation_function']!r}; known: {sorted(ACTIVATIONS)}")
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in hf.items() if k in names})

  @property
  def head_dim(self) -> int:
    return self.n_embd // self.n_head

  @property
  def max_positions(self) -> int:
    return self.n_positions


class GPT2Attention(nn.Module):
  config: GPT2Config
  layer_index: int
  peft: PeftSpec = NO_PEFT
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, hidden, key_mask, first_slot, layer_cache, deterministic):
    c = self.config
    qkv = Dense(3 * c.n_embd, peft=self.peft, dtype=self.dtype, name="c_attn")(hidden, deterministic)
    q, k, v = (x.reshape(x.shape[:2] + (c.n_head, c.head_dim)) for x in jnp.split(qkv, 3, axis=-1))
    if layer_cache is not None:  # write this call's keys/values into their slots, attend the whole cache
      k = jax.lax.dynamic_update_slice(layer_cache["key"], k.astype(layer_cache["key"].dtype), (0, first_slot, 0, 0))
      v = jax.lax.dynamic_update_slice(
        layer_cache["value"], v.astype(layer_cache["value"].dtype), (0, first_slot, 0, 0)
      )
      layer_cache = {"key": k, "value": v}
    bias = causal_bias(key_mask, hidden.shape[1], first_slot)
    if self.peft.prefix_length:
      k, v, bias = prepend_prefix(k, v, bias, *prompts.key_value_prefix(self, c.n_head, c.head_dim, self.peft))
    scale = (1.0 / c.head_dim**0.5) if c.scale_attn_weights else 1.0
    if c.scale_attn_by_inverse_layer_idx:
      scale /= self.layer_index + 1
    out = attention(q, k, v, bias, Dropout(c.attn_pdrop), deterministic, self.dtype, scale)
    out = Dense(c.n_embd, peft=self.peft, dtype=self.dtype, name="c_proj")(out.reshape(hidden.shape), deterministic)
    return Dropout(c.resid_pdrop)(out, deterministic=deterministic), layer_cache


class GPT2MLP(nn.Module):
  config: GPT2Config
  peft: PeftSpec = NO_PEFT
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, hidden, deterministic):
    c = self.config
    dense = functools.partial(Dense, peft=self.peft, dtype=self.dtype)
    h = ACTIVATIONS[c.activation_function](dense(c.n_inner or 4 * c.n_embd, name="c_fc")(hidden, deterministic))
    h = dense(c.n_embd, name="c_proj")(h, deterministic)
    return Dropout(c.resid_pdrop)(h, deterministic=deterministic)


class GPT2Block(nn.Module):
  config: GPT2Config
  layer_index: int
  peft: PeftSpec = NO_PEFT
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, hidden, key_mask, first_slot, layer_cache, deterministic):
    c = self.config
    a, layer_cache = GPT2Attention(c, self.layer_index, self.peft, self.dtype, name="attn")(
      LayerNorm(c.layer_norm_epsilon, self.dtype, name="ln_1")(hidden), key_mask, first_slot, layer_cache, deterministic
    )
    hidden = hidden + adapter(self, a, self.peft, "attention", self.dtype)
    m = GPT2MLP(c, self.peft, self.dtype, name="mlp")(
      LayerNorm(c.layer_norm_epsilon, self.dtype, name="ln_2")(hidden), deterministic
    )
    return hidden + adapter(self, m, self.peft, "ffn", self.dtype), layer_cache


class GPT2LMHeadModel(nn.Module):
  """`apply({"params": ...}, input_ids, attention_mask=..., deterministic=True)` → DecoderOutput."""

  config: GPT2Config
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
    wte = Embed(c.vocab_size, c.n_embd, self.dtype, name="wte")
    embeds, attention_mask, position_ids, n_prompt = decoder_inputs(
      self, wte, input_ids, attention_mask, position_ids, embedding_perturbation, cache, prepend_prompt
    )
    last_position = embeds.shape[1] if cache is None else cache["h_0"]["key"].shape[1]
    if last_position > c.n_positions:
      raise ValueError(
        f"sequence length {last_position} (soft prompt and cache included) exceeds the "
        f"model's n_positions={c.n_positions}"
      )
    hidden = embeds + Embed(c.n_positions, c.n_embd, self.dtype, name="wpe")(position_ids)
    hidden = Dropout(c.embd_pdrop)(hidden, deterministic=deterministic)
    block_cls = nn.remat(GPT2Block, static_argnums=(5,)) if self.remat else GPT2Block
    new_cache = {} if cache is not None else None
    for i in range(c.n_layer):
      name = f"h_{i}"
      hidden, layer_cache = block_cls(c, i, self.peft, self.dtype, name=name)(
        hidden, attention_mask, cache_index, None if cache is None else cache[name], deterministic
      )
      if cache is not None:
        new_cache[name] = layer_cache
    hidden = LayerNorm(c.layer_norm_epsilon, self.dtype, name="ln_f")(hidden)
    if n_prompt:  # drop the soft-prompt positions: outputs align with input_ids again
      hidden = hidden[:, n_prompt:]
    return DecoderOutput(logits=wte.attend(hidden), last_hidden_state=hidden, cache=new_cache)

  def init_cache(self, batch: int, length: int, dtype=None) -> dict:
    """An empty cache of `length` slots in the compute dtype: what `ftjax.generation` asks every decoder for."""
    return init_cache(self.config, batch, length, self.dtype if dtype is None else dtype)


def init_cache(config: GPT2Config, batch: int, length: int, dtype=jnp.float32) -> dict:
  """An empty key/value cache of `length` slots per layer."""
  shape = (batch, length, config.n_head, config.head_dim)
  return {f"h_{i}": {"key": jnp.zeros(shape, dtype), "value": jnp.zeros(shape, dtype)} for i in range(config.n_layer)}


HF_PREFIXES = ("transformer.",)

# LoRA's default targets (config lora.targets="default"): the fused q/k/v projection, as PEFT.
LORA_TARGETS = r"attn/c_attn$"


def hf_names(config: GPT2Config, hf_keys) -> list[tuple[str, str, bool]]:
  """(our path, HF name, transpose) for every tensor. Conv1D is (in, out) like Flax: nothing transposed.
  `lm_head.weight` is tied to `wte` and not read."""
  names = [
    ("wte/embedding", "wte.weight", False),
    ("wpe/embedding", "wpe.weight", False),
    ("ln_f/scale", "ln_f.weight", False),
    ("ln_f/bias", "ln_f.bias", False),
  ]
  for i in range(config.n_layer):
    for dense in ("attn/c_attn", "attn/c_proj", "mlp/c_fc", "mlp/c_proj"):
      hf = f"h.{i}.{dense.replace('/', '.')}"
      names += [(f"h_{i}/{dense}/kernel", f"{hf}.weight", False), (f"h_{i}/{dense}/bias", f"{hf}.bias", False)]
    for norm in ("ln_1", "ln_2"):
      names += [
        (f"h_{i}/{norm}/scale", f"h.{i}.{norm}.weight", False),
        (f"h_{i}/{norm}/bias", f"h.{i}.{norm}.bias", False),
      ]
  return names


# Where each parameter lives on the (data, fsdp, tensor) mesh (ftjax/sharding.py): column-parallel c_attn
# and c_fc, row-parallel c_proj, vocabulary-parallel wte (tied to the output layer), FSDP over the other
# dimension; biases and LayerNorms replicated.
SHARDING = (
  r"^backbone/.*/(c_attn|c_fc)/kernel$:fsdp,tensor",
  r"^backbone/.*/c_proj/kernel$:tensor,fsdp",
  r"^backbone/wte/embedding$:tensor,fsdp",
  r"^backbone/wpe/embedding$:-,fsdp",
  r"^backbone/.*/(bias|scale)$:",
)

Config, Model = GPT2Config, GPT2LMHeadModel  # what `ftjax.models.loading` looks up per architecture

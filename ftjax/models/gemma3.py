"""Gemma 3 text decoders (Gemma Team 2025) as Hugging Face's `Gemma3ForCausalLM` computes them.

Gemma 3 is a Llama-family decoder (grouped-query attention with rotary embeddings, a gated MLP): the
model is llama.py's, with Gemma's block and config. What differs:
- token embeddings are multiplied by √hidden_size (in float32); the tied LM head reads the raw table;
- RMSNorm multiplies by (1 + weight): checkpoints store the weight minus one;
- each sub-layer is normed before and after: h += post_norm(attn(input_norm(h))), then
  h += post_ffw_norm(mlp(pre_ffw_norm(h)));
- queries and keys get a per-head RMSNorm (`q_norm`, `k_norm`) before rotary;
- scores are scaled by query_pre_attn_scalar^-1/2, not head_dim^-1/2;
- the MLP is gelu(tanh)-gated: down(gelu_tanh(gate(x)) · up(x));
- layers alternate: `sliding_attention` layers attend the last `sliding_window` slots with rotary base
  `rope_local_base_freq` (10⁴), `full_attention` layers (every 6th by default) attend everything with
  base `rope_theta` (10⁶) and its optional scaling;
- the logits are soft-capped, cap · tanh(logits / cap), when `final_logit_softcapping` is set.
transformers' Gemma 3 ignores `attn_logit_softcapping` (it never reaches its attention functions); we
refuse a value rather than guess. Bidirectional attention (EmbeddingGemma) is refused too.

PEFT hooks as in llama.py: LoRA through every Dense, adapters after each sub-layer's post-norm (before
the residual sum), soft prompts prepended (unscaled, as PEFT passes them as input embeddings), prefixes.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from ftjax.models import llama
from ftjax.models.layers import adapter
from ftjax.models.llama import LlamaAttention, LlamaMLP, RMSNorm, rope_frequencies
from ftjax.peft.spec import NO_PEFT, PeftSpec


@dataclasses.dataclass(frozen=True)
class Gemma3Config(llama.LlamaConfig):
  vocab_size: int = 262_208
  hidden_act: str = "gelu_pytorch_tanh"  # config.json's `hidden_activation`
  qk_norm: bool = True
  rope_theta: float = 1_000_000.0  # full-attention layers
  rope_local_base_freq: float = 10_000.0  # sliding-window layers (never scaled)
  query_pre_attn_scalar: float = 256.0  # scores are scaled by its inverse square root
  final_logit_softcapping: float | None = None
  tie_word_embeddings: bool = True
  bos_token_id: int | None = 2
  eos_token_id: int | tuple[int, ...] | None = 1
  model_type: str = "gemma3_text"

  model_types = ("gemma3_text",)
  norm_unit_offset = True

  @classmethod
  def from_hf(cls, hf: dict) -> "Gemma3Config":
    """From a config.json dict (`Gemma3TextConfig`): `rope_parameters` per layer type (transformers ≥ 5)
    or `rope_theta`, `rope_local_base_freq` and `rope_scaling`; `layer_types` or `sliding_window_pattern`."""
    if hf.get("use_bidirectional_attention"):
      raise ValueError("use_bidirectional_attention=true (EmbeddingGemma) is not supported: ftjax's Gemma 3 is causal")
    if hf.get("attn_logit_softcapping") is not None:
      raise ValueError("attn_logit_softcapping is not supported (transformers' Gemma 3 does not apply it either)")
    rope = hf.get("rope_parameters") or {}
    full = dict(rope.get("full_attention") or hf.get("rope_scaling") or {})
    local = dict(rope.get("sliding_attention") or {})
    theta = full.pop("rope_theta", hf.get("rope_theta", 1_000_000.0))
    local_theta = local.pop("rope_theta", hf.get("rope_local_base_freq", 10_000.0))
    if local.get("rope_type", local.get("type", "default")) != "default":
      raise ValueError(f"rope scaling on sliding-window layers ({local}) is not supported")
    rope_type = full.pop("rope_type", full.pop("type", "default"))
    scaling = () if rope_type == "default" else tuple(sorted({"rope_type": rope_type, **full}.items()))
    layers = hf.get("num_hidden_layers", 26)
    pattern = hf.get("sliding_window_pattern", 6)
    layer_types = hf.get("layer_types") or [
      "sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(layers)
    ]
    names = {f.name for f in dataclasses.fields(cls)} - {"rope_theta", "rope_scaling", "layer_types", "hidden_act"}
    fields = {k: v for k, v in hf.items() if k in names}
    if isinstance(fields.get("eos_token_id"), list):
      fields["eos_token_id"] = tuple(fields["eos_token_id"])
    return cls(
      **fields,
      hidden_act=hf.get("hidden_activation", hf.get("hidden_act", "gelu_pytorch_tanh")),
      rope_theta=float(theta),
      rope_local_base_freq=float(local_theta),
      rope_scaling=scaling,
      layer_types=tuple(layer_types),
      qk_norm=True,
    )

  def rope_frequencies(self, layer: int) -> np.ndarray:
    """Local base (unscaled) in sliding-window layers, global base and scaling in full-attention ones."""
    if self.layer_types[layer] == "sliding_attention":
      return rope_frequencies(self.head_dim, self.rope_local_base_freq)
    return rope_frequencies(self.head_dim, self.rope_theta, self.rope_scaling)

  @property
  def attention_scale(self) -> float:
    return self.query_pre_attn_scalar**-0.5

  @property
  def embedding_scale(self) -> float:
    """√hidden_size, rounded to float32 as transformers' float32 buffer holds it."""
    return float(np.float32(self.hidden_size**0.5))


class Gemma3Block(nn.Module):
  config: Gemma3Config
  peft: PeftSpec = NO_PEFT
  dtype: jnp.dtype = jnp.float32
  layer: int = 0

  @nn.compact
  def __call__(self, hidden, key_mask, position_ids, first_slot, layer_cache, deterministic):
    c = self.config
    norm = lambda name: RMSNorm(c.rms_norm_eps, self.dtype, True, name=name)
    a, layer_cache = LlamaAttention(c, self.peft, self.dtype, self.layer, name="self_attn")(
      norm("input_layernorm")(hidden), key_mask, position_ids, first_slot, layer_cache, deterministic
    )
    hidden = hidden + adapter(self, norm("post_attention_layernorm")(a), self.peft, "attention", self.dtype)
    m = LlamaMLP(c, self.peft, self.dtype, name="mlp")(norm("pre_feedforward_layernorm")(hidden), deterministic)
    return hidden + adapter(self, norm("post_feedforward_layernorm")(m), self.peft, "ffn", self.dtype), layer_cache


class Gemma3ForCausalLM(llama.LlamaForCausalLM):
  """llama.py's model with Gemma 3's block; the config supplies the embedding scale, the (1 + w) final
  norm and the logit soft-cap. `apply(...)` → DecoderOutput, as every decoder."""

  block = Gemma3Block


HF_PREFIXES = ()

# LoRA's default targets (config lora.targets="default"): q_proj and v_proj, as PEFT for Gemma.
LORA_TARGETS = llama.LORA_TARGETS


def hf_names(config: Gemma3Config, hf_keys) -> list[tuple[str, str, bool]]:
  """llama.py's names (q/k norms included), plus the norms around the MLP."""
  names = llama.hf_names(config, hf_keys)
  for i in range(config.num_hidden_layers):
    for norm in ("pre_feedforward_layernorm", "post_feedforward_layernorm"):
      names.append((f"layers_{i}/{norm}/scale", f"model.layers.{i}.{norm}.weight", False))
  return names


# Where each parameter lives on the (data, fsdp, tensor) mesh (ftjax/sharding.py): Llama's rules; Gemma 3's
# extra norms are scales too (replicated).
SHARDING = llama.SHARDING

Config, Model = Gemma3Config, Gemma3ForCausalLM  # what `ftjax.models.loading` looks up per architecture

"""Building blocks shared by every architecture: dense layers that host LoRA, attention, norms.

Precision: parameters are always float32. `dtype` is the compute dtype. With bfloat16 compute, matmuls
take bfloat16 inputs but accumulate in float32 (`preferred_element_type`): on CPUs bf16 only pays that
way, and on accelerators it is what the matrix units do anyway. Softmax and normalisation statistics are
computed in float32 whatever the compute dtype.
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from ftjax.peft import adapters, lora, prompts
from ftjax.peft.spec import NO_PEFT, PeftSpec

# Hugging Face `hidden_act` names → functions. "gelu" is the exact erf form; "gelu_new" is GPT-2's tanh.
ACTIVATIONS = {
  "gelu": functools.partial(jax.nn.gelu, approximate=False),
  "gelu_new": functools.partial(jax.nn.gelu, approximate=True),
  "gelu_pytorch_tanh": functools.partial(jax.nn.gelu, approximate=True),
  "gelu_fast": functools.partial(jax.nn.gelu, approximate=True),
  "relu": jax.nn.relu,
  "silu": jax.nn.silu,
  "swish": jax.nn.silu,
}


def matmul(x: jax.Array, w: jax.Array, dtype=jnp.float32) -> jax.Array:
  """x (..., in) · w (in, out) in `dtype`, accumulated in float32; returns float32."""
  if jnp.dtype(dtype) != jnp.float32:
    return low_precision_matmul(x, w, jnp.dtype(dtype), x.dtype, w.dtype)
  return jax.lax.dot_general(
    x.astype(dtype), w.astype(dtype), (((x.ndim - 1,), (0,)), ((), ())), preferred_element_type=jnp.float32
  )


def batched_matmul(a: jax.Array, b: jax.Array, dtype) -> jax.Array:
  """a (..., m, k) @ b (..., k, n) with equal batch dimensions, in `dtype`, accumulated in float32."""
  if jnp.dtype(dtype) != jnp.float32:
    return low_precision_matmul(a, b, jnp.dtype(dtype), a.dtype, b.dtype)
  return jnp.matmul(a.astype(dtype), b.astype(dtype), preferred_element_type=jnp.float32)


def _dot(a, b, contract, batch=()):
  return jax.lax.dot_general(a, b, (contract, (batch, batch)), preferred_element_type=jnp.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def low_precision_matmul(a, b, dtype, a_dtype, b_dtype):
  """a (..., m, k) @ b, b either (k, n) or (..., k, n) with a's batch dimensions, with `dtype` (bfloat16)
  operands and float32 accumulation, forward and backward. JAX's own transpose of such a product
  multiplies the float32 cotangent by a bfloat16 operand: XLA then runs the two backward matmuls (2/3
  of a training step's FLOPs) in float32, and rounds the weight gradient to bfloat16. Here the cotangent
  is cast to `dtype` (as mixed-precision training does), both backward products accumulate in float32
  (on this CPU a bf16·bf16→f32 matmul runs on AMX at ~5× float32's rate, bf16→bf16 at half float32's),
  and the weight gradient comes back in float32. a_dtype, b_dtype: the cotangents' dtypes."""
  del a_dtype, b_dtype
  return _low_precision_forward(a.astype(dtype), b.astype(dtype))


def _low_precision_forward(a, b):
  batch = tuple(range(b.ndim - 2))  # none for a (k, n) weight; a's batch dimensions otherwise
  return _dot(a, b, ((a.ndim - 1,), (b.ndim - 2,)), batch)


def _low_precision_fwd(a, b, dtype, a_dtype, b_dtype):
  del a_dtype, b_dtype
  a, b = a.astype(dtype), b.astype(dtype)  # saved in `dtype`: half the activation memory of float32
  return _low_precision_forward(a, b), (a, b)


def _low_precision_bwd(dtype, a_dtype, b_dtype, saved, g):
  a, b = saved
  g = g.astype(dtype)
  da = _dot(g, b, ((g.ndim - 1,), (b.ndim - 1,)), tuple(range(b.ndim - 2)))  # g bᵀ: (..., m, n)·(..., k, n)
  if b.ndim == 2:  # a (k, n) weight: its gradient sums over every leading position of a, N = batch × tokens
    a, g = a.reshape(-1, a.shape[-1]), g.reshape(-1, g.shape[-1])
  return da.astype(a_dtype), _weight_gradient(a, g).astype(b_dtype)


def _weight_gradient(a: jax.Array, g: jax.Array) -> jax.Array:
  """aᵀ g for a (..., N, k), g (..., N, n), in float32, as a bf16 matmul that XLA:CPU runs on AMX.

  XLA:CPU's bf16 matmul (YNNPACK) needs each operand's contracted dimension where a plain row-major
  product has it: minor for the left operand. Here N, the contracted dimension, is major in both, and
  XLA then upcasts both operands to float32 and runs the product at float32's rate (~200 vs ~750 GFLOP/s
  for MiniLM's N = 4096 shapes). So one operand is copied transposed first, the narrower one (k or n
  columns): transposing the (4096, 1536) FFN activation costs ~20 ms against ~1 ms for the (4096, 384)
  gradient beside it. With g transposed the product is (gᵀ a)ᵀ. The barriers keep XLA from folding a
  transpose of the product into the matmul, which XLA:CPU cannot run in bf16 (DotThunk: BF16 x BF16 = F32):
  the outer one here, or a caller's (a tied LM head's embedding is used transposed, so its gradient is
  transposed after this returns)."""
  batch = tuple(range(a.ndim - 2))
  if a.shape[-1] <= g.shape[-1]:
    return jax.lax.optimization_barrier(_dot(_transposed_copy(a), g, ((a.ndim - 1,), (g.ndim - 2,)), batch))
  g_t_a = _dot(_transposed_copy(g), a, ((g.ndim - 1,), (a.ndim - 2,)), batch)
  return jnp.swapaxes(jax.lax.optimization_barrier(g_t_a), -1, -2)


def _transposed_copy(x: jax.Array) -> jax.Array:
  """x (..., N, k) as (..., k, N) in row-major memory. A plain transpose would be folded back into the
  matmul's dimension numbers; a concatenation of transposed column blocks is not (the rows of the
  result are contiguous blocks, so it costs one copy of x)."""
  swap = lambda y: jnp.swapaxes(y, -1, -2)
  cols = x.shape[-1]
  if cols < 2:
    return swap(x)
  return jnp.concatenate([swap(x[..., : cols // 2]), swap(x[..., cols // 2 :])], axis=-2)


low_precision_matmul.defvjp(_low_precision_fwd, _low_precision_bwd)


class Dense(nn.Module):
  """A linear layer (kernel in × out, Flax layout) that LoRA can adapt when `peft` targets its path."""

  features: int
  use_bias: bool = True
  peft: PeftSpec = NO_PEFT
  dtype: jnp.dtype = jnp.float32
  kernel_init: nn.initializers.Initializer = nn.initializers.normal(0.02)

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
    kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features), jnp.float32)
    mm = functools.partial(matmul, dtype=self.dtype)
    y = mm(x, kernel)
    if self.peft.lora_applies_to(self.scope.path):
      y = lora.apply_lora(self, x, y, kernel, self.peft, deterministic, mm)
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
    return y.astype(self.dtype)


def adapter(module: nn.Module, h: jax.Array, peft: PeftSpec, site: str, dtype) -> jax.Array:
  """Bottleneck adapter at `site` of `module`, if the method places one there (see peft/adapters.py)."""
  return adapters.bottleneck_adapter(module, h, peft, site, functools.partial(matmul, dtype=dtype))


class LayerNorm(nn.Module):
  """LayerNorm with float32 statistics; `scale`/`bias` names follow Flax, eps follows the checkpoint."""

  epsilon: float = 1e-5
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    mean = x32.mean(-1, keepdims=True)
    var = jnp.square(x32 - mean).mean(-1, keepdims=True)
    scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (x.shape[-1],), jnp.float32)
    return ((x32 - mean) * jax.lax.rsqrt(var + self.epsilon) * scale + bias).astype(self.dtype)


class Embed(nn.Module):
  """A lookup table (`embedding`, num × features); `attend` gives tied output logits."""

  num_embeddings: int
  features: int
  dtype: jnp.dtype = jnp.float32
  scale: float | None = None  # multiplies the looked-up rows, not `attend` (Gemma: √hidden_size)

  def setup(self):
    self.embedding = self.param(
      "embedding", nn.initializers.normal(0.02), (self.num_embeddings, self.features), jnp.float32
    )

  def __call__(self, ids: jax.Array) -> jax.Array:
    rows = jnp.take(self.embedding, ids, axis=0)
    return (rows if self.scale is None else rows * jnp.float32(self.scale)).astype(self.dtype)

  def attend(self, x: jax.Array) -> jax.Array:
    return matmul(x, self.embedding.T, self.dtype)  # float32 logits


def mask_bias(query_valid_key: jax.Array) -> jax.Array:
  """Boolean (B, T, S) 'query may attend key' → additive (B, 1, T, S) bias for the scores."""
  return jnp.where(query_valid_key[:, None], 0.0, jnp.finfo(jnp.float32).min).astype(jnp.float32)


def causal_bias(key_mask: jax.Array, num_queries: int, first_query_slot=0, window: int | None = None) -> jax.Array:
  """Decoder attention bias: the query in slot `first_query_slot + t` may attend key slot s iff s ≤ that
  slot and key_mask[b, s] (padding and not-yet-written cache slots are 0). key_mask is (B, S).
  With a sliding `window` [slots], also iff s > that slot − window (Mistral's, as transformers counts it)."""
  query_slots = first_query_slot + jnp.arange(num_queries)[:, None]
  key_slots = jnp.arange(key_mask.shape[1])[None, :]
  causal = key_slots <= query_slots
  if window is not None:
    causal = causal & (key_slots > query_slots - window)
  return mask_bias(causal[None] & (key_mask[:, None, :] > 0))


def prepend_prefix(k: jax.Array, v: jax.Array, bias: jax.Array, prefix_k: jax.Array, prefix_v: jax.Array):
  """Prefix tuning: every query also attends the learned (P, heads, D) key/value prefix; never masked."""
  batch = k.shape[0]
  k = jnp.concatenate([jnp.broadcast_to(prefix_k.astype(k.dtype), (batch,) + prefix_k.shape), k], axis=1)
  v = jnp.concatenate([jnp.broadcast_to(prefix_v.astype(v.dtype), (batch,) + prefix_v.shape), v], axis=1)
  bias = jnp.concatenate([jnp.zeros(bias.shape[:3] + (prefix_k.shape[0],), bias.dtype), bias], axis=-1)
  return k, v, bias


def attention(
  q: jax.Array,
  k: jax.Array,
  v: jax.Array,
  bias: jax.Array,
  dropout: nn.Module | None,
  deterministic: bool,
  dtype,
  scale: float | None = None,
) -> jax.Array:
  """Scaled dot-product attention. q (B, T, H, D), k/v (B, S, H, D), bias (B, 1, T, S) → (B, T, H, D).

  `scale` multiplies the scores; default 1/√D. Grouped-query attention passes k/v with fewer heads
  that divide H: each key/value head serves H/kv_heads consecutive query heads.
  """
  if k.shape[2] != q.shape[2]:
    groups = q.shape[2] // k.shape[2]
    k, v = jnp.repeat(k, groups, axis=2), jnp.repeat(v, groups, axis=2)
  scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
  # Head-major layouts with the batch dimensions leading make both products plain batched matmuls;
  # XLA:CPU runs them ~3.5× faster than the equivalent einsum over (B, T, H, D) operands.
  q_heads = jnp.swapaxes(q, 1, 2).astype(dtype)  # (B, H, T, D)
  k_heads_t = jnp.transpose(k, (0, 2, 3, 1)).astype(dtype)  # (B, H, D, S)
  v_heads = jnp.swapaxes(v, 1, 2).astype(dtype)  # (B, H, S, D)
  scores = batched_matmul(q_heads, k_heads_t, dtype) * scale
  probs = jax.nn.softmax(scores + bias, axis=-1)
  if dropout is not None:
    probs = dropout(probs, deterministic=deterministic)
  out = batched_matmul(probs.astype(dtype), v_heads, dtype)
  return jnp.swapaxes(out, 1, 2).astype(dtype)


def decoder_inputs(
  module: nn.Module, embed: Embed, input_ids, attention_mask, position_ids, perturbation, cache, prepend_prompt: bool
):
  """What every decoder does before its blocks: (embeddings, attention mask, position ids, soft tokens).

  Adds the adversarial perturbation to the token embeddings; prepends the soft prompt (prompt tuning)
  and, without a cache, extends the mask over it; derives positions from the mask, so that left padding
  shifts the first real token to position 0 as transformers' generate() does. With a cache, the caller
  gives the mask over every cache slot and the positions of every written position (see gpt2.py)."""
  batch = input_ids.shape[0]
  if attention_mask is None:
    if cache is not None:
      raise ValueError("decoding with a cache needs attention_mask over every cache slot")
    attention_mask = jnp.ones_like(input_ids)
  embeds = embed(input_ids)
  if perturbation is not None:  # adversarial training perturbs the token-embedding output
    embeds = embeds + perturbation.astype(embeds.dtype)
  n_prompt = module.peft.prompt_length if prepend_prompt else 0
  if n_prompt:
    prompt = prompts.soft_prompt(module, embed.embedding, module.peft).astype(embeds.dtype)
    embeds = jnp.concatenate([jnp.broadcast_to(prompt, (batch,) + prompt.shape), embeds], axis=1)
    if cache is None:
      attention_mask = jnp.concatenate([jnp.ones((batch, n_prompt), attention_mask.dtype), attention_mask], 1)
  if position_ids is None:
    if cache is not None:
      raise ValueError("decoding with a cache needs position_ids for every position written")
    position_ids = jnp.maximum(jnp.cumsum(attention_mask, axis=1) - 1, 0)
  return embeds, attention_mask, position_ids, n_prompt

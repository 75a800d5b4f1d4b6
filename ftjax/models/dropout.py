"""Dropout, as every ftjax module draws it: Flax's masks, bit for bit, hashed once per step on CPU.

A dropout mask is used twice in a training step: on the activation in the forward pass and on its
cotangent in the backward pass, where XLA often needs it in two or three fusions (the gradient of a
dense layer's output feeds its input gradient, its weight gradient through a transposed copy, and its
bias gradient). With the unrolled threefry lowering (ftjax/xla_cpu.py) the hash that draws the mask is a
chain of cheap integer ops, and XLA's fusion copies cheap producers into every consumer instead of
writing the mask out: in the MiniLM full fine-tuning step, the 20 masks were hashed 64 times. An
`optimization_barrier` does not stop it (XLA:CPU removes barriers before fusion).

So on CPU the mask is packed into bits (one uint8 per 8 elements, a reduction, which XLA's fusion does
not copy into consumers) and unpacked where it is used: the hash runs once per mask, the packed masks of
the MiniLM step take 7 MB, and each mask is what `flax.linen.Dropout` draws from the same key, so
losses and trained weights are unchanged (tests/test_dropout.py). On GPU and TPU the mask is used as
drawn: XLA's choice there is left alone (not measured).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen.module import merge_param

_BITS = 8  # mask elements per packed uint8


def _through_packed_bits(mask: jax.Array) -> jax.Array:
  """The same boolean mask, packed into uint8 along its last axis and unpacked again."""
  n = mask.shape[-1]
  pad = -n % _BITS
  if pad:
    mask = jnp.pad(mask, [(0, 0)] * (mask.ndim - 1) + [(0, pad)])
  shifts = jnp.arange(_BITS, dtype=jnp.uint8)
  grouped = mask.reshape(*mask.shape[:-1], -1, _BITS).astype(jnp.uint8)
  packed = jnp.sum(grouped << shifts, axis=-1, dtype=jnp.uint8)  # distinct bits: the sum is an OR
  unpacked = ((packed[..., None] >> shifts) & 1).astype(jnp.bool_)
  return unpacked.reshape(*mask.shape[:-1], -1)[..., :n]


def hashed_once(mask: jax.Array) -> jax.Array:
  """`mask` unchanged, routed on CPU so that XLA computes it once however many fusions read it."""
  return jax.lax.platform_dependent(mask, cpu=_through_packed_bits, default=lambda m: m)


class Dropout(nn.Dropout):
  """`flax.linen.Dropout` (same fields, same rng stream, same masks), with the mask hashed once on CPU.
  The class name is Flax's too, so modules keep their automatic names (Dropout_0, ...) and their keys."""

  @nn.compact
  def __call__(self, inputs, deterministic: bool | None = None, rng=None):
    deterministic = merge_param("deterministic", self.deterministic, deterministic)
    if self.rate == 0.0 or deterministic:
      return inputs
    if self.rate == 1.0:  # Flax's edge case: no NaN gradients from 0 / 0
      return jnp.zeros_like(inputs)
    keep_prob = 1.0 - self.rate
    if rng is None:
      rng = self.make_rng(self.rng_collection)
    shape = list(inputs.shape)
    for dim in self.broadcast_dims:
      shape[dim] = 1
    mask = hashed_once(jax.random.bernoulli(rng, p=keep_prob, shape=shape))
    mask = jnp.broadcast_to(mask, inputs.shape)
    return jax.lax.select(mask, inputs / keep_prob, jnp.zeros_like(inputs))

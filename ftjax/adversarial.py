"""Adversarial training in embedding space: FGM, PGD and FreeLB, inside the training step.

The perturbation r (B, T, H) is added to the word-embedding output of the backbone (the models take
`embedding_perturbation=`), so it works when the embedding matrix, or the whole backbone, is frozen —
the usual PyTorch recipe perturbs the embedding *matrix* in place and cannot. Norms are per example,
over (T, H), with padding positions masked.

- FGM (Miyato et al. 2017): r = ε·g/‖g‖₂ with g = ∂L/∂r at r = 0; loss = L(x) + w·L(x + r). The clean
  backward pass yields g for free, so FGM costs two forward-backward passes.
- PGD (Madry et al. 2018): K ascent steps of size α along g/‖g‖, each projected back onto the ε-ball;
  loss = L(x) + w·L(x + r_K). K + 1 passes (the clean pass gives the first ascent direction).
- FreeLB (Zhu et al. 2020): K ascent steps from a random start in the ε-ball; the parameter gradient
  is the average of the K gradients taken along the way ("free" adversarial training); no clean term.

All take `loss_fn(trainable, r) -> (loss_sum, aux)`; r = None means clean. Gradients are with respect
to the trainable pytree only. The same dropout key serves every pass of a step, so the passes differ
only by r.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from ftjax.errors import InputError

METHODS = ("none", "fgm", "pgd", "freelb")


def _normalize(g, mask):
  """g / ‖g‖₂ per example over (T, H), padding masked; safe at g = 0."""
  g = g * mask[:, :, None]
  norm = jnp.sqrt(jnp.sum(jnp.square(g), axis=(1, 2), keepdims=True))
  return g / jnp.maximum(norm, 1e-12)


def _project(r, epsilon):
  """Back onto the per-example ε-ball."""
  norm = jnp.sqrt(jnp.sum(jnp.square(r), axis=(1, 2), keepdims=True))
  return r * jnp.minimum(1.0, epsilon / jnp.maximum(norm, 1e-12))


def fgm_perturbation(g, mask, epsilon):
  return epsilon * _normalize(g, mask)


def loss_and_grads(loss_fn, trainable, shape, mask, config, rng):
  """(loss_sum, aux, grads) for the configured method. shape = (B, T, H) of the embedding output."""
  method = config.method
  if method == "none":
    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable, None)
    return loss, aux, grads
  mask = mask.astype(jnp.float32)
  zeros = jnp.zeros(shape, jnp.float32)
  add = lambda a, b, w=1.0: jax.tree.map(lambda x, y: x + w * y, a, b)
  if method in ("fgm", "pgd"):
    (clean, aux), (grads, g) = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)(trainable, zeros)
    if method == "fgm":
      r = fgm_perturbation(g, mask, config.epsilon)
    else:
      r = _project(config.step_size * _normalize(g, mask), config.epsilon)
      delta_grad = jax.grad(lambda r: loss_fn(trainable, r)[0])
      for _ in range(config.steps - 1):
        r = _project(r + config.step_size * _normalize(delta_grad(r), mask), config.epsilon)
    (adv, _), adv_grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable, jax.lax.stop_gradient(r))
    return clean + config.weight * adv, aux, add(grads, adv_grads, config.weight)
  if method == "freelb":
    # Random start: uniform in [-1, 1], scaled to norm `init_magnitude` per example (Zhu et al.'s
    # init_mag / sqrt(T·H) normalisation), on real tokens only.
    r = jax.random.uniform(rng, shape, jnp.float32, -1.0, 1.0) * mask[:, :, None]
    r = config.init_magnitude * _normalize(r, mask)
    total_loss, grads, aux = 0.0, None, None
    for _ in range(config.steps):
      (loss, aux), (g_params, g_r) = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)(trainable, r)
      total_loss = total_loss + loss / config.steps
      g_params = jax.tree.map(lambda x: x / config.steps, g_params)
      grads = g_params if grads is None else add(grads, g_params)
      r = r + config.step_size * _normalize(g_r, mask)
      if config.epsilon > 0:
        r = _project(r, config.epsilon)
      r = jax.lax.stop_gradient(r)
    return total_loss, aux, grads
  raise InputError(f"config key adversarial.method must be one of {METHODS}, got {method!r}")

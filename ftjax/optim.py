"""The optimiser: one optax chain built from the config, over the trainable pytree only.

  clip_by_global_norm → Adam moments → decoupled weight decay (masked) → learning-rate schedule
  → per-parameter learning-rate multipliers

That is AdamW (Loshchilov & Hutter 2019) with PyTorch's parameter-group semantics: a group's learning
rate scales its weight decay too. The multipliers are a static pytree of floats computed from paths:
  - `head_lr_multiplier` for the task head (a fresh head often wants a larger rate);
  - `lora_plus_ratio` for LoRA's B factors (LoRA+, Hayou et al. 2024: η_B = ratio × η_A);
  - `layer_decay` (layer-wise learning-rate decay, Clark et al. 2020): layer i of L gets
    decay^(L − i), the embeddings decay^(L + 1)... so the top trains fastest; the head and method
    parameters of a layer follow that layer.
No weight decay on biases, norms, and (unless `decay_embeddings`) embeddings and soft prompts.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import optax

from ftjax.errors import InputError
from ftjax import trainability

_LAYER = re.compile(r"/(?:layer_|h_|layers_)(\d+)/")


def schedule(config, total_steps: int) -> optax.Schedule:
  """Linear warm-up to `learning_rate`, then linear or cosine decay to 0 at `total_steps` (or constant)."""
  warmup = config.warmup_steps if config.warmup_steps >= 0 else int(config.warmup_ratio * total_steps)
  warmup = min(warmup, max(total_steps - 1, 0))
  decay_steps = max(total_steps - warmup, 1)
  decay = {
    "linear": optax.linear_schedule(config.learning_rate, 0.0, decay_steps),
    "cosine": optax.cosine_decay_schedule(config.learning_rate, decay_steps),
    "constant": optax.constant_schedule(config.learning_rate),
  }
  if config.schedule not in decay:
    raise InputError(f"config key schedule must be one of {sorted(decay)}, got {config.schedule!r}")
  if warmup == 0:
    return decay[config.schedule]
  return optax.join_schedules(
    [optax.linear_schedule(0.0, config.learning_rate, warmup), decay[config.schedule]], [warmup]
  )


def _depth(path: str, num_layers: int) -> int:
  """0 for embeddings and soft prompts, i + 1 for layer i, num_layers + 1 for the rest (pooler, head)."""
  match = _LAYER.search(path)
  if match:
    return int(match.group(1)) + 1
  if "embed" in path or "wte" in path or "wpe" in path or path.startswith("prompt/"):
    return 0
  return num_layers + 1


def lr_multipliers(trainable: dict, config, num_layers: int) -> dict:
  flat = {}
  for path in trainability.flatten(trainable):
    m = config.layer_decay ** (num_layers + 1 - _depth(path, num_layers))
    if path.startswith("head/"):
      m *= config.head_lr_multiplier
    if path.startswith("lora/") and path.endswith("/b"):
      m *= config.lora_plus_ratio
    flat[path] = m
  return trainability.unflatten(flat)


def decay_mask(trainable: dict, decay_embeddings: bool) -> dict:
  """True where weight decay applies: matrices (kernels, adapter/LoRA factors), optionally embeddings."""

  def decays(path: str) -> bool:
    leaf = path.rsplit("/", 1)[-1]
    if leaf in ("bias", "scale", "magnitude") or leaf.endswith("_bias"):
      return False
    if leaf == "embedding" or path.startswith("prompt/"):
      return decay_embeddings
    return True

  return trainability.unflatten({p: decays(p) for p in trainability.flatten(trainable)})


def scale_by_multipliers(multipliers: dict) -> optax.GradientTransformation:
  def update(updates, state, params=None):
    return jax.tree.map(lambda u, m: u * jnp.asarray(m, u.dtype), updates, multipliers), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def make_optimizer(config, trainable: dict, total_steps: int, num_layers: int):
  """(optax chain, schedule) for `config` (the `optimizer` section plus `learning_rate`)."""
  lr = schedule(config, total_steps)
  chain = []
  if config.max_grad_norm > 0:
    chain.append(optax.clip_by_global_norm(config.max_grad_norm))
  chain += [
    optax.scale_by_adam(b1=config.adam_b1, b2=config.adam_b2, eps=config.adam_eps),
    optax.add_decayed_weights(config.weight_decay, mask=decay_mask(trainable, config.decay_embeddings)),
    optax.scale_by_learning_rate(lr),
    scale_by_multipliers(lr_multipliers(trainable, config, num_layers)),
  ]
  return optax.chain(*chain), lr

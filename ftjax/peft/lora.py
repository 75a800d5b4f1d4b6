"""LoRA: low-rank adaptation of frozen dense layers (Hu et al. 2021, arXiv:2106.09685).

A frozen weight W (in × out) is adapted by a rank-r product: y = x·W + s·(x·A)·B, with A (in × r)
initialised like a Kaiming-uniform linear layer and B (r × out) initialised to zero, so that at
initialisation the adapted model computes exactly what the backbone computes. The scale s is α/r, or
α/√r with rsLoRA (Kalajdzievski 2023), which keeps the update's magnitude stable as r grows.

We never build the dense update s·A·B during training: x·A is (tokens × r), so the extra cost is
2·tokens·r·(in + out) FLOPs per layer instead of in·out per token. LoRA dropout (as in the paper and in
PEFT) drops the input of the low-rank branch only.

DoRA (Liu et al. 2024, arXiv:2402.09353) decomposes the adapted weight into a magnitude m (one per
output feature, initialised to ‖W‖ over the input axis) and a direction V = W + s·A·B:
W' = m · V / ‖V‖. The norm must see the dense V; like the paper (§4.3) and PEFT, we stop its gradient,
which keeps memory at LoRA's level.

The factors live in the `lora` variable collection, at the module path of the layer they adapt:
`lora[...path...] = {"a", "b"[, "magnitude"]}` beside `params[...path...] = {"kernel", "bias"}`.
`merge` folds them into the kernels (for export or inference); `unmerge` takes them out again.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from ftjax.models.dropout import Dropout
from ftjax.peft.spec import PeftSpec


def _kaiming_uniform_a(rng, in_features: int, rank: int) -> jax.Array:
  # torch.nn.Linear's default (kaiming_uniform with a=√5) gives bound 1/√fan_in; PEFT uses it for A.
  bound = 1.0 / np.sqrt(in_features)
  return jax.random.uniform(rng, (in_features, rank), jnp.float32, -bound, bound)


def _column_norm(kernel: jax.Array) -> jax.Array:
  # Flax kernels are (in, out): one norm per output feature, over the input axis.
  return jnp.linalg.norm(kernel.astype(jnp.float32), axis=0)


def apply_lora(
  module: nn.Module, x: jax.Array, y: jax.Array, kernel: jax.Array, spec: PeftSpec, deterministic: bool, matmul
) -> jax.Array:
  """Returns the adapted pre-bias output of a Dense `module` whose plain output is y = x·kernel."""
  in_features, out_features = kernel.shape
  a = module.variable(
    "lora", "a", lambda: _kaiming_uniform_a(module.make_rng("params"), in_features, spec.lora_rank)
  ).value
  b = module.variable("lora", "b", lambda: jnp.zeros((spec.lora_rank, out_features), jnp.float32)).value
  h = x
  if spec.lora_dropout > 0.0:
    h = Dropout(spec.lora_dropout, name="lora_dropout")(h, deterministic=deterministic)
  delta = matmul(matmul(h, a), b) * spec.lora_scale
  if not spec.lora_dora:
    return y + delta
  magnitude = module.variable("lora", "magnitude", lambda: _column_norm(kernel)).value
  direction_norm = jax.lax.stop_gradient(_column_norm(kernel + spec.lora_scale * (a @ b)))
  return (magnitude / direction_norm) * (y + delta)


def lora_layers(lora: dict) -> dict[tuple[str, ...], dict]:
  """Maps each adapted module path to its {"a", "b"[, "magnitude"]} leaves."""
  layers: dict[tuple[str, ...], dict] = {}
  for path, leaf in traverse_util.flatten_dict(lora).items():
    layers.setdefault(path[:-1], {})[path[-1]] = leaf
  return layers


def merge(params: dict, lora: dict, spec: PeftSpec) -> dict:
  """Returns backbone params with every LoRA (or DoRA) update folded into its kernel."""
  flat = traverse_util.flatten_dict(params)
  for module_path, factors in lora_layers(lora).items():
    kernel_path = module_path + ("kernel",)
    if kernel_path not in flat:
      raise KeyError(f"LoRA factors at {'/'.join(module_path)} have no kernel in the backbone params")
    kernel = flat[kernel_path]
    updated = kernel + spec.lora_scale * (factors["a"] @ factors["b"])
    if spec.lora_dora:
      updated = factors["magnitude"] * updated / _column_norm(updated)
    flat[kernel_path] = updated.astype(kernel.dtype)
  return traverse_util.unflatten_dict(flat)


def unmerge(params: dict, lora: dict, spec: PeftSpec) -> dict:
  """Inverse of `merge` for plain LoRA: subtracts s·A·B from each adapted kernel."""
  if spec.lora_dora:
    raise ValueError(
      "DoRA merges are not invertible (the merged weight has lost ‖W + sAB‖): "
      "keep the unmerged backbone instead of unmerging"
    )
  flat = traverse_util.flatten_dict(params)
  for module_path, factors in lora_layers(lora).items():
    kernel_path = module_path + ("kernel",)
    kernel = flat[kernel_path]
    flat[kernel_path] = (kernel - spec.lora_scale * (factors["a"] @ factors["b"])).astype(kernel.dtype)
  return traverse_util.unflatten_dict(flat)

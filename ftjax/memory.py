"""A memory plan per device, from a model's config alone (abstract shapes: no weights read).

`plan(...)` lays every parameter out as a run would (trainability rules of the method, sharding rules on
the mesh: ftjax/sharding.py) and counts, per device:

  frozen weights      param_dtype bytes of the parameters that do not train, over their shards
  trainable weights   float32, over their shards
  gradients           float32, laid out as the trainable weights (XLA reduce-scatters them)
  optimiser state     Adam's two moments, float32, laid out as the trainable weights
  activations         what the backward pass keeps, in the compute dtype (below), plus, with fsdp, one
                      layer's weights and gradients gathered whole while it runs

Activations per token and layer (elements; the tensor axis splits all but the residual-stream ones):
6·H on the residual stream (norm inputs and outputs, sublayer outputs), q, k, v (k and v again when
grouped-query heads are repeated), the attention output, 4·F in the MLP (gate, up, activation, product)
and 2·heads·T for the attention scores and probabilities. With remat only each layer's input is kept,
and one layer's activations exist at a time while it is recomputed. A language model's float32 logits
and their gradient (2 · V per token) come on top. It is an estimate: XLA may fuse some of these away or
keep more temporaries (tests/shard_check.py compares it with the compiled step's memory analysis).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from ftjax import sharding, trainability

DTYPE_BYTES = {"float32": 4, "bfloat16": 2}
GB = 1e9  # devices are sold in decimal gigabytes (an "80 GB" H100 holds 80e9 bytes)


@dataclasses.dataclass(frozen=True)
class Shape:
  """The numbers of a transformer config that memory depends on, whatever the architecture calls them."""

  layers: int
  hidden: int
  ffn: int
  heads: int
  kv_heads: int
  vocab: int

  @classmethod
  def of(cls, config) -> "Shape":
    get = lambda *names: next(getattr(config, n) for n in names if getattr(config, n, None))  # noqa: E731
    hidden = get("hidden_size", "n_embd")
    heads = get("num_attention_heads", "n_head")
    return cls(
      layers=get("num_hidden_layers", "n_layer"),
      hidden=hidden,
      ffn=getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * hidden,
      heads=heads,
      kv_heads=getattr(config, "num_key_value_heads", None) or heads,
      vocab=config.vocab_size,
    )


def abstract_tree(model, task) -> dict:
  """Shapes of {"backbone", the method's collections, "head"} as a run builds them."""
  from ftjax.peft.spec import METHOD_COLLECTIONS

  def init():
    ids = jnp.zeros((2, 8), jnp.int32)
    variables = model.init(jax.random.key(0), ids)
    tree = {"backbone": variables["params"], **{c: variables[c] for c in METHOD_COLLECTIONS if c in variables}}
    if task.head is not None:
      tree["head"] = task.head.init(jax.random.key(1), model.apply(variables, ids), jnp.ones((2, 8)))["params"]
    return tree

  return jax.eval_shape(init)


def _bytes_per_device(tree: dict, specs: dict, mesh_sizes: dict, itemsize: int) -> int:
  total = 0
  for path, leaf in trainability.flatten(tree).items():
    shards = 1
    for entry in specs[path]:
      for axis in (entry,) if isinstance(entry, str) else entry or ():
        shards *= mesh_sizes[axis]
    total += int(np.prod(leaf.shape)) * itemsize // shards
  return total


def activation_bytes(shape: Shape, rows: int, length: int, mesh_sizes: dict, dtype_bytes: int, remat: bool, lm: bool):
  """Bytes of activations per device for `rows` rows of `length` tokens on that device."""
  t = mesh_sizes["tensor"]
  h, f, heads = shape.hidden, shape.ffn, shape.heads
  kv = shape.kv_heads * h // heads
  repeated = 2 * h if shape.kv_heads != heads else 0
  per_token = 6 * h + (h + 2 * kv + repeated + h + 4 * f + 2 * heads * length) / t
  tokens = rows * length
  layer = tokens * per_token * dtype_bytes
  kept = shape.layers * tokens * h * dtype_bytes + layer if remat else shape.layers * layer
  logits = tokens * 2 * shape.vocab / t * 4 if lm else 0
  return int(kept + logits + tokens * h * dtype_bytes)


def plan(
  model,
  task,
  rules_trainable,
  mesh_sizes: dict,
  *,
  batch_size: int,
  max_length: int,
  dtype: str = "float32",
  param_dtype: str = "float32",
  remat: bool = False,
  sharding_rules=None,
) -> dict:
  """Bytes per device of each part, and the total (see the module docstring)."""
  tree = abstract_tree(model, task)
  rules = sharding.rules_for(model) if sharding_rules is None else sharding_rules
  specs = sharding.param_specs(tree, rules, mesh_sizes)
  trainable, frozen = trainability.partition(tree, rules_trainable)
  rows_split = mesh_sizes["data"] * mesh_sizes["fsdp"]
  if batch_size % rows_split:
    raise sharding.ShardingError(f"batch size {batch_size} is not divisible by data × fsdp = {rows_split}")
  shape = Shape.of(model.config)
  weights = _bytes_per_device(trainable, specs, mesh_sizes, 4)
  parts = {
    "frozen weights": _bytes_per_device(frozen, specs, mesh_sizes, DTYPE_BYTES[param_dtype]),
    "trainable weights": weights,
    "gradients": weights,
    "optimiser state": 2 * weights,
    "activations": activation_bytes(
      shape, batch_size // rows_split, max_length, mesh_sizes, DTYPE_BYTES[dtype], remat, task.head is None
    ),
  }
  if mesh_sizes["fsdp"] > 1:  # one layer's weights gathered whole (and its float32 gradients before the scatter)
    layer = trainability.count(tree) / max(shape.layers, 1) / mesh_sizes["tensor"]
    parts["activations"] += int(layer * (DTYPE_BYTES[param_dtype] + 4))
  parts["total"] = sum(parts.values())
  return parts


def report(parts: dict, device_memory_gb: float | None) -> str:
  """The plan as a table, in bytes and GB, and whether it fits."""
  lines = [f"{'per device':24s} {'bytes':>16s} {'GB':>9s}"]
  for name, value in parts.items():
    lines.append(f"  {name:22s} {value:>16,d} {value / GB:>9.3f}")
  if device_memory_gb:
    fits = parts["total"] <= device_memory_gb * GB
    lines.append(
      f"fits in {device_memory_gb:g} GB: {'yes' if fits else 'NO'} ({100 * parts['total'] / (device_memory_gb * GB):.0f}% used)"
    )
  return "\n".join(lines)

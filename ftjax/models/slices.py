"""Reading checkpoints straight into shards: each device receives only its slices of every tensor.

A *placement* says, for every backbone parameter (our path, e.g. `layers_3/self_attn/q_proj/kernel`),
where it will live and in which dtype: `{path: (jax.sharding.Sharding | None, dtype)}`. The loaders then
make each parameter with `jax.make_array_from_callback(shape, sharding, read)`, where `read(index)` reads
only that index of the file: a safetensors slice (`safe_open(...).get_slice(name)[...]`, memory-mapped),
or the rows of a GGUF tensor that the slice needs, dequantised only over the quantisation blocks that
hold its columns. No process ever makes a whole host copy of the model; a replicated parameter is read
once per device, as `sharding.put` copies one. Sharding None means the plain loader's placement: the whole
tensor as one uncommitted array on the default device (what `from_pretrained` without a placement gives
every leaf).

Each slice goes through float32 (as the whole-tensor loader does), then to the target dtype, so a
parameter loaded this way equals the whole-tensor loader's, cast afterwards, bit for bit.

A `Tensor` is one tensor in Hugging Face's layout: its shape and `read(index) -> np.ndarray`. Our kernels
are their weights transposed (`hf_names`): our slice [i, j] is their slice [j, i], transposed.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy: safetensors' numpy slices of bf16 files need it)
import numpy as np


@dataclasses.dataclass(frozen=True)
class Tensor:
  shape: tuple[int, ...]  # Hugging Face's (torch's) layout
  read: Callable[[tuple], np.ndarray]  # index (a tuple of slices, one per dimension) → those values


def whole(value: np.ndarray) -> Tensor:
  """A tensor already in memory: the plain loader's, and torch .bin files' (a pickle cannot be sliced on disk)."""
  return Tensor(tuple(value.shape), lambda index: value[index])


def safetensors_tensors(files) -> dict[str, tuple[Tensor, object]]:
  """{name: (Tensor, file)} over safetensors files, read lazily through memory-mapped slices."""
  from safetensors import safe_open

  tensors = {}
  for file in files:
    handle = safe_open(str(file), framework="np")  # the header only: slices are read on demand
    for name in handle.keys():
      sliced = handle.get_slice(name)
      tensors[name] = (Tensor(tuple(sliced.get_shape()), sliced.__getitem__), file)
  return tensors


def transposed(tensor: Tensor) -> Tensor:
  """Our view of a tensor stored transposed: index reversed, slice transposed."""
  return Tensor(tensor.shape[::-1], lambda index: tensor.read(tuple(index)[::-1]).T)


def load(tensor: Tensor, where, dtype) -> jax.Array:
  """One parameter on `where` (a Sharding, each device reading its slice; None: whole, default device)."""
  shape = tensor.shape

  def read(index):
    return np.asarray(np.asarray(tensor.read(index), np.float32), dtype)

  if where is None:
    return jnp.asarray(read(tuple(slice(None) for _ in shape)))
  return jax.make_array_from_callback(shape, where, read)


def fill_index(index, shape) -> tuple[slice, ...]:
  """`index` as one slice per dimension with explicit start and stop (make_array_from_callback's slices
  have None bounds where a dimension is not split)."""
  index = tuple(index) + (slice(None),) * (len(shape) - len(tuple(index)))
  return tuple(slice(*s.indices(n)[:2]) for s, n in zip(index, shape))

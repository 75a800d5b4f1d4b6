"""Batches from features (features.py): deterministic order, per-host shards, a few padded lengths.

Batch contract (a dict of numpy arrays; the training step relies on it exactly):

    input_ids, attention_mask (1 = real token), token_type_ids   int32 [B, T]
    weights        float32 [B]   1 = real example, 0 = padding row (eval's last batch)
    example_index  int32 [B]     row of the features this batch row came from, -1 on padding rows; it is the
                                 way back to host-only metadata (QA offsets, NER word ids, example ids)
    labels         int32 [B] class | float32 [B] regression | int32 [B, T], -100 ignored (NER, causal LM)
    start_positions, end_positions   int32 [B]  (extractive QA)

B is the per-host batch (global batch / num_shards). T is the smallest bucket (powers of two from 16, plus
max_length) that holds the longest row of the *global* batch, so every host gets the same shape and jit
compiles a handful of programs, not one per batch. Generation prompts are left-padded in the features and
stay left-padded here (their last T columns are kept); everything else keeps its first T columns.
"""

from __future__ import annotations

import queue
import threading
from typing import Iterator

import numpy as np

from ftjax.data.features import HOST_KEYS, IGNORE

Batch = dict[str, np.ndarray]


def buckets(max_length: int, smallest: int = 16) -> list[int]:
  """Powers of two from `smallest` below max_length, then max_length itself."""
  out = []
  length = smallest
  while length < max_length:
    out.append(length)
    length *= 2
  return out + [max_length]


def epoch_order(num_examples: int, seed: int, epoch: int) -> np.ndarray:
  """The permutation of one epoch, a function of (seed, epoch) alone, so a resumed run replays it."""
  return np.random.default_rng([seed, epoch]).permutation(num_examples)


def num_train_batches(num_examples: int, batch_size: int) -> int:
  """Full global batches per epoch; training drops the last incomplete one."""
  return num_examples // batch_size


def _num_rows(features: dict[str, np.ndarray]) -> int:
  return len(features["input_ids"])


def _shard(batch_size: int, shard_index: int, num_shards: int) -> slice:
  if batch_size % num_shards:
    raise ValueError(f"global batch size {batch_size} is not divisible by the {num_shards} shards (hosts)")
  if not 0 <= shard_index < num_shards:
    raise ValueError(f"shard_index {shard_index} is outside [0, {num_shards})")
  per_host = batch_size // num_shards
  return slice(shard_index * per_host, (shard_index + 1) * per_host)


def _batch(features: dict[str, np.ndarray], rows: np.ndarray, shard: slice) -> Batch:
  """Rows of the global batch (-1 = padding row), padded to a bucket, then this host's slice of them."""
  real = rows[rows >= 0]
  mask = features["attention_mask"][real]
  max_length = mask.shape[1]
  lengths = mask.sum(axis=1)
  width = next(b for b in buckets(max_length) if b >= lengths.max(initial=1))
  # Left-padded rows (generation prompts) all end with a real token; right-padded rows that do are full
  # length, where T = max_length and either cut is the whole row. So this test picks the side safely.
  left = bool(mask[:, -1].all())
  columns = slice(max_length - width, max_length) if left else slice(0, width)
  mine = rows[shard]
  # Padding rows repeat a real row (well-formed inputs, no all-masked attention) but carry no loss.
  source = np.where(mine >= 0, mine, real[0])
  batch = {}
  for key, array in features.items():
    if key in HOST_KEYS:
      continue
    values = array[source]
    if values.ndim == 2:
      values = values[:, columns]
    if key == "labels" or key.endswith("_positions"):
      values = np.where(
        (mine >= 0).reshape((-1,) + (1,) * (values.ndim - 1)), values, IGNORE if values.ndim == 2 else 0
      ).astype(array.dtype)
    batch[key] = values
  batch["weights"] = (mine >= 0).astype(np.float32)
  batch["example_index"] = mine.astype(np.int32)
  return batch


def train_batches(
  features: dict[str, np.ndarray],
  batch_size: int,
  seed: int,
  epoch: int,
  start_batch: int = 0,
  shard_index: int = 0,
  num_shards: int = 1,
) -> Iterator[Batch]:
  """This host's part of the batches of one training epoch, from global batch `start_batch` on.

  batch_size is the global batch; every host computes the same permutation and takes its contiguous slice
  of each global batch."""
  shard = _shard(batch_size, shard_index, num_shards)
  order = epoch_order(_num_rows(features), seed, epoch)
  for b in range(start_batch, num_train_batches(_num_rows(features), batch_size)):
    yield _batch(features, order[b * batch_size : (b + 1) * batch_size], shard)


def eval_batches(
  features: dict[str, np.ndarray], batch_size: int, shard_index: int = 0, num_shards: int = 1
) -> Iterator[Batch]:
  """Every row once, in order; the last global batch is filled with padding rows of weight 0."""
  shard = _shard(batch_size, shard_index, num_shards)
  n = _num_rows(features)
  for start in range(0, n, batch_size):
    rows = np.arange(start, start + batch_size)
    yield _batch(features, np.where(rows < n, rows, -1), shard)


def prefetch(batches: Iterator[Batch], size: int = 2) -> Iterator[Batch]:
  """Build the next `size` batches in a background thread while the device runs the current one."""
  q: queue.Queue = queue.Queue(maxsize=size)
  done = object()

  def produce():
    try:
      for batch in batches:
        q.put(batch)
      q.put(done)
    except BaseException as e:  # re-raised in the consumer, where someone sees it
      q.put(e)

  threading.Thread(target=produce, daemon=True).start()
  while (item := q.get()) is not done:
    if isinstance(item, BaseException):
      raise item
    yield item

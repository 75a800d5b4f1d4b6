"""A tiny random BERT run (backbone, optional LoRA, task head, real optimiser) for mechanics tests.

Shared by test_step.py and parallel_check.py (which test_parallel.py runs on 8 simulated CPU devices).
"""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ftjax import optim, step, trainability
from ftjax.models import build_model
from ftjax.peft.spec import NO_PEFT
from ftjax.tasks import make_task

VOCAB = 100
TINY_BERT = dict(
  model_type="bert",
  vocab_size=VOCAB,
  hidden_size=32,
  num_hidden_layers=2,
  num_attention_heads=4,
  intermediate_size=64,
  max_position_embeddings=64,
)


def fast_compiles():
  """XLA with most optimisations off: compiles ~4x faster on CPU, same results (a test-only setting)."""
  old = jax.config.values["jax_disable_most_optimizations"]
  jax.config.update("jax_disable_most_optimizations", True)
  return old


def optimizer_config(**overrides):
  return ml_collections.ConfigDict(
    dict(
      learning_rate=1e-3,
      warmup_steps=0,
      warmup_ratio=0.0,
      schedule="constant",
      max_grad_norm=1.0,
      adam_b1=0.9,
      adam_b2=0.999,
      adam_eps=1e-8,
      weight_decay=0.01,
      decay_embeddings=False,
      head_lr_multiplier=1.0,
      lora_plus_ratio=1.0,
      layer_decay=1.0,
      **overrides,
    )
  )


def adversarial_config(method="none", **overrides):
  return ml_collections.ConfigDict(
    dict(method=method, epsilon=1.0, steps=2, step_size=0.5, weight=1.0, init_magnitude=0.1, **overrides)
  )


@functools.lru_cache
def _initial_tree(kind, num_labels, peft, seed):
  model, task = build_model(TINY_BERT, peft=peft), make_task(kind, num_labels)

  @jax.jit  # one small compile instead of hundreds of eager ops
  def init(key):
    ids = jnp.ones((2, 8), jnp.int32)
    variables = model.init(key, ids)
    tree = {"backbone": variables["params"], **{k: v for k, v in variables.items() if k != "params"}}
    tree["head"] = task.head.init(jax.random.fold_in(key, 1), model.apply(variables, ids), jnp.ones((2, 8)))["params"]
    return tree

  return model, task, host(init(jax.random.key(seed)))


def tiny_run(kind="classification", num_labels=2, peft=NO_PEFT, method="full", seed=0, total_steps=10):
  """(model, task, tx, state) on the host; `method` names the trainability preset."""
  model, task, tree = _initial_tree(kind, num_labels, peft, seed)
  trainable, frozen = trainability.partition(tree, trainability.rules_for(method))
  tx, _ = optim.make_optimizer(optimizer_config(), trainable, total_steps, TINY_BERT["num_hidden_layers"])
  return model, task, tx, step.create_state(trainable, frozen, tx, seed)


def random_batch(seed, batch_size=16, length=12, kind="classification", num_labels=2):
  """The loop's batch contract, with some right padding and an `example_index` the device never needs."""
  rng = np.random.default_rng(seed)
  lengths = rng.integers(length // 2, length + 1, batch_size)
  mask = (np.arange(length)[None] < lengths[:, None]).astype(np.int32)
  labels = (
    rng.integers(0, num_labels, batch_size).astype(np.int32)
    if kind == "classification"
    else rng.uniform(0, 5, batch_size).astype(np.float32)
  )
  return {
    "input_ids": (rng.integers(1, VOCAB, (batch_size, length)) * mask).astype(np.int32),
    "attention_mask": mask,
    "token_type_ids": np.zeros((batch_size, length), np.int32),
    "labels": labels,
    "weights": np.ones((batch_size,), np.float32),
    "example_index": np.arange(batch_size, dtype=np.int32) + 1000 * seed,
  }


def host(tree):
  """A numpy copy (the step donates the state: keep copies of what a test compares)."""
  return jax.tree.map(np.array, jax.device_get(tree))

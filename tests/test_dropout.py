"""ftjax's Dropout draws Flax's masks bit for bit, and a training step on CPU hashes each mask once."""

import re
import sys
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import ConfigDict

from ftjax import xla_cpu
from ftjax.models.dropout import Dropout

ROOT = Path(__file__).resolve().parents[1]


class _Two(nn.Module):
  """Two automatically named dropouts (Dropout_0, Dropout_1), as the backbones use them."""

  dropout: type
  rate: float
  broadcast_dims: tuple = ()

  @nn.compact
  def __call__(self, x):
    h = self.dropout(self.rate, broadcast_dims=self.broadcast_dims)(x, deterministic=False)
    return self.dropout(self.rate)(jnp.tanh(h), deterministic=False)


@pytest.mark.parametrize(
  "shape, rate, broadcast_dims",
  [((4, 6, 16), 0.1, ()), ((3, 7, 13), 0.5, ()), ((2, 5, 24), 0.3, (1,)), ((9,), 0.1, ())],
  ids=["multiple-of-8", "padded-last-axis", "broadcast", "vector"],
)
def test_outputs_and_gradients_equal_flax_dropout(shape, rate, broadcast_dims):
  x = jax.random.normal(jax.random.key(1), shape)
  rngs = {"dropout": jax.random.key(7)}

  def forward_and_gradient(dropout):
    out, pullback = jax.vjp(lambda x: _Two(dropout, rate, broadcast_dims).apply({}, x, rngs=rngs), x)
    return out, pullback(jnp.cos(out))[0]  # elementwise throughout: no reduction order to differ

  with xla_cpu.threefry_lowering("unrolled"):
    ours = jax.jit(lambda: forward_and_gradient(Dropout))()
    flax_own = jax.jit(lambda: forward_and_gradient(nn.Dropout))()
  np.testing.assert_array_equal(ours[0], flax_own[0])
  np.testing.assert_array_equal(ours[1], flax_own[1])
  assert 0 < np.mean(np.asarray(ours[1]) == 0) < 1  # some elements dropped, some kept


def test_deterministic_and_edge_rates_pass_through_as_flax_does():
  x = jnp.arange(12.0).reshape(3, 4)
  rngs = {"dropout": jax.random.key(0)}
  assert Dropout(0.5).apply({}, x, deterministic=True) is x
  assert Dropout(0.0).apply({}, x, deterministic=False, rngs=rngs) is x
  np.testing.assert_array_equal(Dropout(1.0).apply({}, x, deterministic=False, rngs=rngs), jnp.zeros_like(x))


def test_a_training_step_hashes_each_dropout_mask_once(tiny_bert):
  """The tiny BERT's full fine-tuning step with dropout, compiled with XLA's optimisations on: one
  threefry hash per dropout site (embeddings, then attention probabilities, attention output and FFN
  output in each of 2 layers, then the head). Without the packing, XLA recomputed the masks in the
  backward pass, once per fusion that reads them (the MiniLM step: 64 hashes for 20 masks)."""
  from ftjax import optim, step, trainability
  from ftjax.experiment import init_tree
  from ftjax.models import from_pretrained
  from ftjax.tasks import make_task

  sys.path.insert(0, str(ROOT / "scripts"))
  import bench_steps
  import profile_step

  model, backbone = from_pretrained(tiny_bert)
  task = make_task("classification", 2)
  tree = init_tree(model, task, backbone, seed=0)
  trainable, frozen = trainability.partition(tree, trainability.rules_for("full"))
  tx, _ = optim.make_optimizer(bench_steps.optimizer_config(), trainable, 100, 2)
  batch = jax.device_put(bench_steps.synthetic_batch(30522, 4, 16))
  with xla_cpu.threefry_lowering("unrolled"):
    compiled = (
      jax.jit(step.make_train_step(model, task, tx, adversarial_config=ConfigDict({"method": "none"}), dropout=True))
      .lower(step.create_state(trainable, frozen, tx, seed=0), batch)
      .compile()
    )
  ops = profile_step.hlo_ops(compiled.as_text()).values()
  # a mask's hash, not a key's (the rng keys each dropout folds in are u32[2] and smaller)
  hashes = [op for op in ops if op.kind == "dropout RNG" and _elements(op.description) > 2]
  assert len(hashes) == 1 + 3 * 2 + 1, [op.description[:80] for op in hashes]


def _elements(description: str) -> int:
  """The element count of an op's output, from profile_step's `u8[4,16,2]{2,1,0} fusion [...]`."""
  dims = re.match(r"\w+\[([\d,]*)\]", description).group(1)
  return int(np.prod([int(d) for d in dims.split(",") if d]))

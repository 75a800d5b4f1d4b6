"""The optimiser: schedule values, the weight-decay mask, LoRA+, layer-wise decay and clipping.

Small hand-made trees with the paths a real run has, so every number can be checked by hand.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from ftjax import optim, trainability

LR = 1e-2
pytestmark = pytest.mark.usefixtures("fast_compiles")  # conftest.py: XLA compiles ~4x faster, same results


def config(**overrides):
  base = dict(
    learning_rate=LR,
    warmup_steps=10,
    warmup_ratio=0.0,
    schedule="linear",
    max_grad_norm=0.0,
    adam_b1=0.9,
    adam_b2=0.999,
    adam_eps=1e-8,
    weight_decay=0.0,
    decay_embeddings=False,
    head_lr_multiplier=1.0,
    lora_plus_ratio=1.0,
    layer_decay=1.0,
  )
  return ml_collections.ConfigDict({**base, **overrides})


def run_tree(num_layers=2):
  """The trainable tree of a BERT run with LoRA, a head, a soft prompt, biases, norms and embeddings."""
  flat = {
    "backbone/embeddings/word_embeddings/embedding": np.ones((10, 4)),
    "backbone/embeddings/position_embeddings/embedding": np.ones((8, 4)),
    "backbone/embeddings/LayerNorm/scale": np.ones(4),
    "backbone/embeddings/LayerNorm/bias": np.ones(4),
    "backbone/pooler/kernel": np.ones((4, 4)),
    "backbone/pooler/bias": np.ones(4),
    "head/classifier/kernel": np.ones((4, 2)),
    "head/classifier/bias": np.ones(2),
    "prompt/embeddings/embeddings": np.ones((3, 4)),
  }
  for i in range(num_layers):
    layer = f"encoder/layer_{i}"
    flat.update(
      {
        f"backbone/{layer}/attention/self/query/kernel": np.ones((4, 4)),
        f"backbone/{layer}/attention/self/query/bias": np.ones(4),
        f"backbone/{layer}/output/LayerNorm/scale": np.ones(4),
        f"backbone/{layer}/output/LayerNorm/bias": np.ones(4),
        f"lora/{layer}/attention/self/query/a": np.ones((4, 2)),
        f"lora/{layer}/attention/self/query/b": np.ones((2, 4)),
        f"lora/{layer}/attention/self/query/magnitude": np.ones(4),
        f"adapter/{layer}/output/ffn_down_kernel": np.ones((4, 2)),
        f"adapter/{layer}/output/ffn_down_bias": np.ones(2),
      }
    )
  return trainability.unflatten({p: jnp.asarray(v, jnp.float32) for p, v in flat.items()})


def first_update(cfg, params, grads, num_layers=2, total_steps=100):
  tx, _ = optim.make_optimizer(cfg, params, total_steps, num_layers)
  updates, state = jax.jit(tx.update)(grads, tx.init(params), params)  # one compile, not one per leaf op
  return trainability.flatten(updates), state


# ---------------------------------------------------------------------------------------------------
# Schedule.


def test_linear_schedule_warms_up_then_decays_to_zero():
  lr = optim.schedule(config(schedule="linear"), total_steps=110)
  for step, want in [(0, 0.0), (5, LR / 2), (10, LR), (60, LR / 2), (110, 0.0)]:
    np.testing.assert_allclose(float(lr(step)), want, atol=1e-9, err_msg=f"step {step}")


def test_cosine_schedule():
  lr = optim.schedule(config(schedule="cosine"), total_steps=110)
  for step, want in [(0, 0.0), (10, LR), (35, LR * (1 + np.cos(np.pi / 4)) / 2), (60, LR / 2), (110, 0.0)]:
    np.testing.assert_allclose(float(lr(step)), want, atol=1e-9, err_msg=f"step {step}")


def test_constant_schedule_and_warmup_ratio():
  lr = optim.schedule(config(schedule="constant", warmup_steps=-1, warmup_ratio=0.1), total_steps=200)
  for step, want in [(0, 0.0), (10, LR / 2), (20, LR), (199, LR)]:  # warm-up = 10% of 200 = 20 steps
    np.testing.assert_allclose(float(lr(step)), want, atol=1e-9, err_msg=f"step {step}")
  assert float(optim.schedule(config(warmup_steps=0), 100)(0)) == pytest.approx(LR)
  with pytest.raises(ValueError, match="schedule"):
    optim.schedule(config(schedule="cosin"), 100)


# ---------------------------------------------------------------------------------------------------
# Weight decay.


@pytest.mark.parametrize("decay_embeddings", [False, True])
def test_weight_decay_mask(decay_embeddings):
  mask = trainability.flatten(optim.decay_mask(run_tree(), decay_embeddings))
  decayed = {p for p, m in mask.items() if m}
  matrices = {p for p in mask if p.endswith(("/kernel", "/a", "/b", "_kernel"))}
  embeddings = {p for p in mask if p.endswith("/embedding") or p.startswith("prompt/")}
  assert len(embeddings) == 3
  assert decayed == (matrices | embeddings if decay_embeddings else matrices)


def test_weight_decay_applies_through_the_chain():
  # Zero gradients: the whole first update is the decay, −lr·wd·θ where the mask says so, else 0.
  params = run_tree()
  cfg = config(warmup_steps=0, schedule="constant", weight_decay=0.1)
  updates, _ = first_update(cfg, params, jax.tree.map(jnp.zeros_like, params))
  mask = trainability.flatten(optim.decay_mask(params, False))
  for path, u in updates.items():
    np.testing.assert_allclose(u, -LR * 0.1 * mask[path] * np.ones_like(u), rtol=1e-6, err_msg=path)


# ---------------------------------------------------------------------------------------------------
# Per-parameter learning rates.


def adam_first_step_rates(cfg, params, num_layers=2):
  """|first update| / lr per path: Adam's first step is lr·g/(|g| + eps), so the ratio is the multiplier."""
  updates, _ = first_update(cfg, params, jax.tree.map(jnp.ones_like, params), num_layers)
  rates = {}
  for path, u in updates.items():
    u = np.abs(np.asarray(u)) / LR
    np.testing.assert_allclose(u, u.flat[0], rtol=1e-6)
    rates[path] = float(u.flat[0])
  return rates


def test_lora_plus_gives_b_ratio_times_the_rate_of_a():
  params = run_tree()
  rates = adam_first_step_rates(config(warmup_steps=0, schedule="constant", lora_plus_ratio=16.0), params)
  for i in range(2):
    q = f"lora/encoder/layer_{i}/attention/self/query"
    assert rates[f"{q}/a"] == pytest.approx(1.0, rel=1e-5)
    assert rates[f"{q}/b"] == pytest.approx(16.0, rel=1e-5)
    assert rates[f"{q}/magnitude"] == pytest.approx(1.0, rel=1e-5)
  multipliers = trainability.flatten(optim.lr_multipliers(params, config(lora_plus_ratio=16.0), 2))
  assert {p for p, m in multipliers.items() if m != 1.0} == {p for p in multipliers if p.endswith("/b")}


def test_layer_decay_and_head_multiplier():
  params = run_tree(num_layers=2)
  cfg = config(warmup_steps=0, schedule="constant", layer_decay=0.5, head_lr_multiplier=10.0)
  rates = adam_first_step_rates(cfg, params, num_layers=2)
  # Top of the stack trains fastest: layer i of L=2 gets 0.5^(2−i), embeddings and prompt 0.5^3.
  want = {
    "backbone/embeddings/": 0.125,
    "prompt/": 0.125,
    "encoder/layer_0/": 0.25,
    "encoder/layer_1/": 0.5,
    "backbone/pooler/": 1.0,
    "head/": 10.0,
  }
  for path, rate in rates.items():
    expected = [w for key, w in want.items() if key in path]
    assert len(expected) == 1, path
    assert rate == pytest.approx(expected[0], rel=1e-5), path


def test_layer_decay_reads_gpt2_paths():
  params = {
    "backbone": {
      "wte": {"embedding": jnp.ones((5, 2))},
      "h_0": {"ln_1": {"scale": jnp.ones(2)}},
      "h_1": {"ln_1": {"scale": jnp.ones(2)}},
      "ln_f": {"scale": jnp.ones(2)},
    },
    "lora": {"h_1": {"attn": {"c_attn": {"a": jnp.ones((2, 1))}}}},
  }
  m = trainability.flatten(optim.lr_multipliers(params, config(layer_decay=0.5), num_layers=2))
  assert m == {
    "backbone/wte/embedding": 0.125,
    "backbone/h_0/ln_1/scale": 0.25,
    "backbone/h_1/ln_1/scale": 0.5,
    "backbone/ln_f/scale": 1.0,
    "lora/h_1/attn/c_attn/a": 0.5,
  }


# ---------------------------------------------------------------------------------------------------
# Clipping.


@pytest.mark.parametrize("max_grad_norm", [0.0, 1.0])
def test_gradient_clipping_before_adam(max_grad_norm):
  params = {"w": jnp.zeros((4,))}
  grads = {"w": jnp.full((4,), 50.0)}  # global norm 100
  _, state = first_update(config(max_grad_norm=max_grad_norm), params, grads)
  adam = [
    s
    for s in jax.tree.leaves(state, is_leaf=lambda s: isinstance(s, optax.ScaleByAdamState))
    if isinstance(s, optax.ScaleByAdamState)
  ]
  assert len(adam) == 1
  seen = 50.0 / 100.0 if max_grad_norm else 50.0  # what Adam's first moment saw, per element
  np.testing.assert_allclose(adam[0].mu["w"], (1 - 0.9) * seen * np.ones(4), rtol=1e-6)

"""Which parameters train: rules, counts, and what one real training step does to each part.

- Trainable counts on the real MiniLM match the numbers computed by hand from its config.
- A user's rule comes before the method's preset; undecided parameters and malformed rules raise.
- After jitted training steps, frozen leaves are bit-identical and every trainable leaf has moved, for
  every preset; the optimiser state covers the trainable part only, and a head-only step does not
  differentiate the backbone (it costs a fraction of a full fine-tuning step).
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import ftjax
from ftjax import optim, step, trainability
from ftjax.models import build_model
from ftjax.peft import METHOD_COLLECTIONS, NO_PEFT, PeftSpec
from ftjax.tasks import make_task

TINY_BERT = dict(
  model_type="bert",
  vocab_size=97,
  hidden_size=32,
  num_hidden_layers=1,
  num_attention_heads=4,
  intermediate_size=64,
  max_position_embeddings=64,
  type_vocab_size=2,
)
QV = r"attention/self/(query|value)$"

# XLA with most optimisations off compiles these steps ~4x faster with the same results (conftest.py).
pytestmark = pytest.mark.usefixtures("fast_compiles")
# The PEFT spec each preset runs with.
METHOD_SPECS = {
  "full": NO_PEFT,
  "head": NO_PEFT,
  "bitfit": NO_PEFT,
  "lora": PeftSpec(lora_targets=QV, lora_rank=4),
  "adapter": PeftSpec(adapter="houlsby", adapter_size=8),
  "prompt": PeftSpec(prompt_length=3),
  "prefix": PeftSpec(prefix_length=3),
}


def run_tree(model, backbone, task, ids) -> dict:
  """`{"backbone", "head", <method collections>}` as a run builds it."""
  _, method = model.apply(
    {"params": backbone}, ids, mutable=list(METHOD_COLLECTIONS), rngs={"params": jax.random.key(1)}
  )
  out = model.apply({"params": backbone, **method}, ids)
  head = task.head.init(jax.random.key(2), out, jnp.ones(ids.shape))["params"]
  return {"backbone": backbone, "head": head, **method}


def optimizer_config(**overrides):
  base = dict(
    learning_rate=1e-2,
    warmup_steps=0,
    warmup_ratio=0.0,
    schedule="constant",
    max_grad_norm=1.0,
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


def make_batch(vocab: int, batch=4, length=12, seed=0) -> dict:
  rng = np.random.default_rng(seed)
  mask = np.ones((batch, length), np.int32)
  mask[0, -4:] = 0
  return {
    "input_ids": rng.integers(5, vocab, (batch, length)).astype(np.int32),
    "attention_mask": mask,
    "token_type_ids": np.zeros((batch, length), np.int32),
    "labels": rng.integers(0, 2, (batch,)).astype(np.int32),
    "weights": np.ones((batch,), np.float32),
  }


def setup_run(model, backbone, preset, num_layers, batch, dropout=False):
  """(jitted train step, initial state) for `preset` on `model` (dropout off: its RNG slows compiling)."""
  task = make_task("classification", 2)
  tree = run_tree(model, backbone, task, jnp.asarray(batch["input_ids"]))
  trainable, frozen = trainability.partition(tree, trainability.rules_for(preset))
  tx, _ = optim.make_optimizer(optimizer_config(), trainable, total_steps=10, num_layers=num_layers)
  state = step.create_state(trainable, frozen, tx, seed=0)
  train_step = step.make_train_step(
    model, task, tx, adversarial_config=ml_collections.ConfigDict({"method": "none"}), dropout=dropout
  )
  return jax.jit(train_step), state


def assert_step_moves_exactly_the_trainable_part(train_step, state, batch, steps=2):
  # Two steps: at init LoRA's A (B = 0) and an adapter's down projection (W_up = 0) get zero gradient.
  new = state
  for _ in range(steps):
    new, metrics = train_step(new, batch)
  assert int(metrics["nonfinite"]) == 0 and int(new.step) == steps
  frozen_before, frozen_after = trainability.flatten(state.frozen), trainability.flatten(new.frozen)
  assert frozen_after.keys() == frozen_before.keys()
  for path, before in frozen_before.items():
    np.testing.assert_array_equal(np.asarray(frozen_after[path]), np.asarray(before), err_msg=path)
  before, after = trainability.flatten(state.trainable), trainability.flatten(new.trainable)
  assert after.keys() == before.keys() and before
  unchanged = [p for p in before if np.array_equal(np.asarray(after[p]), np.asarray(before[p]))]
  assert not unchanged, f"trainable leaves that did not move: {unchanged}"
  return new


def assert_opt_state_covers_trainable_only(state):
  # Adam keeps two moments per trainable number; everything else in the state is a scalar count.
  arrays = [x for x in jax.tree.leaves(state.opt_state) if np.ndim(x) > 0]
  assert sum(np.size(x) for x in arrays) == 2 * trainability.count(state.trainable)
  trainable_shapes = {np.shape(x) for x in jax.tree.leaves(state.trainable)}
  assert {np.shape(x) for x in arrays} <= trainable_shapes


@pytest.fixture(scope="module")
def tiny():
  model = build_model(TINY_BERT)
  return model, model.init(jax.random.key(0), jnp.ones((1, 8), jnp.int32))["params"]


@pytest.fixture(scope="module")
def minilm():
  return ftjax.from_pretrained("minilm")


# ---------------------------------------------------------------------------------------------------
# Counts by hand on the real MiniLM (6 layers, hidden 384, FFN 1536, with pooler).

HEAD_2_LABELS = 384 * 2 + 2


def minilm_counts(minilm, spec, rules):
  model, backbone = minilm
  tree = run_tree(model.clone(peft=spec), backbone, make_task("classification", 2), jnp.ones((1, 8), jnp.int32))
  trainable, frozen = trainability.partition(tree, rules)
  assert trainability.count(trainable) + trainability.count(frozen) == trainability.count(tree)
  return trainable, frozen


def test_minilm_lora_count(minilm):
  trainable, _ = minilm_counts(minilm, PeftSpec(lora_targets=QV, lora_rank=8), trainability.rules_for("lora"))
  # 6 layers × {query, value} × (A: 384×8 + B: 8×384)
  assert trainability.count(trainable["lora"]) == 6 * 2 * (384 * 8 + 8 * 384) == 73_728
  assert trainability.count(trainable["head"]) == HEAD_2_LABELS
  assert set(trainable) == {"lora", "head"}
  assert "73,728" in trainability.summary({"lora": trainable["lora"]}, {})


def bitfit_by_hand(h=384, ffn=1536, layers=6):
  per_layer = 4 * h + ffn + h + 2 * h  # q, k, v, attention output; intermediate; output; two LayerNorms
  return h + layers * per_layer + h  # embedding LayerNorm + layers + pooler


def test_minilm_bitfit_count(minilm):
  model, _ = minilm
  c = model.config
  trainable, _ = minilm_counts(minilm, NO_PEFT, trainability.rules_for("bitfit"))
  assert (
    trainability.count(trainable)
    == bitfit_by_hand(c.hidden_size, c.intermediate_size, c.num_hidden_layers) + HEAD_2_LABELS
  )
  assert bitfit_by_hand() == 26_112  # 384 + 6 × 4,224 + 384
  assert all(p.endswith("/bias") for p in trainability.flatten(trainable["backbone"]))


def test_minilm_houlsby_adapter_count(minilm):
  trainable, _ = minilm_counts(minilm, PeftSpec(adapter="houlsby", adapter_size=64), trainability.rules_for("adapter"))
  one_adapter = 384 * 64 + 64 + 64 * 384 + 384
  assert trainability.count(trainable["adapter"]) == 6 * 2 * one_adapter == 595_200
  # Houlsby et al. also train the layer norms: the embedding one and two per layer, scale and bias.
  assert trainability.count(trainable["backbone"]) == (1 + 6 * 2) * 2 * 384
  assert trainability.count(trainable["head"]) == HEAD_2_LABELS


def test_pfeiffer_has_half_of_houlsby_adapters(minilm):
  houlsby, _ = minilm_counts(minilm, PeftSpec(adapter="houlsby"), trainability.rules_for("adapter"))
  pfeiffer, _ = minilm_counts(minilm, PeftSpec(adapter="pfeiffer"), trainability.rules_for("adapter"))
  assert 2 * trainability.count(pfeiffer["adapter"]) == trainability.count(houlsby["adapter"])


# ---------------------------------------------------------------------------------------------------
# Rules.


def test_override_lora_plus_top_two_layer_norms(minilm):
  rules = trainability.rules_for("lora", ["train:backbone/encoder/layer_[45]/.*LayerNorm"])
  trainable, _ = minilm_counts(minilm, PeftSpec(lora_targets=QV, lora_rank=8), rules)
  assert trainability.count(trainable) == 73_728 + HEAD_2_LABELS + 2 * 2 * 2 * 384  # 2 layers × 2 norms × (scale, bias)
  assert all("layer_4" in p or "layer_5" in p for p in trainability.flatten(trainable["backbone"]))


def test_override_bitfit_without_embedding_biases(minilm):
  rules = trainability.rules_for("bitfit", ["freeze:backbone/embeddings/"])
  trainable, frozen = minilm_counts(minilm, NO_PEFT, rules)
  assert trainability.count(trainable) == bitfit_by_hand() - 384 + HEAD_2_LABELS
  assert "embeddings" not in trainable["backbone"]
  assert "bias" in frozen["backbone"]["embeddings"]["LayerNorm"]


def test_undecided_parameter_raises_naming_it():
  tree = {"backbone": {"pooler": {"kernel": np.zeros((2, 2)), "bias": np.zeros(2)}}, "head": {"w": np.zeros(2)}}
  with pytest.raises(trainability.RuleError, match="backbone/pooler/kernel"):
    trainability.partition(tree, ["train:^head/", "train:bias$"])
  with pytest.raises(trainability.RuleError, match="unknown method"):
    trainability.rules_for("loraa")


@pytest.mark.parametrize("rule", ["trian:^head/", "^head/", "train", "freeze:(unclosed", ":^head/"])
def test_malformed_rule_raises(rule):
  with pytest.raises(trainability.RuleError, match="rule"):
    trainability.partition({"head": {"w": np.zeros(2)}}, [rule, "train:.*"])


def test_first_matching_rule_decides():
  tree = {"backbone": {"a": {"bias": np.zeros(2)}, "b": {"bias": np.zeros(3)}}}
  trainable, frozen = trainability.partition(tree, ["freeze:^backbone/a/", "train:bias$"])
  assert trainability.flatten(trainable).keys() == {"backbone/b/bias"}
  assert trainability.flatten(frozen).keys() == {"backbone/a/bias"}
  joined = trainability.combine(trainable, frozen)
  assert trainability.flatten(joined).keys() == trainability.flatten(tree).keys()


# ---------------------------------------------------------------------------------------------------
# One real step.


@pytest.mark.parametrize("preset", sorted(METHOD_SPECS))
def test_step_moves_trainable_and_keeps_frozen_bit_identical(tiny, preset):
  model, backbone = tiny
  batch = make_batch(TINY_BERT["vocab_size"])
  train_step, state = setup_run(model.clone(peft=METHOD_SPECS[preset]), backbone, preset, 1, batch)
  if preset != "full":
    assert trainability.count(state.frozen) > 0
  assert_opt_state_covers_trainable_only(state)
  assert_step_moves_exactly_the_trainable_part(train_step, state, batch)


def test_minilm_lora_step(minilm):
  model, backbone = minilm
  batch = make_batch(model.config.vocab_size, batch=2, length=16)
  train_step, state = setup_run(model.clone(peft=PeftSpec(lora_targets=QV, lora_rank=8)), backbone, "lora", 6, batch)
  assert trainability.count(state.trainable) == 73_728 + HEAD_2_LABELS
  assert_opt_state_covers_trainable_only(state)
  assert_step_moves_exactly_the_trainable_part(train_step, state, batch)


def _flops(train_step, state, batch) -> float:
  # The lowered (unoptimised) program: frozen gradients must not be asked for at all, not merely be
  # removed by XLA's dead-code elimination.
  cost = train_step.lower(state, batch).cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost["flops"])


def test_head_only_step_does_not_differentiate_the_backbone(tiny):
  model, backbone = tiny
  batch = make_batch(TINY_BERT["vocab_size"], batch=8, length=32)
  runs = {p: setup_run(model, backbone, p, 1, batch) for p in ("head", "full")}
  flops = {p: _flops(train_step, state, batch) for p, (train_step, state) in runs.items()}
  # Full fine-tuning ≈ forward + backward (≈ 3 forwards); head-only ≈ one forward.
  assert flops["head"] < 0.5 * flops["full"], flops
  # The same in the traced program: head-only has the forward's matmuls and the head's, no more.
  dots = {
    p: str(jax.make_jaxpr(train_step)(state, batch)).count("dot_general") for p, (train_step, state) in runs.items()
  }
  assert dots["head"] < 0.5 * dots["full"], dots

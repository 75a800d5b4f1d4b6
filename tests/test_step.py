"""The training step on one device: adversarial perturbations, frozen backbones, accumulation, NaN
guard, tracing.

FGM's direction is checked on the real MiniLM with real sentences (the property is about a real loss
surface); the mechanics use a tiny random BERT (tests/tiny_run.py).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ftjax
from ftjax import adversarial, parallel, step, xla_cpu
from ftjax.errors import InputError
from ftjax.peft import PeftSpec
from ftjax.tasks import make_task

import tiny_run as tiny
from tiny_run import adversarial_config, host, random_batch, tiny_run


@pytest.fixture(scope="module", autouse=True)
def fast_compiles():
  old = tiny.fast_compiles()
  yield
  jax.config.update("jax_disable_most_optimizations", old)


SENTENCES = [
  ("a gripping, beautifully acted film that stays with you", 1),
  ("the plot is a mess and the jokes fall flat", 0),
  ("one of the warmest and funniest movies of the year", 1),
  ("tedious, overlong and utterly forgettable", 0),
  ("an absolute delight from start to finish", 1),
  ("i walked out halfway through", 0),
  ("smart writing and a terrific lead performance", 1),
  ("a lazy sequel with nothing new to say", 0),
]


@pytest.fixture(scope="module")
def minilm_run():
  """MiniLM backbone + a classification head trained briefly on the sentences (backbone frozen)."""
  model, backbone = ftjax.from_pretrained("minilm")
  tokens = ftjax.load_tokenizer("minilm")(
    [s for s, _ in SENTENCES], padding="max_length", max_length=16, truncation=True, return_tensors="np"
  )
  batch = {
    "input_ids": tokens["input_ids"].astype(np.int32),
    "attention_mask": tokens["attention_mask"].astype(np.int32),
    "token_type_ids": tokens["token_type_ids"].astype(np.int32),
    "labels": np.array([y for _, y in SENTENCES], np.int32),
    "weights": np.ones(len(SENTENCES), np.float32),
  }
  assert batch["attention_mask"].sum(1).min() < 16  # some padding, so the mask matters
  task = make_task("classification", 2)
  out = model.apply({"params": backbone}, batch["input_ids"], attention_mask=batch["attention_mask"])
  head = task.head.init(jax.random.key(0), out, batch["attention_mask"])["params"]
  # A few gradient steps on the head alone (features computed once): a loss surface with some signal.
  loss = lambda h: task.loss(task.head.apply({"params": h}, out, batch["attention_mask"]), batch)[0] / len(SENTENCES)
  for _ in range(20):
    head = jax.tree.map(lambda p, g: p - 0.5 * g, head, jax.grad(loss)(head))
  return model, task, {"backbone": backbone, "head": head}, batch


def test_fgm_perturbation_has_norm_epsilon_and_beats_random_directions(minilm_run):
  model, task, tree, batch = minilm_run
  epsilon = 1.0
  mask = jnp.asarray(batch["attention_mask"], jnp.float32)
  shape = batch["input_ids"].shape + (model.config.hidden_size,)

  @jax.jit
  def per_example_loss(r):
    logits = step.apply_model(model, task, tree, batch, deterministic=True, perturbation=r)
    return jax.vmap(lambda l, y: -jax.nn.log_softmax(l)[y])(logits, batch["labels"])

  g = jax.grad(lambda r: per_example_loss(r).sum())(jnp.zeros(shape))
  r = adversarial.fgm_perturbation(g, mask, epsilon)
  np.testing.assert_allclose(jnp.sqrt(jnp.sum(r**2, axis=(1, 2))), epsilon, rtol=1e-5)
  assert jnp.all(r[mask == 0] == 0)  # padding positions are never perturbed

  clean = per_example_loss(jnp.zeros(shape))
  fgm = per_example_loss(r)
  rng = np.random.default_rng(0)
  random = []
  for _ in range(8):
    d = rng.standard_normal(shape).astype(np.float32) * np.asarray(mask)[:, :, None]
    d *= epsilon / np.sqrt(np.sum(d**2, axis=(1, 2), keepdims=True))
    random.append(per_example_loss(jnp.asarray(d)))
  random = jnp.mean(jnp.stack(random), axis=0)
  # Every example: FGM raises its loss, and by more than a random direction of the same norm does.
  assert jnp.all(fgm > clean), (clean, fgm)
  assert jnp.all(fgm - clean > 2 * jnp.abs(random - clean)), (clean, fgm, random)


def gradient_capture() -> optax.GradientTransformation:
  """A "transformation" that leaves the parameters alone and keeps the gradient it was given as its
  state, so a train step's opt_state hands back exactly the gradient the step computed."""
  return optax.GradientTransformation(
    lambda params: jax.tree.map(jnp.zeros_like, params),
    lambda grads, _, params=None: (jax.tree.map(jnp.zeros_like, grads), grads),
  )


def cola_rows(per_label: int) -> list[tuple[str, int]]:
  """The first `per_label` acceptable and unacceptable sentences of CoLA's train.tsv (no header)."""
  from conftest import SHARED_DATA, needs_data

  needs_data("cola")
  rows = {0: [], 1: []}
  for line in (SHARED_DATA / "cola" / "train.tsv").read_text(encoding="utf-8").splitlines():
    _, label, _, sentence = line.split("\t")
    if len(rows[int(label)]) < per_label:
      rows[int(label)].append((sentence, int(label)))
  return rows[0] + rows[1]


def test_fgm_step_matches_a_pytorch_fgm_on_minilm_and_cola():
  """FGM as the common PyTorch recipe writes it (a forward hook adds r to the word-embedding output;
  g from the clean backward pass; r = ε·g/‖g‖ per example over its real tokens; the adversarial loss's
  gradient added to the clean one), on transformers' BertForSequenceClassification with the real
  MiniLM, ftjax's head weights and 16 real CoLA sentences, dropout off. ftjax's jitted train step must
  give the same objective and the same gradient for every parameter. At ε = 1 the perturbation moves
  the loss far more than float32 rounding does, so a wrong r (one norm over the batch instead of one per
  example, g of the wrong loss) cannot pass, nor can a missing or doubled adversarial term. (Padding's
  g is exactly 0 in an encoder, whose attention masks padded keys: masking it is a no-op here; it
  matters for FreeLB's random start.)"""
  from configs import glue
  from ftjax import experiment, trainability
  from ftjax.models import bert
  from conftest import load_script

  torch_reference = load_script("torch_reference")

  epsilon = 1.0
  config = glue.get_config("cola")
  config.model, config.method, config.dropout = "minilm", "full", False
  config.adversarial.method, config.adversarial.epsilon = "fgm", epsilon
  exp = experiment.build(config)
  rows = cola_rows(8)
  tokens = exp.tokenizer([s for s, _ in rows], padding="longest", return_tensors="np")
  batch = {k: tokens[k].astype(np.int32) for k in ("input_ids", "attention_mask", "token_type_ids")}
  batch |= {"labels": np.array([y for _, y in rows], np.int32), "weights": np.ones(len(rows), np.float32)}
  assert batch["attention_mask"].sum(1).min() < batch["attention_mask"].shape[1]  # padding to mask

  capture = gradient_capture()
  trainable, frozen = trainability.partition(exp.tree, exp.rules)
  assert not trainability.flatten(frozen)
  state = step.create_state(trainable, frozen, capture, config.seed)
  train_step = jax.jit(
    step.make_train_step(exp.model, exp.task, capture, adversarial_config=config.adversarial, dropout=False)
  )
  after, metrics = train_step(state, batch)
  ours = trainability.flatten(host(after.opt_state))

  # PyTorch: the usual FGM, written out
  model = torch_reference.build_torch_model(config, exp, num_labels=2).eval()
  inputs, labels, weights = torch_reference.to_torch(batch, "classification")
  mask = inputs["attention_mask"].float()[:, :, None]
  perturbation, embedded = [None], []

  def add_perturbation(module, args, output):
    if perturbation[0] is not None:
      output = output + perturbation[0]
    output.retain_grad()
    embedded.append(output)
    return output

  hook = model.bert.embeddings.word_embeddings.register_forward_hook(add_perturbation)
  count = float(weights.sum())
  clean, _ = torch_reference.loss_sums(model(**inputs).logits, labels, weights, "classification")
  (clean / count).backward()
  g = embedded[-1].grad * mask
  perturbation[0] = (epsilon * g / g.norm(dim=(1, 2), keepdim=True).clamp_min(1e-12)).detach()
  adversarial_loss, _ = torch_reference.loss_sums(model(**inputs).logits, labels, weights, "classification")
  (adversarial_loss / count).backward()  # accumulates onto the clean gradient
  hook.remove()

  clean, adversarial_loss = clean.item(), adversarial_loss.item()
  assert (adversarial_loss - clean) / count > 0.05  # r moves the loss (else the test proves little)
  np.testing.assert_allclose(float(metrics["loss_sum"]), clean, rtol=1e-5)
  np.testing.assert_allclose(float(metrics["objective_sum"]), clean + adversarial_loss, rtol=1e-5)
  theirs = dict(model.named_parameters())
  names = [
    (f"backbone/{path}", f"bert.{name}", transpose)
    for path, name, transpose in bert._hf_names(exp.model.config, with_pooler=True)
  ]
  names += [("head/classifier/kernel", "classifier.weight", True), ("head/classifier/bias", "classifier.bias", False)]
  assert sorted(p for p, _, _ in names) == sorted(ours)
  for path, name, transpose in names:
    grad = theirs[name].grad.numpy()
    grad = grad.T if transpose else grad
    scale = np.max(np.abs(grad))
    np.testing.assert_allclose(ours[path], grad, atol=2e-3 * scale + 1e-7, err_msg=path)


@pytest.mark.parametrize("method", ["fgm", "pgd", "freelb"])
def test_adversarial_lora_keeps_backbone_bit_identical(method):
  model, task, tx, state = tiny_run(peft=PeftSpec(lora_targets=r"attention/self/(query|value)$"), method="lora")
  # B = 0 at initialisation makes only B move on step one; a random B makes A's gradient non-zero too.
  state = state.replace(
    trainable={
      **state.trainable,
      "lora": jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.key(3), x.shape), state.trainable["lora"]),
    }
  )
  before = host(state)
  train_step = jax.jit(
    step.make_train_step(model, task, tx, adversarial_config=adversarial_config(method)), donate_argnums=0
  )
  for i in range(2):
    state, metrics = train_step(state, random_batch(i))
  after = host(state)
  assert "backbone" not in state.trainable and "lora" not in state.frozen
  jax.tree.map(np.testing.assert_array_equal, after.frozen, before.frozen)
  for (path, new), old in zip(
    jax.tree_util.tree_flatten_with_path(after.trainable["lora"])[0], jax.tree.leaves(before.trainable["lora"])
  ):
    assert not np.array_equal(new, old), f"{method}: LoRA leaf {jax.tree_util.keystr(path)} did not change"
  assert np.isfinite(float(metrics["loss_sum"])) and np.isfinite(float(metrics["objective_sum"]))
  assert int(metrics["nonfinite"]) == 0 and int(after.step) == 2
  if method in ("fgm", "pgd"):  # clean + weight × adversarial, and the adversarial term is the larger
    assert float(metrics["objective_sum"]) > 2 * float(metrics["loss_sum"])


def test_fgm_at_epsilon_zero_is_twice_the_clean_gradient_with_dropout_on():
  """r = 0 must leave the adversarial pass identical to the clean one, dropout mask included (both passes
  share the step's key): the objective and every gradient are exactly twice the clean run's. A pass that
  drew other dropout masks, or a model whose r = 0 path differed from r = None, would break it."""
  capture = gradient_capture()
  model, task, _, state = tiny_run()
  state = step.create_state(state.trainable, state.frozen, capture, 0)
  grads, objectives = {}, {}
  for method in ("none", "fgm"):
    adversary = adversarial_config(method)
    adversary.epsilon = 0.0
    train_step = jax.jit(step.make_train_step(model, task, capture, dropout=True, adversarial_config=adversary))
    after, metrics = train_step(state, random_batch(0))
    grads[method], objectives[method] = host(after.opt_state), float(metrics["objective_sum"])
  assert objectives["fgm"] == 2 * objectives["none"]
  jax.tree.map(lambda fgm, clean: np.testing.assert_array_equal(fgm, 2 * clean), grads["fgm"], grads["none"])
  assert any(np.any(g != 0) for g in jax.tree.leaves(grads["none"]))


def test_gradient_accumulation_equals_one_large_batch():
  batch = random_batch(0, batch_size=32)
  params = []
  for accum in (1, 4):
    model, task, tx, state = tiny_run()
    train_step = jax.jit(
      step.make_train_step(
        model, task, tx, adversarial_config=adversarial_config(), grad_accum_steps=accum, dropout=False
      )
    )
    state, metrics = train_step(state, {k: v for k, v in batch.items() if k != "example_index"})
    params.append((host(state.trainable), float(metrics["loss_sum"]), float(metrics["count"])))
  (one, loss_one, count_one), (four, loss_four, count_four) = params
  assert count_one == count_four == 32
  np.testing.assert_allclose(loss_four, loss_one, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=0), four, one)
  _, _, _, initial = tiny_run()
  assert not np.allclose(one["head"]["classifier"]["kernel"], initial.trainable["head"]["classifier"]["kernel"])


def test_nan_label_leaves_state_unchanged_and_flags_nonfinite():
  model, task, tx, state = tiny_run(kind="regression", num_labels=1)
  train_step = jax.jit(step.make_train_step(model, task, tx, adversarial_config=adversarial_config()))
  batch = random_batch(0, kind="regression")
  del batch["example_index"]
  state, metrics = train_step(state, batch)  # one good step first: Adam's moments are non-zero
  assert int(metrics["nonfinite"]) == 0
  before = host(state)
  batch["labels"][3] = np.nan
  state, metrics = train_step(state, batch)
  assert int(metrics["nonfinite"]) == 1
  jax.tree.map(np.testing.assert_array_equal, host(state), before)  # step counter, params, moments, rng


def test_step_is_traced_once_per_input_shape():
  model, task, tx, state = tiny_run()
  traces = []

  def make_step(axis_name):
    inner = step.make_train_step(model, task, tx, adversarial_config=adversarial_config(), axis_name=axis_name)

    def train_step(state, batch):
      traces.append(batch["input_ids"].shape)  # runs at trace time only
      return inner(state, batch)

    return train_step

  par = parallel.make_parallel("none")
  train_step = par.compile_train_step(make_step)
  state = par.put_state(state)
  for seed, length in enumerate([12, 12, 16, 12, 16]):
    state, metrics = train_step(state, par.put_batch(random_batch(seed, length=length)))
  assert traces == [(16, 12), (16, 16)]
  assert int(par.get_state(state).step) == 5 and np.isfinite(float(metrics["loss_sum"]))


def test_threefry_lowering_changes_no_number_and_a_bad_name_is_refused():
  """ftjax/xla_cpu.py lowers dropout's threefry hash unrolled on CPU (config key cpu_threefry; "rolled" is
  JAX's own rule): the same masks, so FGM training with dropout is bit-identical either way. The choice is
  scoped: JAX's table is as it was after the block."""
  before = xla_cpu.threefry_lowering_in_place()
  runs = {}
  for kind in ("rolled", "unrolled"):
    with xla_cpu.threefry_lowering(kind):
      assert xla_cpu.threefry_lowering_in_place() == kind
      model, task, tx, state = tiny_run(total_steps=3)
      train_step = jax.jit(
        step.make_train_step(model, task, tx, adversarial_config=adversarial_config("fgm"), dropout=True)
      )
      batches = [
        jax.device_put({k: v for k, v in random_batch(seed).items() if k != "example_index"}) for seed in range(3)
      ]
      while_loops = train_step.lower(state, batches[0]).as_text().count("stablehlo.while")
      losses = []
      for batch in batches:
        state, metrics = train_step(state, batch)
        losses.append(np.asarray(metrics["loss_sum"]))
      runs[kind] = while_loops, losses, jax.tree.leaves(host(state.trainable))
    assert xla_cpu.threefry_lowering_in_place() == before
  assert runs["rolled"][0] > 0 and runs["unrolled"][0] == 0, runs  # the lowering did change
  for rolled, unrolled in zip(runs["rolled"][1] + runs["rolled"][2], runs["unrolled"][1] + runs["unrolled"][2]):
    np.testing.assert_array_equal(rolled, unrolled)
  # the config's "auto" is unrolled (ftjax/models/dropout.py keeps every step compilable that way)
  assert xla_cpu.lowering_for("auto") == xla_cpu.lowering_for("unrolled") == "unrolled"
  assert xla_cpu.lowering_for("rolled") == "rolled"
  with pytest.raises(InputError, match="config key cpu_threefry must be one of"):
    xla_cpu.lowering_for("fast")
  with pytest.raises(InputError, match="threefry lowering must be one of"):
    xla_cpu.set_threefry_lowering("auto")


def test_restoring_lowering_puts_the_rule_back_even_when_the_body_fails():
  before = xla_cpu.threefry_lowering_in_place()
  other = "unrolled" if before == "rolled" else "rolled"
  with pytest.raises(RuntimeError, match="boom"):
    with xla_cpu.restoring_lowering():
      xla_cpu.set_threefry_lowering(other)
      assert xla_cpu.threefry_lowering_in_place() == other
      raise RuntimeError("boom")
  assert xla_cpu.threefry_lowering_in_place() == before

"""The training and evaluation steps: pure functions over pytrees, jitted once by the loop.

`train_step(state, batch) -> (state, metrics)`:
  - the dropout key is `fold_in(state.rng, state.step)` (and the micro-batch index), so a resumed run
    draws exactly the same masks as an uninterrupted one;
  - the batch is split into `grad_accum_steps` micro-batches scanned in sequence; each contributes its
    summed loss and gradient, and the total is divided once by the total count — identical to one
    large batch;
  - gradients are taken with respect to `state.trainable` only; `state.frozen` enters as a constant;
  - adversarial training (see adversarial.py) replaces the plain loss-and-gradient of a micro-batch;
  - a non-finite loss or gradient leaves the state untouched and raises the `nonfinite` metric, which
    the loop turns into an error naming the step;
  - metrics are sums with a count (`loss_sum`, `count`), so averaging over steps and devices is exact.
With `axis_name` set (pmap), gradients and metric sums are summed over devices first; under jit with
sharded batches XLA inserts that reduction itself.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from ftjax.errors import InputError
from ftjax import adversarial, trainability
from ftjax.peft.spec import METHOD_COLLECTIONS


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # number of updates applied so far (int32 scalar)
  trainable: Any  # the pytree the optimiser updates
  frozen: Any  # everything else (backbone weights that do not train), never differentiated
  opt_state: Any  # optimiser state, shaped like `trainable` only
  rng: jax.Array  # base dropout key; per-step keys are derived, never stored


def create_state(trainable, frozen, tx: optax.GradientTransformation, seed: int) -> TrainState:
  return TrainState(
    step=jnp.zeros((), jnp.int32),
    trainable=trainable,
    frozen=frozen,
    opt_state=tx.init(trainable),
    rng=jax.random.key_data(jax.random.key(seed)),
  )


def apply_model(model, task, tree, batch, *, deterministic: bool, rng=None, perturbation=None):
  """The head's output for `batch`: the backbone with the method's collections, then the task head."""
  variables = {"params": tree["backbone"], **{c: tree[c] for c in METHOD_COLLECTIONS if c in tree}}
  kwargs = dict(
    attention_mask=batch["attention_mask"], deterministic=deterministic, embedding_perturbation=perturbation
  )
  if not model.is_decoder:
    kwargs["token_type_ids"] = batch.get("token_type_ids")
  rngs = {} if deterministic else {"dropout": jax.random.fold_in(rng, 0)}
  outputs = model.apply(variables, batch["input_ids"], rngs=rngs, **kwargs)
  if task.head is None:
    return outputs.logits
  head_rngs = {} if deterministic else {"dropout": jax.random.fold_in(rng, 1)}
  inputs = {name: batch[name] for name in task.head_inputs}  # e.g. entity positions for relation heads
  return task.head.apply(
    {"params": tree["head"]}, outputs, batch["attention_mask"], deterministic, rngs=head_rngs, **inputs
  )


def embedding_width(model) -> int:
  c = model.config
  return getattr(c, "hidden_size", None) or getattr(c, "n_embd")


def make_train_step(
  model,
  task,
  tx: optax.GradientTransformation,
  *,
  adversarial_config,
  grad_accum_steps: int = 1,
  dropout: bool = True,
  axis_name: str | None = None,
):
  """Builds `train_step(state, batch) -> (state, metrics)`, closed over everything static."""

  def micro_step(trainable, frozen, micro_batch, rng):
    def loss_fn(trainable, perturbation):
      tree = trainability.combine(trainable, frozen)
      out = apply_model(model, task, tree, micro_batch, deterministic=not dropout, rng=rng, perturbation=perturbation)
      loss_sum, count = task.loss(out, micro_batch)
      return loss_sum, {"loss_sum": loss_sum, "count": count}

    ids = micro_batch["input_ids"]
    shape = ids.shape + (embedding_width(model),)
    objective, aux, grads = adversarial.loss_and_grads(
      loss_fn, trainable, shape, micro_batch["attention_mask"], adversarial_config, jax.random.fold_in(rng, 2)
    )
    return grads, {"loss_sum": aux["loss_sum"], "objective_sum": objective, "count": aux["count"]}

  def train_step(state: TrainState, batch: dict):
    step_rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    if axis_name is not None:
      step_rng = jax.random.fold_in(step_rng, jax.lax.axis_index(axis_name))
    rows = batch["input_ids"].shape[0]
    if rows % grad_accum_steps:
      raise InputError(f"batch of {rows} rows does not split into grad_accum_steps={grad_accum_steps} micro-batches")
    # Micro-batch i takes rows i, i + A, i + 2A, ... (strided, not contiguous): with the batch sharded
    # over devices by rows, every micro-batch is then spread evenly over all devices.
    micro = jax.tree.map(
      lambda x: x.reshape((rows // grad_accum_steps, grad_accum_steps) + x.shape[1:]).swapaxes(0, 1), batch
    )

    def accumulate(carry, xs):
      index, micro_batch = xs
      grads, metrics = micro_step(state.trainable, state.frozen, micro_batch, jax.random.fold_in(step_rng, index))
      return jax.tree.map(jnp.add, carry, (grads, metrics)), None

    zeros = (
      jax.tree.map(jnp.zeros_like, state.trainable),
      {"loss_sum": jnp.zeros(()), "objective_sum": jnp.zeros(()), "count": jnp.zeros(())},
    )
    if grad_accum_steps == 1:
      grads, sums = micro_step(state.trainable, state.frozen, jax.tree.map(lambda x: x[0], micro), step_rng)
    else:
      (grads, sums), _ = jax.lax.scan(accumulate, zeros, (jnp.arange(grad_accum_steps), micro))
    if axis_name is not None:
      grads, sums = jax.lax.psum((grads, sums), axis_name)
    count = jnp.maximum(sums["count"], 1.0)
    grads = jax.tree.map(lambda g: g / count, grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.trainable)
    new_state = state.replace(
      step=state.step + 1, trainable=optax.apply_updates(state.trainable, updates), opt_state=opt_state
    )
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(sums["objective_sum"]) & jnp.isfinite(grad_norm)
    # Keep the last good state on a non-finite step (the loop stops and names the step).
    new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, state)
    metrics = {**sums, "grad_norm": grad_norm, "nonfinite": (~finite).astype(jnp.int32)}
    return new_state, metrics

  return train_step


def make_eval_step(model, task):
  """`eval_step(trainable, frozen, batch) -> (head output, {"loss_sum", "count"})`, deterministic."""

  def eval_step(trainable, frozen, batch):
    tree = trainability.combine(trainable, frozen)
    out = apply_model(model, task, tree, batch, deterministic=True)
    loss_sum, count = task.loss(out, batch)
    if not task.host_outputs:  # scored by the loss alone (perplexity): the logits, rows × tokens × 49k
      out = None  # vocabulary entries, never go to the host (they ran a test split out of memory)
    return out, {"loss_sum": loss_sum, "count": count}

  return eval_step

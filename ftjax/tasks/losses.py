"""Losses as (sum, count) pairs, so that gradient accumulation, padding rows and device sharding all
average exactly: the step divides the summed loss of the whole batch by its summed count once.

`weights` (B,) is 1 for a real example and 0 for a padding row of an evaluation batch.
"""

from __future__ import annotations

import jax.numpy as jnp
import optax


def classification(logits, batch):
  """Cross-entropy over classes; one count per example."""
  w = batch["weights"]
  nll = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.maximum(batch["labels"], 0))
  return jnp.sum(nll * w), jnp.sum(w)


def regression(logits, batch):
  """Mean squared error on a single output (STS-B: scores in [0, 5])."""
  w = batch["weights"]
  return jnp.sum(jnp.square(logits[:, 0] - batch["labels"]) * w), jnp.sum(w)


def token_classification(logits, batch):
  """Cross-entropy per labelled token (first sub-token of each word; -100 elsewhere)."""
  valid = (batch["labels"] != -100) & (batch["weights"][:, None] > 0)
  nll = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.maximum(batch["labels"], 0))
  return jnp.sum(jnp.where(valid, nll, 0.0)), jnp.sum(valid).astype(jnp.float32)


def question_answering(logits, batch):
  """Mean of start and end cross-entropy, one count per window (as BertForQuestionAnswering)."""
  start_logits, end_logits = logits
  w = batch["weights"]
  start = optax.softmax_cross_entropy_with_integer_labels(start_logits, batch["start_positions"])
  end = optax.softmax_cross_entropy_with_integer_labels(end_logits, batch["end_positions"])
  return jnp.sum(0.5 * (start + end) * w), jnp.sum(w)


def causal_lm(logits, batch):
  """Next-token cross-entropy on the labelled tokens (targets only; -100 on prompts and padding).
  Labels align with input_ids (Hugging Face convention): position t predicts labels[t + 1]."""
  labels = batch["labels"][:, 1:]
  valid = (labels != -100) & (batch["weights"][:, None] > 0)
  nll = optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1].astype(jnp.float32), jnp.maximum(labels, 0))
  return jnp.sum(jnp.where(valid, nll, 0.0)), jnp.sum(valid).astype(jnp.float32)

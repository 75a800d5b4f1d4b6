"""Tasks: a head, a loss and what evaluation collects, for each kind of problem.

`make_task(kind, ...)` returns a `Task`; the training step and evaluation treat every task alike.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import flax.linen as nn

from ftjax.tasks import heads, losses

KINDS = ("classification", "regression", "token_classification", "question_answering", "causal_lm")


@dataclasses.dataclass(frozen=True)
class Task:
  kind: str
  head: nn.Module | None  # None: the backbone's own logits (causal LM)
  loss: Callable  # (head output, batch) → (loss sum, count)
  num_labels: int = 0
  label_names: tuple[str, ...] = ()


def make_task(
  kind: str, num_labels: int = 0, label_names=(), dropout_rate: float = 0.1, pooling: str = "pooler"
) -> Task:
  """`pooling` (sequence-level tasks on encoders): pooler | cls | mean, see heads.SequenceClassificationHead."""
  if pooling not in heads.POOLINGS:
    raise ValueError(f"head pooling {pooling!r} is not one of {heads.POOLINGS}")
  if kind == "classification":
    return Task(
      kind,
      heads.SequenceClassificationHead(num_labels, dropout_rate, pooling=pooling),
      losses.classification,
      num_labels,
      tuple(label_names),
    )
  if kind == "regression":
    return Task(kind, heads.SequenceClassificationHead(1, dropout_rate, pooling=pooling), losses.regression, 1)
  if kind == "token_classification":
    return Task(
      kind,
      heads.TokenClassificationHead(num_labels, dropout_rate),
      losses.token_classification,
      num_labels,
      tuple(label_names),
    )
  if kind == "question_answering":
    return Task(kind, heads.QuestionAnsweringHead(), losses.question_answering)
  if kind == "causal_lm":
    return Task(kind, None, losses.causal_lm)
  raise ValueError(f"unknown task kind {kind!r}; known: {KINDS}")

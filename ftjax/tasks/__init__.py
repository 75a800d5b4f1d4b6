"""Tasks: a head, a loss and what evaluation collects, for each kind of problem.

`make_task(kind, ...)` returns a `Task` built from the kind's record (kinds.py); the training step and
evaluation treat every task alike.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import flax.linen as nn

from ftjax.tasks import heads
from ftjax.tasks.kinds import KINDS, kind as kind_record


@dataclasses.dataclass(frozen=True)
class Task:
  kind: str  # a key of KINDS
  head: nn.Module | None  # None: the backbone's own logits (causal LM)
  loss: Callable  # (head output, batch) → (loss sum, count)
  num_labels: int = 0
  label_names: tuple[str, ...] = ()
  host_outputs: bool = True  # False: the eval step returns no per-row outputs (scored by the loss alone)
  head_inputs: tuple[str, ...] = ()  # batch arrays passed to the head by name


def make_task(
  kind: str, num_labels: int = 0, label_names=(), dropout_rate: float = 0.1, pooling: str = "pooler"
) -> Task:
  """`pooling` (sequence-level tasks on encoders): pooler | cls | mean, see heads.SequenceClassificationHead."""
  if pooling not in heads.POOLINGS:
    raise ValueError(f"head pooling {pooling!r} is not one of {heads.POOLINGS}")
  record = kind_record(kind)
  return Task(
    kind,
    record.head(num_labels, dropout_rate, pooling),
    record.loss,
    1 if record.regression else num_labels,
    tuple(label_names),
    record.host_outputs,
    record.head_inputs,
  )


__all__ = ["KINDS", "Task", "make_task"]

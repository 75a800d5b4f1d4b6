"""Which parameters train: a list of rules over parameter paths, decided as data.

A run's parameters form one pytree: `{"backbone": ..., "head": ..., "lora" | "adapter" | "prompt" |
"prefix": ...}`. Each leaf has a path such as `backbone/encoder/layer_3/attention/self/query/kernel` or
`lora/encoder/layer_3/attention/self/query/a`. A rule is `"train:<regex>"` or `"freeze:<regex>"`; the
regex is searched in the path and the first matching rule decides. The config's `trainable` rules come
before the method's preset, so an ablation is one line, e.g.

  LoRA plus the LayerNorms of the top two layers:  trainable=("train:backbone/encoder/layer_[45]/.*LayerNorm",)
  BitFit without embedding biases:                 trainable=("freeze:backbone/embeddings/",)

Every leaf must be decided by some rule (big_vision's lesson: a parameter nobody thought about is a bug).
Frozen leaves are split off into their own pytree: the step differentiates only the trainable pytree,
so frozen parameters get no gradient computation and no optimiser state.
"""

from __future__ import annotations

import re

import numpy as np
from flax import traverse_util
from ftjax.errors import InputError

# The layer norms of every architecture we load: BERT's LayerNorm, GPT-2's ln_*, Llama's *norm.
_NORMS = r"(LayerNorm|ln_\w+|\w*norm)/"

PRESETS: dict[str, tuple[str, ...]] = {
  "full": ("train:^backbone/", "train:^head/"),
  "head": ("train:^head/", "freeze:^backbone/"),
  # BitFit (Ben Zaken et al. 2022): every bias term, LayerNorm biases included, plus the head.
  "bitfit": ("train:^head/", "train:^backbone/.*/bias$", "freeze:^backbone/"),
  "lora": ("train:^head/", "train:^lora/", "freeze:^backbone/"),
  # Houlsby et al. train the layer norms along with the adapters; so do we, for both placements.
  "adapter": ("train:^head/", "train:^adapter/", f"train:^backbone/.*{_NORMS}", "freeze:^backbone/"),
  "prompt": ("train:^head/", "train:^prompt/", "freeze:^backbone/"),
  "prefix": ("train:^head/", "train:^prefix/", "freeze:^backbone/"),
}


class RuleError(InputError):
  """A malformed rule, or parameters that no rule decides."""


def parse_rules(rules) -> list[tuple[re.Pattern, bool, str]]:
  parsed = []
  for rule in rules:
    action, sep, pattern = str(rule).partition(":")
    if not sep or action not in ("train", "freeze"):
      raise RuleError(f"trainable rule {rule!r} must read 'train:<regex>' or 'freeze:<regex>'")
    try:
      parsed.append((re.compile(pattern), action == "train", rule))
    except re.error as e:
      raise RuleError(f"trainable rule {rule!r}: bad regex: {e}") from None
  return parsed


def rules_for(method: str, overrides=()) -> tuple[str, ...]:
  if method not in PRESETS:
    raise RuleError(f"unknown method {method!r}; known: {sorted(PRESETS)}")
  return tuple(overrides) + PRESETS[method]


def flatten(tree: dict) -> dict[str, object]:
  return traverse_util.flatten_dict(tree, sep="/")


def unflatten(flat: dict[str, object]) -> dict:
  return traverse_util.unflatten_dict(flat, sep="/") if flat else {}


def trainable_paths(tree: dict, rules) -> dict[str, bool]:
  """path → trains? for every leaf; raises naming the leaves that no rule decides."""
  parsed = parse_rules(rules)
  decided, undecided = {}, []
  for path in flatten(tree):
    match = next((train for regex, train, _ in parsed if regex.search(path)), None)
    if match is None:
      undecided.append(path)
    decided[path] = match
  if undecided:
    raise RuleError(
      f"{len(undecided)} parameters match no trainable rule, e.g. {undecided[:3]}; rules were {list(rules)}"
    )
  return decided


def partition(tree: dict, rules) -> tuple[dict, dict]:
  """(trainable, frozen): two nested dicts holding disjoint leaves of `tree`."""
  decided = trainable_paths(tree, rules)
  flat = flatten(tree)
  return (
    unflatten({p: v for p, v in flat.items() if decided[p]}),
    unflatten({p: v for p, v in flat.items() if not decided[p]}),
  )


def combine(trainable: dict, frozen: dict) -> dict:
  """Inverse of `partition` (runs at trace time: costs nothing inside jit)."""
  return unflatten({**flatten(frozen), **flatten(trainable)})


def count(tree: dict) -> int:
  return int(sum(np.prod(np.shape(v)) for v in flatten(tree).values()))


def summary(trainable: dict, frozen: dict) -> str:
  """One line per top-level part, and the total: the numbers a PEFT paper reports."""
  n_train, n_frozen = count(trainable), count(frozen)
  total = n_train + n_frozen
  lines = [f"trainable parameters: {n_train:,} of {total:,} ({100.0 * n_train / max(total, 1):.3f}%)"]
  for part in sorted(set(trainable) | set(frozen)):
    t, f = count(trainable.get(part, {})), count(frozen.get(part, {}))
    lines.append(f"  {part:9s} {t:>12,} trainable {f:>12,} frozen")
  return "\n".join(lines)

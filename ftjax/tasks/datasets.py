"""From a config's `task` section to features and scores.

`load(config, tokenizer, split)` reads the split of the configured source (its record in
ftjax/data/sources.py) through TFDS (local raw files when `data_dir` is set), featurises it and returns a
`TaskData` whose `score(outputs, loss_sum, count)` turns the model's outputs into the metrics of its kind
(ftjax/tasks/kinds.py).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import numpy as np

from ftjax.data import raw, sources
from ftjax.data.tfds_builders import load_split
from ftjax.tasks import kinds


def source(config) -> sources.Source:
  """The record of `config.task.source` (ftjax/data/sources.py)."""
  return sources.source(config.task.source)


def examples(config, split: str):
  """The raw examples of `split`, read through TFDS (prepared once from local files when data_dir is set)."""
  src = source(config)
  data_dir, options = src.locate(config) if src.locate else (config.data_dir, {})
  if data_dir is None:
    print(
      f"data_dir unset: reading {config.task.source!r} {split} through TFDS by name (downloads once; needs the network)"
    )
  try:
    return load_split(config.task.source, split, data_dir=data_dir, tfds_dir=config.tfds_dir, **options)
  except raw.DataError as e:
    if src.locate is None:
      raise
    message = str(e)  # name the configured files, not their links under tfds_dir
    for link in Path(data_dir).iterdir():
      message = message.replace(str(link), str(link.resolve()))
    raise raw.DataError(message) from None


FILE_SUFFIXES = (".csv", ".tsv", ".jsonl")  # a configured-files source's split files (table, instruction)


def with_data_dir(config, data_dir: str, split: str):
  """`config` reading `split` from other raw files (scoring a finished run on new data): a folder of the
  source's raw files; for a source whose files are configured (task.train_file…: table, instruction), a
  folder holding `<split>.csv|tsv|jsonl`, or that file itself. Such a run's other files are dropped (a
  table's label set is the run's, task.label_names)."""
  config = config.copy_and_resolve_references()
  path = Path(data_dir).expanduser()
  if source(config).locate is None:
    config.data_dir = str(path)
    return config
  if split not in ("train", "dev", "test"):
    raise raw.DataError(f"--split={split}: a {config.task.source} run's splits are train, dev and test")
  if path.is_file():
    file = path
  else:
    found = [path / f"{split}{s}" for s in FILE_SUFFIXES if (path / f"{split}{s}").is_file()]
    if not found:
      raise raw.DataError(
        f"--data_dir={data_dir}: a {config.task.source} run reads split {split!r} from {split}.csv, "
        f"{split}.tsv or {split}.jsonl in that folder (or from a file given directly); none exists"
      )
    file = found[0]
  for name in ("train", "dev", "test"):
    config.task[f"{name}_file"] = ""
  config.task[f"{split}_file"] = str(file.resolve())
  return config


@dataclasses.dataclass
class TaskData:
  split: str
  kind: str
  examples: Sequence[dict]
  features: dict[str, np.ndarray]
  label_names: tuple

  @property
  def num_rows(self) -> int:
    return len(self.features["input_ids"])

  @property
  def labelled(self) -> bool:
    """GLUE test files have no labels (-1): such a split gets predictions but no scores."""
    labels = self.features.get("labels")
    if labels is None or labels.ndim > 1:
      return True
    return bool(np.any(labels != -1))

  def score(self, outputs, loss_sum: float, count: float) -> tuple[dict, str | None]:
    """(metrics, text report or None) from the model outputs per feature row (host numpy arrays)."""
    if not self.labelled:
      return {}, None
    values, report = kinds.kind(self.kind).score(self, outputs, loss_sum, count)
    return {"loss": loss_sum / max(count, 1.0), **values}, report


def load(config, tokenizer, split: str, limit: int = 0) -> TaskData:
  """One split, featurised. limit > 0 keeps a fixed subset of `limit` examples (the same for every seed
  and method, so CPU-sized runs stay comparable): a random one, or the first ones for running text."""
  src = source(config)
  data = list(examples(config, split))
  if not data:
    raise raw.DataError(f"{config.task.source} split {split!r} has no examples")
  if 0 < limit < len(data):
    keep = (
      np.arange(limit) if src.subset == "first" else np.sort(np.random.default_rng(0).permutation(len(data))[:limit])
    )
    data = [data[i] for i in keep]
  featurize = src.featurize or kinds.kind(src.kind).featurize
  return TaskData(split, src.kind, data, featurize(data, tokenizer, config), src.label_names(config))

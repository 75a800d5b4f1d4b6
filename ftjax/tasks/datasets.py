"""From a config's `task` section to features and scores: which reader, featuriser, head and metric.

`SOURCES` is the explicit table of what each data source is. `load(config, tokenizer, split)` reads the
split through TFDS (local raw files when `data_dir` is set), featurises it and returns a `TaskData`
whose `score(outputs, loss_sum, count)` turns the model's outputs into the metrics of the task.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ftjax import metrics
from ftjax.data import features as feats
from ftjax.data import raw
from ftjax.data.tfds_builders import DEFAULT_TFDS_DIR, load_split


@dataclasses.dataclass(frozen=True)
class Source:
  kind: str  # a key of ftjax.tasks.KINDS
  featurize: Callable  # (examples, tokenizer, config) → features
  label_names: Callable[[Any], tuple] = lambda config: ()
  # decoders: (examples, tokenizer, config) → left-padded prompts, and (references, hypotheses) → metrics
  prompts: Callable | None = None
  score_generation: Callable = metrics.generation


def _classification(examples, tokenizer, config):
  return feats.classification(examples, tokenizer, config.max_length)


def _glue(task: str) -> Source:
  spec = raw.GLUE_TASKS[task]
  kind = "regression" if spec.label_values is None else "classification"
  return Source(kind, _classification, lambda config: tuple(spec.label_names or ()))


def _table_label_names(config) -> tuple:
  return raw.table_label_names(config.task.train_file, config.task.label_field)


def _chat_options(config, instruction: str) -> dict:
  """How a chat source's examples become prompts; `instruction` is the source's own ("{}" = the text)."""
  task = config.task
  return {
    "instruction": task.get("instruction") or instruction,
    "system": task.get("system_prompt", ""),
    "chat_template": task.get("chat_template", True),
  }


def _chat(instruction: str, score: Callable) -> Source:
  """A decoder task in raw.py's chat schema, prompted through the tokenizer's chat template."""
  return Source(
    "causal_lm",
    lambda ex, tok, config: feats.chat(ex, tok, config.max_length, **_chat_options(config, instruction)),
    prompts=lambda ex, tok, config: feats.chat_prompts(
      ex, tok, config.max_length, **_chat_options(config, instruction)
    ),
    score_generation=score,
  )


SOURCES: dict[str, Source] = {
  **{f"glue/{task}": _glue(task) for task in raw.GLUE_TASKS},
  "table": Source("classification", _classification, _table_label_names),
  "conll2003": Source(
    "token_classification",
    lambda ex, tok, config: feats.token_classification(ex, tok, config.max_length),
    lambda config: raw.CONLL2003_TAGS,
  ),
  "squad": Source(
    "question_answering", lambda ex, tok, config: feats.qa(ex, tok, config.max_length, config.task.doc_stride)
  ),
  "e2e_nlg": Source(
    "causal_lm",
    lambda ex, tok, config: feats.generation(ex, tok, config.max_length),
    prompts=lambda ex, tok, config: feats.generation_prompts(ex, tok, config.max_length),
    score_generation=metrics.e2e,
  ),
  "samsum": _chat("Summarize this dialogue:\n{}", metrics.summarization),
  "multi30k": _chat("Translate this English sentence into German:\n{}", metrics.translation),
  "dailydialog": _chat("{}", metrics.dialogue),
  "instruction": _chat("{}", metrics.generation),
  "wikitext2": Source("causal_lm", lambda ex, tok, config: feats.language_modeling(ex, tok, config.max_length)),
}


def source(config) -> Source:
  if config.task.source not in SOURCES:
    raise raw.DataError(f"config key task.source: unknown source {config.task.source!r}; known: {sorted(SOURCES)}")
  return SOURCES[config.task.source]


def _table_folder(config) -> Path:
  """A folder of `train/dev/test.<ext>` links to the configured files, so the table goes through the
  same TFDS builder as every other source (the builder fingerprints the files' bytes, not their names)."""
  files = {"train": config.task.train_file, "dev": config.task.dev_file, "test": config.task.test_file}
  for split, file in files.items():
    if file and not Path(file).expanduser().is_file():
      raise raw.DataError(f"config key task.{split}_file: {file} does not exist")
  key = hashlib.sha256(
    repr(sorted((k, str(Path(v).expanduser().resolve())) for k, v in files.items() if v)).encode()
  ).hexdigest()[:16]
  folder = Path(config.tfds_dir or DEFAULT_TFDS_DIR).expanduser() / "table_sources" / key
  folder.mkdir(parents=True, exist_ok=True)
  for split, file in files.items():
    if file:
      path = Path(file).expanduser().resolve()
      link = folder / f"{split}{path.suffix}"
      if not link.exists():
        os.symlink(path, link)
  return folder


def examples(config, split: str):
  """The raw examples of `split`, read through TFDS (prepared once from local files when data_dir is set)."""
  options = {}
  data_dir = config.data_dir
  if config.task.source == "table":
    if not config.task.train_file or not config.task.label_field:
      raise raw.DataError("a table task needs config keys task.train_file and task.label_field")
    data_dir = _table_folder(config)
    options = {
      "text_fields": config.task.text_fields,
      "label_field": config.task.label_field,
      "label_names": list(_table_label_names(config)),
    }
  elif config.task.source == "instruction":
    if not config.task.train_file:
      raise raw.DataError("an instruction task needs config key task.train_file (JSONL, CSV or TSV)")
    data_dir = _table_folder(config)
    options = {k: config.task[k] for k in ("prompt_field", "response_field", "system_field")}
  if data_dir is None:
    print(
      f"data_dir unset: reading {config.task.source!r} {split} through TFDS by name (downloads once; needs the network)"
    )
  try:
    return load_split(config.task.source, split, data_dir=data_dir, tfds_dir=config.tfds_dir, **options)
  except raw.DataError as e:
    if config.task.source not in ("table", "instruction"):
      raise
    message = str(e)  # name the configured files, not their links under tfds_dir
    for link in Path(data_dir).iterdir():
      message = message.replace(str(link), str(link.resolve()))
    raise raw.DataError(message) from None


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
    result = {"loss": loss_sum / max(count, 1.0)}
    if not self.labelled:
      return {}, None
    report = None
    if self.kind == "classification":
      result.update(metrics.classification(self.features["labels"], outputs.argmax(-1), max(len(self.label_names), 2)))
    elif self.kind == "regression":
      result.update(metrics.regression(self.features["labels"], outputs[:, 0]))
    elif self.kind == "token_classification":
      predicted = feats.word_predictions(self.features, outputs.argmax(-1), [len(e["tokens"]) for e in self.examples])
      names = self.label_names
      gold = [[names[t] for t in e["tags"]] for e in self.examples]
      scores, report = metrics.ner(gold, [[names[t] for t in p] for p in predicted])
      result.update(scores)
    elif self.kind == "question_answering":
      answers = feats.qa_answers(self.examples, self.features, outputs[0], outputs[1])
      result.update(metrics.squad({e["id"]: list(e["answer_texts"]) for e in self.examples}, answers))
    elif self.kind == "causal_lm":
      result.update(metrics.perplexity(loss_sum, count))
    return result, report


def load(config, tokenizer, split: str, limit: int = 0) -> TaskData:
  """One split, featurised. limit > 0 keeps a fixed subset of `limit` examples (the same for every seed
  and method, so CPU-sized runs stay comparable): a random one, or the first ones for running text."""
  src = source(config)
  data = list(examples(config, split))
  if not data:
    raise raw.DataError(f"{config.task.source} split {split!r} has no examples")
  if 0 < limit < len(data):
    keep = (
      np.arange(limit)
      if config.task.source == "wikitext2"
      else np.sort(np.random.default_rng(0).permutation(len(data))[:limit])
    )
    data = [data[i] for i in keep]
  return TaskData(split, src.kind, data, src.featurize(data, tokenizer, config), src.label_names(config))

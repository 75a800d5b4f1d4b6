"""One record per data source: its files, reader, example schema, task kind and metric overrides.

`SOURCES[name]` is everything ftjax knows about a source: TFDS preparation (tfds_builders.py) reads its
`files`, `read` and `schema`; ftjax.tasks.datasets its `kind`, `label_names`, `featurize` and `subset`;
evaluation its `selection_metric` and `generation_metric`; the next-commands message its `labelled_test`.
Source names follow TFDS's where TFDS has the dataset (`hub`), so one name works with local files and
with the hub. Example schemas are listed in raw.py's docstring.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import tensorflow_datasets as tfds

from ftjax import metrics
from ftjax.data import features as feats
from ftjax.data import raw

_TEXT = tfds.features.Text
_SEQ = tfds.features.Sequence
_IDX = {"idx": np.int64}
_SQUAD = {
  **_IDX,
  "id": _TEXT(),
  "title": _TEXT(),
  "context": _TEXT(),
  "question": _TEXT(),
  "answer_texts": _SEQ(_TEXT()),
  "answer_starts": _SEQ(np.int64),
}


@dataclasses.dataclass(frozen=True)
class Hub:
  """TFDS's own dataset of the same name (read when data_dir is unset; needs the network)."""

  module: str  # the tensorflow_datasets module that registers the builder (imported on use)
  rename: Callable[[dict], dict] = lambda example: example  # TFDS's fields → raw.py's schema
  splits: dict = dataclasses.field(default_factory=lambda: {"dev": "validation"})  # ftjax's split → TFDS's


@dataclasses.dataclass(frozen=True)
class Source:
  kind: str  # a key of ftjax.tasks.kinds.KINDS
  read: Callable[..., Iterator[dict]]  # (data_dir, split, **options) → example dicts (raw.py)
  files: Callable[[Path], dict[str, Path]]  # data_dir → {split: file} of the splits present
  schema: Callable[[dict], dict]  # options → the TFDS feature spec of one example
  label_names: Callable[[object], tuple] = lambda config: ()  # config → class names (index = label id)
  featurize: Callable | None = None  # (examples, tokenizer, config) → features; None: the kind's
  selection_metric: str = ""  # the dev metric runs are selected on; "": the kind's
  generation_metric: Callable = metrics.generation  # (references, hypotheses) → scores of decoded text
  prompts: Callable | None = None  # decoders: (examples, tokenizer, config) → left-padded prompts to decode;
  # None: features.generation_prompts
  labelled_test: Callable[[object], bool] = lambda config: False  # whether config's test split has labels
  subset: str = "random"  # max_*_examples keeps a random fixed subset, or "first" (running text)
  locate: Callable | None = None  # config → (data_dir, reader options); None: (config.data_dir, {})
  hub: Hub | None = None


def named_files(names: dict[str, str]) -> Callable[[Path], dict[str, Path]]:
  """`files` for a source with fixed file names per split."""
  return lambda data_dir: {split: data_dir / name for split, name in names.items() if (data_dir / name).is_file()}


def _schema(spec: dict) -> Callable[[dict], dict]:
  return lambda options: spec


# ---------------------------------------------------------------------------------------- GLUE


def _glue(task: str) -> Source:
  spec = raw.GLUE_TASKS[task]
  regression = spec.label_values is None
  example = {**_IDX, "text": _TEXT(), "label": np.float64 if regression else np.int64}
  if len(spec.text_columns) == 2:
    example["text_pair"] = _TEXT()
  first, *second = _HUB_TEXT_FIELDS.get(task, ("sentence1", "sentence2"))
  names = {first: "text", **({second[0]: "text_pair"} if second else {})}
  return Source(
    "regression" if regression else "classification",
    functools.partial(raw.read_glue, task),
    named_files(spec.files),
    _schema(example),
    lambda config: tuple(spec.label_names or ()),
    selection_metric="matthews" if task == "cola" else "",  # CoLA is reported (and selected) by Matthews
    hub=Hub(
      "tensorflow_datasets.text.glue",
      lambda e: {names.get(k, k): v for k, v in e.items()},
      {"dev": "validation_matched" if task == "mnli" else "validation"},
    ),
  )


_HUB_TEXT_FIELDS = {  # TFDS's GLUE field names
  "sst2": ("sentence",),
  "cola": ("sentence",),
  "qnli": ("question", "sentence"),
  "mnli": ("premise", "hypothesis"),
  "qqp": ("question1", "question2"),
}


# ------------------------------------------------------------------------ a user's own table


def _table_files(data_dir: Path) -> dict[str, Path]:
  return {p.stem: p for p in sorted(data_dir.iterdir()) if p.suffix in (".tsv", ".csv", ".jsonl")}


def _table_schema(options: dict) -> dict:
  example = {**_IDX, "text": _TEXT(), "label": np.int64}
  return {**example, "text_pair": _TEXT()} if len(options["text_fields"].split(",")) == 2 else example


def _table_label_names(config) -> tuple:
  """task.label_names when set (a finished run's, recorded in its config), else the train file's labels."""
  names = tuple(config.task.get("label_names", ()))
  return names or raw.table_label_names(config.task.train_file, config.task.label_field)


def _table_locate(config) -> tuple[Path, dict]:
  if not config.task.label_field or not (config.task.train_file or config.task.get("label_names")):
    raise raw.DataError("a table task needs config keys task.train_file (or task.label_names) and task.label_field")
  options = {
    "text_fields": config.task.text_fields,
    "label_field": config.task.label_field,
    "label_names": list(_table_label_names(config)),
  }
  return _linked_files(config), options


def _linked_files(config) -> Path:
  """A folder of `train/dev/test.<ext>` links to the configured files, so a user's table goes through the
  same TFDS builder as every other source (the builder fingerprints the files' bytes, not their names)."""
  from ftjax.data.tfds_builders import DEFAULT_TFDS_DIR

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


# ------------------------------------------------------------------ decoder tasks as chat turns
# raw.py's chat schema: the turns so far (the last one is answered) and the reference responses. Prompts
# go through the tokenizer's chat template (the GGUF's own for SmolLM2); the source's instruction wraps
# the last turn, "{}" marking where; config keys task.instruction / system_prompt / chat_template override.

_CHAT = {**_IDX, "system": _TEXT(), "turns": _SEQ(_TEXT()), "refs": _SEQ(_TEXT())}


def _chat_options(config, instruction: str) -> dict:
  task = config.task
  return {
    "instruction": task.get("instruction") or instruction,
    "system": task.get("system_prompt", ""),
    "chat_template": task.get("chat_template", True),
  }


def _chat(read, files, instruction: str, metric: Callable, **fields) -> Source:
  """A decoder task on chat-schema examples: loss on the response only, prompts cut from their start."""
  return Source(
    "causal_lm",
    read,
    files,
    _schema(_CHAT),
    featurize=lambda ex, tok, config: feats.chat(ex, tok, config.max_length, **_chat_options(config, instruction)),
    prompts=lambda ex, tok, config: feats.chat_prompts(
      ex, tok, config.max_length, **_chat_options(config, instruction)
    ),
    generation_metric=metric,
    labelled_test=lambda config: True,
    **fields,
  )


def _instruction_locate(config) -> tuple[Path, dict]:
  if not (config.task.train_file or config.task.dev_file or config.task.test_file):
    raise raw.DataError("an instruction task needs config key task.train_file (JSONL, CSV or TSV)")
  return _linked_files(config), {k: config.task[k] for k in ("prompt_field", "response_field", "system_field")}


# ------------------------------------------------------------------------------------- sources

SOURCES: dict[str, Source] = {
  **{f"glue/{task}": _glue(task) for task in raw.GLUE_TASKS},
  "table": Source(
    "classification",
    raw.read_table_split,
    _table_files,
    _table_schema,
    _table_label_names,
    labelled_test=lambda config: bool(config.task.test_file),
    locate=_table_locate,
  ),
  "conll2003": Source(
    "token_classification",
    raw.read_conll2003,
    named_files(raw.CONLL2003_FILES),
    _schema({**_IDX, "tokens": _SEQ(_TEXT()), "tags": _SEQ(np.int64)}),
    lambda config: raw.CONLL2003_TAGS,
    labelled_test=lambda config: True,
    hub=Hub("tensorflow_datasets.text.conll2003", lambda e: {**e, "tags": e["ner"]}),
  ),
  "squad": Source(
    "question_answering",
    lambda data_dir, split: raw.read_squad(raw.split_path(data_dir, raw.SQUAD_FILES, split)),
    named_files(raw.SQUAD_FILES),
    _schema(_SQUAD),
    hub=Hub(
      "tensorflow_datasets.question_answering.squad",
      lambda e: {**e, "answer_texts": e["answers"]["text"], "answer_starts": e["answers"]["answer_start"]},
    ),
  ),
  # The one SQuAD-format file in data_dir (v1.1 dev in ../shared/data/squad) split by article: raw.article_split
  "squad_articles": Source(
    "question_answering",
    raw.read_squad_by_article,
    lambda data_dir: {split: raw.squad_file(data_dir) for split in raw.SQUAD_ARTICLE_SPLITS},
    _schema(_SQUAD),
    labelled_test=lambda config: True,
  ),
  # SemEval-2010 Task 8: dev = the last 800 of the training file (raw.read_semeval)
  "semeval2010_task8": Source(
    "relation_classification",
    raw.read_semeval,
    named_files(raw.SEMEVAL_FILES),
    _schema({**_IDX, "id": _TEXT(), "text": _TEXT(), "label": np.int64}),
    lambda config: raw.SEMEVAL_LABELS,
    labelled_test=lambda config: True,
  ),
  "e2e_nlg": Source(
    "causal_lm",
    raw.read_e2e,
    named_files(raw.E2E_FILES),
    _schema({**_IDX, "mr": _TEXT(), "refs": _SEQ(_TEXT())}),
    generation_metric=metrics.e2e,
    labelled_test=lambda config: True,
  ),
  "wikitext2": Source(
    "causal_lm",
    lambda data_dir, split: raw.read_text(raw.split_path(data_dir, raw.WIKITEXT2_FILES, split)),
    named_files(raw.WIKITEXT2_FILES),
    _schema({**_IDX, "text": _TEXT()}),
    featurize=lambda ex, tok, config: feats.language_modeling(ex, tok, config.max_length),
    labelled_test=lambda config: True,
    subset="first",
  ),
  "samsum": _chat(
    raw.read_samsum, named_files(raw.SAMSUM_FILES), "Summarize this dialogue:\n{}", metrics.summarization
  ),
  # files: the English side of each pair (what the TFDS preparation fingerprints); the reader pairs it with .de
  "multi30k": _chat(
    raw.read_multi30k,
    named_files({split: f"{stem}.en" for split, stem in raw.MULTI30K_FILES.items()}),
    "Translate this English sentence into German:\n{}",
    metrics.translation,
  ),
  "dailydialog": _chat(raw.read_dailydialog, named_files(raw.DAILYDIALOG_FILES), "{}", metrics.dialogue),
  # a user's own prompt/response JSONL, CSV or TSV files (config keys task.train_file, prompt_field, ...)
  "instruction": _chat(raw.read_instructions_split, _table_files, "{}", metrics.generation, locate=_instruction_locate),
}


def source(name: str) -> Source:
  if name not in SOURCES:
    raise raw.DataError(f"config key task.source: unknown source {name!r}; known: {sorted(SOURCES)}")
  return SOURCES[name]


def read(name: str, data_dir: str | Path, split: str, **options) -> Iterator[dict]:
  """Examples of `split` of source `name` from the raw files in data_dir."""
  if name not in SOURCES:
    raise raw.DataError(f"unknown source {name!r}; expected one of {sorted(SOURCES)}")
  if not Path(data_dir).is_dir():
    raise raw.DataError(f"{data_dir}: data directory does not exist")
  return SOURCES[name].read(data_dir, split, **options)

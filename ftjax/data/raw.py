"""Readers for datasets as distributed: local files in, example dicts out.

Every reader is a generator of plain dicts (str, int, float, lists of those), one schema per kind of data:

    classification   {"idx", "text", ["text_pair"], "label"}      label: class id, float (STS-B), -1 unlabelled
    conll2003        {"idx", "tokens": [str], "tags": [int]}       tags index CONLL2003_TAGS (IOB2)
    e2e              {"idx", "mr", "refs": [str]}                  train: one ref per row; dev/test: grouped
    squad            {"idx", "id", "title", "context", "question", "answer_texts", "answer_starts"}   no answers:
                     unanswerable (SQuAD v2.0)
    text             {"idx", "text"}                               one line of the file, newline kept
    semeval          {"idx", "id", "text", "label"}                text with <e1>…</e1> <e2>…</e2>; label
                                                                   indexes SEMEVAL_LABELS
    chat             {"idx", "system", "turns": [str], "refs": [str]}   turns end with the one to answer;
                     "" system = the template's default; train: one ref per row, eval: all refs

Bad input raises DataError naming the file and the 1-based line (or the JSON key / column), because the
person who sees the error is usually fixing a file by hand.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path
from typing import Iterator, Sequence
from ftjax.errors import InputError


class DataError(InputError):
  """A raw file is missing or malformed; the message names the file and the line, key or column."""


# ---------------------------------------------------------------------------------------------- GLUE


@dataclasses.dataclass(frozen=True)
class GlueTask:
  text_columns: tuple[str, ...]  # one column, or two for sentence pairs
  label_column: str
  # Label strings as written in the file; the position is the class id. None = regression (float label).
  label_values: tuple[str, ...] | None
  label_names: tuple[str, ...] | None  # human-readable, same order as label_values
  files: dict[str, str]
  # CoLA's train/dev files have no header line; these are their column names.
  headerless_columns: tuple[str, ...] | None = None


_GLUE_FILES = {"train": "train.tsv", "dev": "dev.tsv", "test": "test.tsv"}
_BINARY = ("0", "1")
_ENTAILMENT2 = ("entailment", "not_entailment")

# Column names are GLUE's header names (test files have the same text columns and no label column).
GLUE_TASKS: dict[str, GlueTask] = {
  "sst2": GlueTask(("sentence",), "label", _BINARY, ("negative", "positive"), _GLUE_FILES),
  "cola": GlueTask(
    ("sentence",),
    "label",
    _BINARY,
    ("unacceptable", "acceptable"),
    _GLUE_FILES,
    headerless_columns=("source", "label", "original_label", "sentence"),
  ),
  "mrpc": GlueTask(("#1 String", "#2 String"), "Quality", _BINARY, ("not_equivalent", "equivalent"), _GLUE_FILES),
  "rte": GlueTask(("sentence1", "sentence2"), "label", _ENTAILMENT2, _ENTAILMENT2, _GLUE_FILES),
  "stsb": GlueTask(("sentence1", "sentence2"), "score", None, None, _GLUE_FILES),
  "qnli": GlueTask(("question", "sentence"), "label", _ENTAILMENT2, _ENTAILMENT2, _GLUE_FILES),
  "mnli": GlueTask(
    ("sentence1", "sentence2"),
    "gold_label",
    ("entailment", "neutral", "contradiction"),
    ("entailment", "neutral", "contradiction"),
    {
      "train": "train.tsv",
      "dev": "dev_matched.tsv",
      "dev_mismatched": "dev_mismatched.tsv",
      "test": "test_matched.tsv",
      "test_mismatched": "test_mismatched.tsv",
    },
  ),
  "qqp": GlueTask(("question1", "question2"), "is_duplicate", _BINARY, ("not_duplicate", "duplicate"), _GLUE_FILES),
  "wnli": GlueTask(("sentence1", "sentence2"), "label", _BINARY, ("not_entailment", "entailment"), _GLUE_FILES),
}


def split_path(data_dir: str | Path, files: dict[str, str], split: str) -> Path:
  """The file of `split` under `data_dir`, checked to exist."""
  if split not in files:
    raise DataError(f"{data_dir}: unknown split {split!r}; expected one of {sorted(files)}")
  path = Path(data_dir) / files[split]
  if not path.is_file():
    raise DataError(f"{path}: file does not exist (split {split!r})")
  return path


def _tsv_rows(path: Path) -> Iterator[tuple[int, list[str]]]:
  """(1-based line, fields). QUOTE_NONE because GLUE sentences contain unbalanced quote characters."""
  # utf-8-sig: MRPC's header starts with a byte-order mark.
  with open(path, encoding="utf-8-sig", newline="") as f:
    for line_no, row in enumerate(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE), start=1):
      yield line_no, row


def _label_id(value: str, label_values: Sequence[str] | None, where: str) -> int | float:
  if label_values is None:
    try:
      return float(value)
    except ValueError:
      raise DataError(f"{where}: label {value!r} is not a number") from None
  if value not in label_values:
    raise DataError(f"{where}: unknown label {value!r}; expected one of {list(label_values)}")
  return label_values.index(value)


def _text(value: str, column: str, where: str) -> str:
  if not value.strip():
    raise DataError(f"{where}: empty text in column {column!r}")
  return value


def _example(idx, texts, label, columns, where) -> dict:
  example = {"idx": idx, "text": _text(texts[0], columns[0], where)}
  if len(columns) == 2:
    example["text_pair"] = _text(texts[1], columns[1], where)
  example["label"] = label
  return example


def read_glue(task: str, data_dir: str | Path, split: str) -> Iterator[dict]:
  """Examples of one GLUE task folder (GLUE's own TSV layout). Test splits are unlabelled: label = -1."""
  if task not in GLUE_TASKS:
    raise DataError(f"unknown GLUE task {task!r}; expected one of {sorted(GLUE_TASKS)}")
  spec = GLUE_TASKS[task]
  path = split_path(data_dir, spec.files, split)
  rows = _tsv_rows(path)
  headerless = spec.headerless_columns is not None and not split.startswith("test")
  if headerless:
    header = list(spec.headerless_columns)
  else:
    _, header = next(rows, (1, []))
  labelled = spec.label_column in header
  if not labelled and not split.startswith("test"):
    raise DataError(f"{path}:1: missing label column {spec.label_column!r} in header {header}")
  for column in spec.text_columns:
    if column not in header:
      raise DataError(f"{path}:1: missing column {column!r} in header {header}")
  text_at = [header.index(c) for c in spec.text_columns]
  label_at = header.index(spec.label_column) if labelled else None
  for idx, (line_no, row) in enumerate(rows):
    where = f"{path}:{line_no}"
    if len(row) != len(header):
      raise DataError(f"{where}: malformed row: {len(row)} columns, expected {len(header)}")
    label = -1 if label_at is None else _label_id(row[label_at], spec.label_values, where)
    yield _example(idx, [row[i] for i in text_at], label, spec.text_columns, where)


# ------------------------------------------------------------------------------ CSV / TSV / JSONL


def _table_records(path: Path) -> Iterator[tuple[str, dict]]:
  """(location, record) for a .csv, .tsv or .jsonl file with named columns."""
  if not path.is_file():
    raise DataError(f"{path}: file does not exist")
  if path.suffix == ".jsonl":
    yield from _jsonl_records(path)
    return
  if path.suffix not in (".csv", ".tsv"):
    raise DataError(f"{path}: unsupported file type {path.suffix!r}; expected .csv, .tsv or .jsonl")
  with open(path, encoding="utf-8-sig", newline="") as f:
    reader = csv.reader(f, delimiter="\t" if path.suffix == ".tsv" else ",")
    header = next(reader, [])
    for row in reader:
      where = f"{path}:{reader.line_num}"
      if len(row) != len(header):
        raise DataError(f"{where}: malformed row: {len(row)} columns, expected {len(header)}")
      yield where, dict(zip(header, row))


def _jsonl_records(path: Path) -> Iterator[tuple[str, dict]]:
  """(file:line, record) for every non-blank line of a JSON Lines file (whatever its suffix: SAMSum's is .json)."""
  with open(path, encoding="utf-8") as f:
    for line_no, line in enumerate(f, start=1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise DataError(f"{path}:{line_no}: malformed JSON: {e.msg}") from None
      if not isinstance(record, dict):
        raise DataError(f"{path}:{line_no}: malformed row: expected a JSON object")
      yield f"{path}:{line_no}", record


def _field(record: dict, name: str, where: str):
  if name not in record:
    raise DataError(f"{where}: missing column {name!r}")
  return record[name]


def table_label_names(path: str | Path, label_field: str) -> tuple[str, ...]:
  """The sorted distinct labels of a table file (the train file decides the label set)."""
  return tuple(sorted({str(_field(r, label_field, w)) for w, r in _table_records(Path(path))}))


def read_table(
  path: str | Path,
  text_fields: str,
  label_field: str | None,
  label_names: Sequence[str] | None,
  allow_unlabelled: bool = False,
) -> Iterator[dict]:
  """Classification examples from any table with named columns.

  text_fields: "sentence" or "premise,hypothesis". label_names maps label strings to ids by position
  (None: float labels, regression). label -1 when label_field is None, or when the row lacks the label
  column and allow_unlabelled (test files).
  """
  columns = tuple(c.strip() for c in text_fields.split(","))
  if not 1 <= len(columns) <= 2:
    raise DataError(f"text_fields must name one or two columns, got {text_fields!r}")
  for idx, (where, record) in enumerate(_table_records(Path(path))):
    texts = [str(_field(record, c, where)) for c in columns]
    label = -1
    if label_field is not None and not (allow_unlabelled and label_field not in record):
      label = _label_id(str(_field(record, label_field, where)), label_names, where)
    yield _example(idx, texts, label, columns, where)


def table_file(data_dir: str | Path, split: str) -> Path:
  """`{split}.tsv`, `.csv` or `.jsonl` under data_dir (exactly one of them)."""
  found = [p for p in (Path(data_dir) / f"{split}{ext}" for ext in (".tsv", ".csv", ".jsonl")) if p.is_file()]
  if len(found) != 1:
    raise DataError(
      f"{Path(data_dir) / split}.{{tsv,csv,jsonl}}: expected exactly one such file, found {[str(p) for p in found]}"
    )
  return found[0]


def read_table_split(
  data_dir: str | Path,
  split: str,
  text_fields: str,
  label_field: str | None = None,
  label_names: Sequence[str] | None = None,
) -> Iterator[dict]:
  """One split of a folder of tables; label names default to the sorted labels of the train file."""
  if label_field is not None and label_names is None:
    label_names = table_label_names(table_file(data_dir, "train"), label_field)
  return read_table(
    table_file(data_dir, split), text_fields, label_field, label_names, allow_unlabelled=split.startswith("test")
  )


# ------------------------------------------------------------------------------------ CoNLL-2003

CONLL2003_TYPES = ("PER", "ORG", "LOC", "MISC")
# Hugging Face's conll2003 order, so ids agree with checkpoints fine-tuned there.
CONLL2003_TAGS = ("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC")
CONLL2003_FILES = {"train": "eng.train", "dev": "eng.testa", "test": "eng.testb"}


def _tag_error(tag: str, entity_types: Sequence[str]) -> str | None:
  prefix, _, kind = tag.partition("-")
  if tag == "O" or (prefix in ("B", "I") and kind in entity_types):
    return None
  return f"tag {tag!r} is not O, B-T or I-T for T in {list(entity_types)}"


def iob1_to_iob2(tags: Sequence[str], entity_types: Sequence[str] = CONLL2003_TYPES) -> list[str]:
  """IOB1 (B- only between two adjacent entities of one type) to IOB2 (every entity starts with B-).

  An I-X starts a new entity when the previous tag is O or of another type. Raises ValueError for a tag
  that is not O, B-T or I-T with T in entity_types (the one way a sequence cannot be converted).
  """
  out = []
  previous_type = None
  for i, tag in enumerate(tags):
    error = _tag_error(tag, entity_types)
    if error:
      raise ValueError(f"{error} (position {i})")
    prefix, _, kind = tag.partition("-")
    out.append(tag if tag == "O" or prefix == "B" or previous_type == kind else f"B-{kind}")
    previous_type = kind or None
  return out


def read_conll2003(data_dir: str | Path, split: str) -> Iterator[dict]:
  """Sentences of the original CoNLL-2003 files (`word POS chunk NER`, IOB1), tags converted to IOB2."""
  path = split_path(data_dir, CONLL2003_FILES, split)
  tokens, tags = [], []
  idx = 0

  def sentence():
    iob2 = iob1_to_iob2(tags)  # cannot fail: every tag was checked on its line
    return {"idx": idx, "tokens": list(tokens), "tags": [CONLL2003_TAGS.index(t) for t in iob2]}

  with open(path, encoding="utf-8") as f:
    for line_no, line in enumerate(f, start=1):
      fields = line.split()
      if fields and fields[0] == "-DOCSTART-":
        continue
      if not fields:
        if tokens:
          yield sentence()
          idx += 1
          tokens, tags = [], []
        continue
      if len(fields) != 4:
        raise DataError(f"{path}:{line_no}: malformed row: {len(fields)} columns, expected 4 (word POS chunk NER)")
      error = _tag_error(fields[3], CONLL2003_TYPES)
      if error:
        raise DataError(f"{path}:{line_no}: cannot convert IOB1 to IOB2: {error}")
      tokens.append(fields[0])
      tags.append(fields[3])
  if tokens:
    yield sentence()


# --------------------------------------------------------------------------------------- E2E NLG

E2E_FILES = {"train": "trainset.csv", "dev": "devset.csv", "test": "testset_w_refs.csv"}


def read_e2e(data_dir: str | Path, split: str) -> Iterator[dict]:
  """E2E NLG (`mr`, `ref` columns). Train: one example per reference. Dev/test: references grouped per
  meaning representation, in first-appearance order, because BLEU on E2E is multi-reference."""
  path = split_path(data_dir, E2E_FILES, split)
  grouped: dict[str, list[str]] = {}
  idx = 0
  for where, record in _table_records(path):
    mr = _text(_field(record, "mr", where), "mr", where)
    ref = _text(_field(record, "ref", where), "ref", where)
    if split == "train":
      yield {"idx": idx, "mr": mr, "refs": [ref]}
      idx += 1
    else:
      grouped.setdefault(mr, []).append(ref)
  for idx, (mr, refs) in enumerate(grouped.items()):
    yield {"idx": idx, "mr": mr, "refs": refs}


# ----------------------------------------------------------------------------------------- SQuAD

SQUAD_FILES = {"train": "train-v1.1.json", "dev": "dev-v1.1.json"}


def _squad_root(path: Path) -> dict:
  if not path.is_file():
    raise DataError(f"{path}: file does not exist")
  try:
    with open(path, encoding="utf-8") as f:
      root = json.load(f)
  except json.JSONDecodeError as e:
    raise DataError(f"{path}:{e.lineno}: malformed JSON: {e.msg}") from None
  if not isinstance(root, dict) or not isinstance(root.get("data"), list):
    raise DataError(f"{path}: missing key .data (a list of articles)")
  return root


def read_squad(path: str | Path, articles: range | None = None) -> Iterator[dict]:
  """Questions of a SQuAD-format JSON file (v1.1, or v2.0 where an unanswerable question has no answers),
  of the articles at positions `articles` (None: all); errors name the JSON key path."""
  path = Path(path)
  root = _squad_root(path)

  def get(node, key, where):
    if not isinstance(node, dict) or key not in node:
      raise DataError(f"{path}: missing key {where}.{key}")
    return node[key]

  idx = 0
  for a, article in enumerate(root["data"]):
    if articles is not None and a not in articles:
      continue
    title = article.get("title", "") if isinstance(article, dict) else ""
    for p, paragraph in enumerate(get(article, "paragraphs", f"data[{a}]")):
      where_p = f"data[{a}].paragraphs[{p}]"
      context = get(paragraph, "context", where_p)
      for q, qa in enumerate(get(paragraph, "qas", where_p)):
        where = f"{where_p}.qas[{q}]"
        question = get(qa, "question", where)
        if not question.strip():
          raise DataError(f"{path}: empty text at {where}.question")
        answers = get(qa, "answers", where)
        yield {
          "idx": idx,
          "id": str(get(qa, "id", where)),
          "title": title,
          "context": context,
          "question": question,
          "answer_texts": [get(x, "text", f"{where}.answers[{i}]") for i, x in enumerate(answers)],
          "answer_starts": [int(get(x, "answer_start", f"{where}.answers[{i}]")) for i, x in enumerate(answers)],
        }
        idx += 1


SQUAD_ARTICLE_SPLITS = ("train", "dev", "test")


def squad_file(data_dir: str | Path) -> Path:
  """The one SQuAD-format .json file in data_dir (e.g. dev-v1.1.json, or a v2.0 file)."""
  found = sorted(Path(data_dir).glob("*.json"))
  if len(found) != 1:
    raise DataError(f"{data_dir}: expected exactly one SQuAD-format .json file, found {[p.name for p in found]}")
  return found[0]


def article_split(num_articles: int, split: str) -> range:
  """The positions of `split`'s articles in the file: the last 10/48 test, the 4/48 before them dev, the rest
  train, so SQuAD v1.1 dev's 48 articles split 34 / 4 / 10 and no article is on two sides."""
  if split not in SQUAD_ARTICLE_SPLITS:
    raise DataError(f"unknown split {split!r} of a SQuAD file split by article; expected one of {SQUAD_ARTICLE_SPLITS}")
  if num_articles < 3:
    raise DataError(f"a split by article needs at least 3 articles, the file has {num_articles}")
  test = max(1, round(num_articles * 10 / 48))
  dev = max(1, round(num_articles * 4 / 48))
  train_end, dev_end = num_articles - test - dev, num_articles - test
  return {"train": range(0, train_end), "dev": range(train_end, dev_end), "test": range(dev_end, num_articles)}[split]


def read_squad_by_article(data_dir: str | Path, split: str) -> Iterator[dict]:
  """One split (`article_split`) of the SQuAD-format file in data_dir."""
  path = squad_file(data_dir)
  return read_squad(path, article_split(len(_squad_root(path)["data"]), split))


# ----------------------------------------------------------------------------------- plain text

WIKITEXT2_FILES = {"train": "train.txt", "dev": "valid.txt", "test": "test.txt"}


def read_text(path: str | Path) -> Iterator[dict]:
  """Every line of a text file, newline kept, so joining the texts gives back the file (blank lines are
  document structure in WikiText, not errors)."""
  path = Path(path)
  if not path.is_file():
    raise DataError(f"{path}: file does not exist")
  with open(path, encoding="utf-8") as f:
    for idx, line in enumerate(f):
      yield {"idx": idx, "text": line}


# -------------------------------------------------------------------------- SemEval-2010 Task 8

SEMEVAL_TYPES = (
  "Cause-Effect",
  "Component-Whole",
  "Content-Container",
  "Entity-Destination",
  "Entity-Origin",
  "Instrument-Agency",
  "Member-Collection",
  "Message-Topic",
  "Product-Producer",
)
# Label ids: Other first, then each relation type in both directions (the scorer's 2×9+1 labels).
SEMEVAL_LABELS = ("Other",) + tuple(f"{t}({a},{b})" for t in SEMEVAL_TYPES for a, b in (("e1", "e2"), ("e2", "e1")))
SEMEVAL_FILES = {"train": "TRAIN_FILE.TXT", "dev": "TRAIN_FILE.TXT", "test": "TEST_FILE_FULL.TXT"}
SEMEVAL_DEV = 800  # the last 800 sentences of TRAIN_FILE.TXT are dev; train is the first 7,200
_ENTITY_TAGS = ("<e1>", "</e1>", "<e2>", "</e2>")


def read_semeval(data_dir: str | Path, split: str) -> Iterator[dict]:
  """SemEval-2010 Task 8 sentences `{"idx", "id", "text", "label"}`: text keeps the <e1>…</e1> <e2>…</e2>
  tags, label indexes SEMEVAL_LABELS. Train and dev are the first 7,200 and the last 800 of the training file;
  test is TEST_FILE_FULL.TXT. A record is `id<TAB>"sentence"`, the relation, `Comment:…`, a blank line."""
  path = split_path(data_dir, SEMEVAL_FILES, split)
  records = list(_semeval_records(path))
  if split != "test":
    records = records[:-SEMEVAL_DEV] if split == "train" else records[-SEMEVAL_DEV:]
  for idx, record in enumerate(records):
    yield {"idx": idx, **record}


def check_entity_tags(text: str, where: str) -> None:
  """DataError naming `where` unless text has exactly one <e1>…</e1> followed by one <e2>…</e2>."""
  for tag in _ENTITY_TAGS:
    if text.count(tag) != 1:
      raise DataError(f"{where}: malformed record: expected one {tag} in the sentence")
  if not text.index("<e1>") < text.index("</e1>") < text.index("<e2>") < text.index("</e2>"):
    raise DataError(f"{where}: malformed record: expected <e1>…</e1> before <e2>…</e2>")


def _semeval_records(path: Path) -> Iterator[dict]:
  with open(path, encoding="utf-8") as f:
    lines = [line.rstrip("\r\n") for line in f]
  number = 0
  while number < len(lines):
    if not lines[number].strip():
      number += 1
      continue
    where = f"{path}:{number + 1}"
    sentence_id, tab, quoted = lines[number].partition("\t")
    if not tab or not sentence_id.strip().isdigit() or len(quoted) < 2 or quoted[0] != '"' or quoted[-1] != '"':
      raise DataError(f'{where}: malformed record: expected id<TAB>"sentence"')
    text = quoted[1:-1]
    check_entity_tags(text, where)
    relation = lines[number + 1].strip() if number + 1 < len(lines) else ""
    if relation not in SEMEVAL_LABELS:
      raise DataError(f"{path}:{number + 2}: unknown relation {relation!r}; expected one of {list(SEMEVAL_LABELS)}")
    yield {"id": sentence_id.strip(), "text": text, "label": SEMEVAL_LABELS.index(relation)}
    number += 2
    if number < len(lines) and lines[number].startswith("Comment"):
      number += 1


# ----------------------------------------------------------------------- generation as chat turns
# The decoder tasks (summarisation, translation, dialogue, a user's own prompts) share the chat schema:
# the turns so far, oldest first, ending with the one the model answers, and the reference responses.

SAMSUM_FILES = {"train": "train.json", "dev": "validation.json", "test": "test.json"}


def _chat(idx: int, turns: Sequence[str], refs: Sequence[str], system: str = "") -> dict:
  return {"idx": idx, "system": system, "turns": list(turns), "refs": list(refs)}


def read_samsum(data_dir: str | Path, split: str) -> Iterator[dict]:
  """SAMSum (JSON Lines: id, dialogue, summary): the dialogue is the one turn, the summary the reference.
  Turn separators (\\r\\n in most dialogues, \\n in the rest) become \\n. A row with an empty dialogue (one
  in train, id 13828807) has nothing to summarise: skipped, and counted on stdout."""
  path = split_path(data_dir, SAMSUM_FILES, split)
  idx = skipped = 0
  for where, record in _jsonl_records(path):
    dialogue = str(_field(record, "dialogue", where)).replace("\r\n", "\n").strip()
    summary = _text(str(_field(record, "summary", where)), "summary", where).strip()
    if not dialogue:
      skipped += 1
      continue
    yield _chat(idx, [dialogue], [summary])
    idx += 1
  if skipped:
    print(f"{path}: skipped {skipped} rows with an empty dialogue")


MULTI30K_FILES = {"train": "train", "dev": "val", "test": "test_2016_flickr"}


def read_multi30k(data_dir: str | Path, split: str, source: str = "en", target: str = "de") -> Iterator[dict]:
  """Multi30k task 1: line i of `<split>.<source>` translated is line i of `<split>.<target>`."""
  stem = split_path(data_dir, {k: f"{v}.{source}" for k, v in MULTI30K_FILES.items()}, split)
  target_path = stem.with_suffix(f".{target}")
  if not target_path.is_file():
    raise DataError(f"{target_path}: file does not exist (split {split!r})")
  with open(stem, encoding="utf-8") as f_src, open(target_path, encoding="utf-8") as f_tgt:
    sources, targets = f_src.read().splitlines(), f_tgt.read().splitlines()
  if len(sources) != len(targets):
    raise DataError(f"{target_path}: {len(targets)} lines, but {stem} has {len(sources)}; they must align")
  for idx, (text, translation) in enumerate(zip(sources, targets)):
    where = f"{stem}:{idx + 1}"
    yield _chat(idx, [_text(text, source, where)], [_text(translation, target, f"{target_path}:{idx + 1}")])


DAILYDIALOG_FILES = {
  split: f"{folder}/dialogues_{folder}.txt"
  for split, folder in (("train", "train"), ("dev", "validation"), ("test", "test"))
}


def read_dailydialog(data_dir: str | Path, split: str) -> Iterator[dict]:
  """DailyDialog (one dialogue a line, turns ending in `__eou__`): every turn after the first is one
  example, answered from all the turns before it."""
  path = split_path(data_dir, DAILYDIALOG_FILES, split)
  idx = 0
  with open(path, encoding="utf-8") as f:
    for line_no, line in enumerate(f, start=1):
      turns = [t.strip() for t in line.split("__eou__")]
      if turns and not turns[-1]:
        turns.pop()  # the text after the last __eou__
      if any(not t for t in turns):
        raise DataError(f"{path}:{line_no}: empty turn in dialogue")
      for k in range(1, len(turns)):
        yield _chat(idx, turns[:k], [turns[k]])
        idx += 1


def read_instructions(
  path: str | Path, prompt_field: str = "prompt", response_field: str = "response", system_field: str = ""
) -> Iterator[dict]:
  """A user's prompt/response pairs from any .jsonl, .csv or .tsv with named fields; system_field
  (optional) names a per-row system prompt. A row without a field is an error naming file:line and field."""
  for idx, (where, record) in enumerate(_table_records(Path(path))):
    prompt = _text(str(_field(record, prompt_field, where)), prompt_field, where)
    response = _text(str(_field(record, response_field, where)), response_field, where)
    system = str(_field(record, system_field, where)) if system_field else ""
    yield _chat(idx, [prompt], [response], system)


def read_instructions_split(data_dir: str | Path, split: str, **fields) -> Iterator[dict]:
  """One split of a folder of `{split}.jsonl|csv|tsv` files (see read_instructions)."""
  return read_instructions(table_file(data_dir, split), **fields)

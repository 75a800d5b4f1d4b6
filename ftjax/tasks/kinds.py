"""One record per task kind: everything the rest of ftjax asks about a kind, in one place.

A `Kind` says how to build the head and the loss, how to featurise examples of its schema (raw.py), how to
score the model's outputs, which dev metric selects a run, what predict.py reads and writes per line, and
which transformers class an export targets. The loop, the scripts and the progress messages look a kind
up in `KINDS` and never branch on its name; a source (ftjax/data/sources.py) may override the featuriser
and the selection metric.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from ftjax import metrics
from ftjax.data import features as feats
from ftjax.data.raw import DataError
from ftjax.tasks import heads, losses


@dataclasses.dataclass(frozen=True)
class Kind:
  name: str
  head: Callable  # (num_labels, dropout_rate, pooling) → a Flax head module, or None (the backbone's logits)
  loss: Callable  # (head output, batch) → (loss sum, count); see losses.py
  featurize: Callable  # (examples, tokenizer, config) → features (features.py)
  score: Callable  # (TaskData, outputs per feature row, loss sum, count) → (metrics, text report or None)
  selection: tuple[str, str]  # (dev metric, "max" | "min") a run is selected on unless the source says otherwise
  predict_input: str  # what scripts/predict.py reads per line
  parse: Callable  # (tab-separated fields of one input line, line number, where) → an example dict
  decode: Callable  # (examples, features, outputs, label_names) → one JSON-able dict per example
  export_task: str | None  # ftjax.export.TASKS entry (the transformers class family); None: no such class
  regression: bool = False  # one output, not one per label
  host_outputs: bool = True  # False: scored by the loss alone, the eval step returns no per-row outputs
  generates: bool = False  # decoders: scored on decoded text too (generation.eval_examples)
  head_inputs: tuple[str, ...] = ()  # batch arrays the head reads besides the backbone outputs
  report_file: str = "report_{split}.txt"  # where the loop writes the score's text report, in the workdir


# --------------------------------------------------------------------------------- featurisers


def _classification_features(examples, tokenizer, config):
  return feats.classification(examples, tokenizer, config.max_length)


def _token_features(examples, tokenizer, config):
  return feats.token_classification(examples, tokenizer, config.max_length)


def _qa_features(examples, tokenizer, config):
  return feats.qa(examples, tokenizer, config.max_length, config.task.doc_stride)


def _generation_features(examples, tokenizer, config):
  return feats.generation(examples, tokenizer, config.max_length)


# ------------------------------------------------------------------------------------- scoring


def _score_classification(data, outputs, loss_sum, count):
  return metrics.classification(data.features["labels"], outputs.argmax(-1), max(len(data.label_names), 2)), None


def _score_regression(data, outputs, loss_sum, count):
  return metrics.regression(data.features["labels"], outputs[:, 0]), None


def _score_tokens(data, outputs, loss_sum, count):
  predicted = feats.word_predictions(data.features, outputs.argmax(-1), [len(e["tokens"]) for e in data.examples])
  names = data.label_names
  gold = [[names[t] for t in e["tags"]] for e in data.examples]
  return metrics.ner(gold, [[names[t] for t in p] for p in predicted])


def _score_qa(data, outputs, loss_sum, count):
  answers = feats.qa_answers(data.examples, data.features, outputs[0], outputs[1])
  return metrics.squad({e["id"]: list(e["answer_texts"]) for e in data.examples}, answers), None


def _score_lm(data, outputs, loss_sum, count):
  return metrics.perplexity(loss_sum, count), None


# -------------------------------------------------------------------------- predict.py input/output


def _parse_sequence(regression: bool):
  def parse(fields, number, where):
    if len(fields) > 2:
      raise DataError(f"{where}:{number}: expected text or text<TAB>text, got {len(fields)} fields")
    pair = {"text_pair": fields[1]} if len(fields) == 2 else {}
    return {"text": fields[0], **pair, "label": 0.0 if regression else 0}

  return parse


def _parse_tokens(fields, number, where):
  words = "\t".join(fields).split()
  return {"tokens": words, "tags": [0] * len(words)}


def _parse_qa(fields, number, where):
  if len(fields) != 2:
    raise DataError(f"{where}:{number}: expected question<TAB>context")
  return {"id": str(number), "question": fields[0], "context": fields[1], "answer_texts": [], "answer_starts": []}


def _parse_prompt(fields, number, where):
  return {"mr": "\t".join(fields), "refs": [""]}


def _softmax(outputs):
  probs = np.exp(outputs - outputs.max(-1, keepdims=True))
  return probs / probs.sum(-1, keepdims=True)


def _decode_labels(examples, features, outputs, names):
  return [
    {
      "label": names[int(p.argmax())],
      "score": round(float(p.max()), 4),
      "scores": {n: round(float(x), 4) for n, x in zip(names, p)},
    }
    for p in _softmax(outputs)
  ]


def _decode_regression(examples, features, outputs, names):
  return [{"score": round(float(v), 4)} for v in outputs[:, 0]]


def entities(words, tags):
  """IOB2 tags → spans {"type", "text", "start", "end"} (word indices, end exclusive)."""
  spans, current = [], None
  for i, tag in enumerate(list(tags) + ["O"]):
    if current and not (tag.startswith("I-") and tag[2:] == current["type"]):
      current["end"] = i
      current["text"] = " ".join(words[current["start"] : i])
      spans.append(current)
      current = None
    if tag.startswith("B-") or (tag.startswith("I-") and current is None):
      current = {"type": tag[2:], "start": i}
  return spans


def _decode_tokens(examples, features, outputs, names):
  predicted = feats.word_predictions(features, outputs.argmax(-1), [len(e["tokens"]) for e in examples])
  return [{"entities": entities(e["tokens"], [names[t] for t in tags])} for e, tags in zip(examples, predicted)]


def _decode_qa(examples, features, outputs, names):
  answers = feats.qa_answers(examples, features, outputs[0], outputs[1])
  return [{"answer": answers[e["id"]]} for e in examples]


def _no_decode(examples, features, outputs, names):
  raise ValueError("decoder outputs are generated text (ftjax.generation), not decoded head outputs")


# ------------------------------------------------------------------------------------------ kinds


def _sequence_head(num_labels, dropout_rate, pooling):
  return heads.SequenceClassificationHead(num_labels, dropout_rate, pooling=pooling)


KINDS: dict[str, Kind] = {
  "classification": Kind(
    "classification",
    _sequence_head,
    losses.classification,
    _classification_features,
    _score_classification,
    ("accuracy", "max"),
    "text, or text<TAB>text for pairs",
    _parse_sequence(regression=False),
    _decode_labels,
    "sequence_classification",
  ),
  "regression": Kind(
    "regression",
    lambda num_labels, dropout_rate, pooling: _sequence_head(1, dropout_rate, pooling),
    losses.regression,
    _classification_features,
    _score_regression,
    ("pearson", "max"),
    "text<TAB>text",
    _parse_sequence(regression=True),
    _decode_regression,
    "sequence_classification",
    regression=True,
  ),
  "token_classification": Kind(
    "token_classification",
    lambda num_labels, dropout_rate, pooling: heads.TokenClassificationHead(num_labels, dropout_rate),
    losses.token_classification,
    _token_features,
    _score_tokens,
    ("f1", "max"),
    "a sentence",
    _parse_tokens,
    _decode_tokens,
    "token_classification",
    report_file="ner_report_{split}.txt",
  ),
  "question_answering": Kind(
    "question_answering",
    lambda num_labels, dropout_rate, pooling: heads.QuestionAnsweringHead(),
    losses.question_answering,
    _qa_features,
    _score_qa,
    ("f1", "max"),
    "question<TAB>context",
    _parse_qa,
    _decode_qa,
    "question_answering",
  ),
  "causal_lm": Kind(
    "causal_lm",
    lambda num_labels, dropout_rate, pooling: None,
    losses.causal_lm,
    _generation_features,
    _score_lm,
    ("perplexity", "min"),
    "a prompt",
    _parse_prompt,
    _no_decode,
    "causal_lm",
    host_outputs=False,
    generates=True,
  ),
}


def kind(name: str) -> Kind:
  if name not in KINDS:
    raise ValueError(f"unknown task kind {name!r}; known: {tuple(KINDS)}")
  return KINDS[name]

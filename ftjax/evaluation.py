"""Evaluation: a split through the eval step, its scores, decoded text, the selection metric, metrics.jsonl.

Shared by the training loop and scripts/evaluate.py and predict.py; nothing here names a task or a metric:
the kind's record (ftjax/tasks/kinds.py) scores, the source's record (ftjax/data/sources.py) overrides.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import jax
import numpy as np

from ftjax import progress
from ftjax.errors import InputError
from ftjax.data import pipeline, sources
from ftjax.tasks import datasets, kinds


def selection(config, kind: str) -> tuple[str, str]:
  """(dev metric, "max" | "min") a run is selected on: config's early_stopping.metric, else the source's
  override (CoLA: matthews), else the kind's."""
  metric, mode = kinds.kind(kind).selection
  metric = sources.source(config.task.source).selection_metric or metric
  if config.early_stopping.metric:
    metric = config.early_stopping.metric
    mode = "min" if metric in ("loss", "perplexity") else "max"
  return metric, mode


def append_metrics(workdir: Path, step: int, split: str, values: dict, writer=None) -> None:
  """One line of workdir/metrics.jsonl (and the same scalars to tensorboard when `writer` is given)."""
  if jax.process_index() != 0:  # several processes (multi-host): process 0 alone writes the run's files
    return
  record = {"step": step, "split": split, **{k: float(v) for k, v in values.items()}}
  with open(workdir / "metrics.jsonl", "a") as f:
    f.write(json.dumps(record) + "\n")
  if writer is not None:
    for k, v in values.items():
      writer.add_scalar(f"{split}/{k}", float(v), step)


def run_eval(par, eval_step, trainable, frozen, features: dict, batch_size: int, desc: str | None = None):
  """(head outputs per feature row, loss sum, count): every row once, in feature order. Batches are
  padded to different length buckets, so per-token outputs are padded to the widest bucket. With `desc`,
  a terminal shows a bar over the batches."""
  parts, loss_sum, count = None, 0.0, 0.0
  batches = pipeline.prefetch(pipeline.eval_batches(features, batch_size, jax.process_index(), jax.process_count()))
  if desc:
    batches = progress.batches(batches, math.ceil(len(features["input_ids"]) / batch_size), desc)
  for batch in batches:
    out, sums = eval_step(trainable, frozen, par.put_batch(batch))
    out = jax.tree.map(par.to_host, out)
    loss_sum += float(np.sum(par.to_host(sums["loss_sum"])))
    count += float(np.sum(par.to_host(sums["count"])))
    rows = par.to_host(batch["example_index"])  # every process's rows, as `out` holds
    keep = rows >= 0
    parts = jax.tree.map(lambda x: [], out) if parts is None else parts
    parts = jax.tree.map(
      lambda acc, x: acc + [(rows[keep], x[keep])], parts, out, is_leaf=lambda x: isinstance(x, list)
    )
  if parts is None:  # the step returns no per-row outputs (language models: the loss is the score)
    return None, loss_sum, count
  num_rows = len(features["input_ids"])

  def assemble(chunks):
    first = chunks[0][1]
    width = (max(x.shape[1] for _, x in chunks),) if first.ndim > 1 else ()
    full = np.zeros((num_rows,) + width + first.shape[2:], first.dtype)
    for rows, x in chunks:
      full[(rows,) + ((slice(0, x.shape[1]),) if width else ())] = x
    return full

  return jax.tree.map(assemble, parts, is_leaf=lambda x: isinstance(x, list)), loss_sum, count


def evaluate_split(par, eval_step, trainable, frozen, data: datasets.TaskData, batch_size: int):
  """(metrics, report) of one split."""
  outputs, loss_sum, count = run_eval(
    par, eval_step, trainable, frozen, data.features, batch_size, desc=f"eval {data.split}"
  )
  return data.score(outputs, loss_sum, count)


def check_generation(config) -> None:
  """Refuses bad `generation.*` settings before a run trains, rather than after (errors.InputError)."""
  from ftjax import generation

  g = config.generation
  try:
    generation.check_settings(g.method, g.max_new_tokens, num_beams=g.num_beams, **_sampling(g))
  except ValueError as e:
    raise InputError(f"config key generation.{e}") from None


def _sampling(g) -> dict:
  """The sampling settings of `config.generation`; runs saved before these keys existed have the defaults."""
  return {"temperature": g.get("temperature", 1.0), "top_k": g.get("top_k", 0), "top_p": g.get("top_p", 1.0)}


def decode(config, exp, tree: dict, prompts: dict, rng=None) -> list[str]:
  """The texts `exp.model` (parameters `tree`) writes after each of `prompts` (input_ids, attention_mask),
  with the config's decoding settings."""
  from ftjax import generation

  g, tok = config.generation, exp.tokenizer
  variables = {"params": tree["backbone"], **{k: v for k, v in tree.items() if k not in ("backbone", "head")}}
  out = generation.generate(
    exp.model,
    tree["backbone"],
    prompts["input_ids"],
    prompts["attention_mask"],
    max_new_tokens=g.max_new_tokens,
    method=g.method,
    **_sampling(g),
    num_beams=g.num_beams,
    length_penalty=g.length_penalty,
    no_repeat_ngram_size=g.no_repeat_ngram_size,
    eos_token_id=tok.eos_token_id,
    pad_token_id=tok.pad_token_id,
    rng=rng,
    variables=variables,
  )
  new_tokens = np.asarray(out)[:, prompts["input_ids"].shape[1] :]
  return [tok.decode(row, skip_special_tokens=True).strip() for row in new_tokens]


def evaluate_generation(config, exp, tree: dict, split: str, workdir: Path) -> dict:
  """Decodes the first `generation.eval_examples` examples of `split` with the config's decoding
  settings (prompts: the source's, else features.generation_prompts), scores them against all their
  references with the source's generation metric (E2E: BLEU, NIST, METEOR, ROUGE-L, CIDEr; SAMSum:
  ROUGE-1/2/L; …; else BLEU and ROUGE-L), and writes the outputs, one a line, to
  workdir/generations_<split>.txt."""
  from ftjax.data import features as feats

  g = config.generation
  src = sources.source(config.task.source)
  make_prompts = src.prompts or (lambda ex, tok, config: feats.generation_prompts(ex, tok, config.max_length))
  examples = list(datasets.examples(config, split))[: g.eval_examples]
  tok = exp.tokenizer
  hypotheses = []
  starts = range(0, len(examples), g.batch_size)
  for start in progress.batches(starts, len(starts), f"generate {split}"):
    prompts = make_prompts(examples[start : start + g.batch_size], tok, config)
    # One key per batch: the same seed gives the same samples, and batches do not share their draws.
    hypotheses += decode(config, exp, tree, prompts, rng=jax.random.fold_in(jax.random.key(config.seed), start))
  references = [list(e["refs"]) for e in examples]
  if jax.process_index() == 0:
    (workdir / f"generations_{split}.txt").write_text("".join(h.replace("\n", " ") + "\n" for h in hypotheses))
  return src.generation_metric(references, hypotheses)

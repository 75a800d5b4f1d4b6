"""Each task's pipeline on a few examples: config → datasets.load (TFDS from local files) → one training
step → evaluation (evaluation.run_eval / evaluation.evaluate_split) → the task's metrics, with the contract's names:

  classification         loss, accuracy, f1, matthews
  regression             loss, pearson, spearman
  token classification   loss, precision, recall, f1 (entity level)
  question answering     loss, exact_match, f1
  causal LM              loss, perplexity

Tiny random models (a BERT with MiniLM's tokenizer; a GPT-2 with a small BPE trained here): the checks are
about shapes, names and plumbing, not about accuracy.
"""

import json
import math

import jax
import numpy as np
import pytest

from configs import base, conll2003, glue, squad
from ftjax import evaluation, experiment, optim, parallel, step as steps, trainability
from ftjax.data import pipeline, raw
from ftjax.tasks import datasets

from conftest import SHARED_DATA, glue_folder, needs_data, tiny_config


@pytest.fixture(scope="module", autouse=True)
def _fast(fast_compiles):
  yield


def run_task(config, split="dev", limit=16):
  """(experiment, data, head outputs, metrics, report) after one training step on the first batch."""
  exp = experiment.build(config)
  data = datasets.load(config, exp.tokenizer, split, limit)
  trainable, frozen = trainability.partition(exp.tree, exp.rules)
  tx, _ = optim.make_optimizer(config, trainable, 2, exp.num_layers)
  par = parallel.make_parallel("none")
  train_step = par.compile_train_step(
    lambda axis_name: steps.make_train_step(
      exp.model,
      exp.task,
      tx,
      adversarial_config=config.adversarial,
      grad_accum_steps=1,
      dropout=True,
      axis_name=axis_name,
    )
  )
  state = par.put_state(steps.create_state(trainable, frozen, tx, config.seed))
  batch = next(pipeline.train_batches(data.features, min(config.batch_size, data.num_rows), config.seed, 0))
  state, metrics = train_step(state, par.put_batch(batch))
  metrics = jax.device_get(metrics)
  assert not metrics["nonfinite"] and np.isfinite(metrics["loss_sum"]) and metrics["count"] > 0
  eval_step = par.compile_eval_step(steps.make_eval_step(exp.model, exp.task))
  outputs, loss_sum, count = evaluation.run_eval(par, eval_step, state.trainable, state.frozen, data.features, 8)
  values, report = evaluation.evaluate_split(par, eval_step, state.trainable, state.frozen, data, 8)
  assert values == data.score(outputs, loss_sum, count)[0]
  assert values["loss"] == pytest.approx(loss_sum / count)
  return exp, data, outputs, values, report


def test_classification(tiny_bert, tfds_dir, rte_dir):
  config = tiny_config(glue.get_config("rte"), tiny_bert, tfds_dir, data_dir=str(rte_dir), method="lora")
  exp, data, outputs, values, _ = run_task(config)
  assert exp.task.kind == "classification" and exp.task.label_names == ("entailment", "not_entailment")
  assert data.num_rows == 16 and data.features["labels"].shape == (16,)
  assert outputs.shape == (16, 2)
  assert set(values) == {"loss", "accuracy", "f1", "matthews"}
  assert evaluation.selection(config, "classification") == ("accuracy", "max")
  assert evaluation.selection(glue.get_config("cola"), "classification") == ("matthews", "max")


def test_regression(tiny_bert, tfds_dir, stsb_dir):
  config = tiny_config(glue.get_config("stsb"), tiny_bert, tfds_dir, data_dir=str(stsb_dir))
  exp, data, outputs, values, _ = run_task(config)
  assert exp.task.kind == "regression" and exp.task.num_labels == 1
  assert data.features["labels"].dtype == np.float32 and outputs.shape == (16, 1)
  assert set(values) == {"loss", "pearson", "spearman"}
  assert evaluation.selection(config, "regression") == ("pearson", "max")


def test_token_classification(tiny_bert, tfds_dir, conll_dir):
  config = tiny_config(conll2003.get_config("lora"), tiny_bert, tfds_dir, data_dir=str(conll_dir))
  exp, data, outputs, values, report = run_task(config, "test", limit=8)
  assert exp.task.label_names == raw.CONLL2003_TAGS
  rows, width = data.features["input_ids"].shape
  assert outputs.shape[0] == rows == 8 and outputs.shape[2] == len(raw.CONLL2003_TAGS) and outputs.shape[1] <= width
  assert set(values) == {"loss", "precision", "recall", "f1"}
  assert "precision" in report and "f1-score" in report
  assert evaluation.selection(config, "token_classification") == ("f1", "max")


PASSAGES = [  # (context, [(id, question, [answers])]); offsets are found below, as annotators' tools do
  (
    "The Eiffel Tower is in Paris. It was completed in 1889 for the World's Fair, and for forty years it was "
    "the tallest structure in the world, until the Chrysler Building in New York overtook it in 1930.",
    [
      ("q1", "Where is the Eiffel Tower?", ["Paris"]),
      ("q2", "What overtook the tower in 1930?", ["the Chrysler Building", "Chrysler Building"]),
    ],
  ),
  (
    "Water boils at 100 degrees Celsius at sea level.",
    [("q3", "At what temperature does water boil?", ["100 degrees Celsius"])],
  ),
]


@pytest.fixture(scope="module")
def squad_dir(tmp_path_factory):
  paragraphs = [
    {
      "context": context,
      "qas": [
        {"id": id_, "question": question, "answers": [{"text": a, "answer_start": context.index(a)} for a in answers]}
        for id_, question, answers in qas
      ],
    }
    for context, qas in PASSAGES
  ]
  folder = tmp_path_factory.mktemp("squad")
  for name in ("train-v1.1.json", "dev-v1.1.json"):
    (folder / name).write_text(json.dumps({"version": "1.1", "data": [{"title": "Tests", "paragraphs": paragraphs}]}))
  return folder


def test_question_answering(tiny_bert, tfds_dir, squad_dir):
  # 48 tokens with a 16-token stride: the long context becomes several windows
  config = tiny_config(
    squad.get_config(), tiny_bert, tfds_dir, data_dir=str(squad_dir), max_length=48, **{"task.doc_stride": 16}
  )
  exp, data, outputs, values, _ = run_task(config, limit=0)
  rows, width = data.features["input_ids"].shape
  assert len(data.examples) == 3 and rows > 3
  start, end = outputs
  assert start.shape == end.shape and start.shape[0] == rows and start.shape[1] <= width
  assert set(values) == {"loss", "exact_match", "f1"}
  assert evaluation.selection(config, "question_answering") == ("f1", "max")
  # Logits that point at the gold span of every window that holds it score exact match 100.
  gold_start, gold_end = data.features["start_positions"], data.features["end_positions"]
  perfect_start = np.full((rows, width), -10.0, np.float32)
  perfect_end = np.full((rows, width), -10.0, np.float32)
  perfect_start[np.arange(rows), gold_start] = 10.0
  perfect_end[np.arange(rows), gold_end] = 10.0
  scores, _ = data.score((perfect_start, perfect_end), 0.0, 1.0)
  assert scores["exact_match"] == 100.0 and scores["f1"] == 100.0


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory):
  """A random 2-layer GPT-2 with a 300-token byte-level BPE trained on a few WikiText-2 lines."""
  needs_data("wikitext2")
  import tokenizers
  import transformers

  lines = (SHARED_DATA / "wikitext2" / "valid.txt").read_text(encoding="utf-8").splitlines(keepends=True)[:40]
  tok = tokenizers.Tokenizer(tokenizers.models.BPE())
  tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = tokenizers.decoders.ByteLevel()
  trainer = tokenizers.trainers.BpeTrainer(
    vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet()
  )
  tok.train_from_iterator(lines, trainer)
  folder = tmp_path_factory.mktemp("tiny_gpt2")
  transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>").save_pretrained(folder)
  config = transformers.GPT2Config(
    vocab_size=320, n_positions=64, n_embd=32, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0
  )
  transformers.GPT2LMHeadModel(config).save_pretrained(folder)
  data = tmp_path_factory.mktemp("wikitext2")
  (data / "valid.txt").write_text("".join(lines), encoding="utf-8")
  return folder, data


def test_causal_lm(tiny_gpt2, tfds_dir):
  model, data_dir = tiny_gpt2
  config = base.get_config()
  config.task.source = "wikitext2"
  config = tiny_config(config, model, tfds_dir, data_dir=str(data_dir), max_length=32)
  exp, data, outputs, values, _ = run_task(config, limit=0)
  assert exp.task.kind == "causal_lm" and exp.model.is_decoder
  assert data.features["input_ids"].shape[1] == 32
  assert outputs is None  # scored by the loss alone: the logits (rows × 32 × 320) stay on the device
  assert set(values) == {"loss", "perplexity"}
  assert values["perplexity"] == pytest.approx(math.exp(values["loss"]), rel=1e-5)
  assert 50 < values["perplexity"] < 2000  # a random model over a 300-token vocabulary
  assert evaluation.selection(config, "causal_lm") == ("perplexity", "min")


def test_head_pooling_reads_cls_or_the_mean_of_real_tokens_only():
  from ftjax.models.outputs import EncoderOutput
  from ftjax.tasks.heads import pool

  hidden = np.random.default_rng(0).normal(size=(2, 5, 4)).astype(np.float32)
  mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
  out = EncoderOutput(last_hidden_state=hidden, pooler_output=np.ones((2, 4), np.float32))
  np.testing.assert_allclose(pool(out, mask, "mean")[0], hidden[0, :3].mean(0), rtol=1e-6)
  np.testing.assert_allclose(pool(out, mask, "mean")[1], hidden[1].mean(0), rtol=1e-6)
  np.testing.assert_array_equal(pool(out, mask, "cls"), hidden[:, 0])
  np.testing.assert_array_equal(pool(out, mask, "pooler"), out.pooler_output)
  with pytest.raises(ValueError, match="pooling 'max'"):
    pool(out, mask, "max")


def test_mean_pooling_suits_the_sentence_embedding_backbone(tfds_dir, tmp_path):
  """all-MiniLM-L6-v2 was trained for mean pooling, its pooler never was: a linear probe on real SST-2
  separates the classes markedly better from the mean (measured: 2,000 sentences, 75.6 vs 67.0 dev)."""
  needs_data("sst2")
  from sklearn.linear_model import LogisticRegression
  from ftjax.tasks.heads import pool

  config = glue.get_config("sst2")
  config.data_dir = str(glue_folder(tmp_path, "sst2", rows=400))  # the first 400 rows of train and of dev
  config.tfds_dir = str(tfds_dir)
  config.max_length = 64
  exp = experiment.build(config)
  apply = jax.jit(lambda ids, mask: exp.model.apply({"params": exp.tree["backbone"]}, ids, attention_mask=mask))

  def features(split, n):
    data = datasets.load(config, exp.tokenizer, split, n)
    f = data.features
    out = apply(f["input_ids"], f["attention_mask"])
    return {p: np.asarray(pool(out, f["attention_mask"], p)) for p in ("pooler", "mean")}, f["labels"]

  (train, y_train), (dev, y_dev) = features("train", 400), features("dev", 300)
  acc = {p: LogisticRegression(max_iter=3000).fit(train[p], y_train).score(dev[p], y_dev) for p in train}
  assert acc["mean"] > acc["pooler"] + 0.03, acc

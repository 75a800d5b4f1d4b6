"""Text generation with a decoder: greedy, sampling and beam search over a key/value cache.

A decoder gives, for a prefix x_1…x_t, a distribution p(x_{t+1} | x_≤t) over the vocabulary. Generation
chooses the continuation one token at a time:

- **Greedy** takes argmax p at each step. Deterministic, fast, and prone to loops on long outputs.
- **Sampling** draws from p. Temperature τ divides the logits first (τ < 1 sharpens, τ > 1 flattens);
  top-k keeps only the k likeliest tokens; top-p (nucleus, Holtzman et al. 2020) keeps the smallest set
  of likeliest tokens whose probability reaches p. They apply in that order, as in Hugging Face.
  The same `rng` gives the same samples (step t uses `fold_in(rng, t)`).
- **Beam search** keeps the `num_beams` likeliest partial sequences by summed log-probability. Each
  step scores every (beam, token) extension and keeps the best; an extension ending in EOS leaves the
  beam and joins the finished hypotheses, scored sum_logprobs / generated_length ** length_penalty
  (length_penalty > 0 favours longer outputs, < 0 shorter ones). Search stops when no running beam can
  beat the worst of `num_beams` finished hypotheses (Hugging Face's `early_stopping=False` heuristic,
  which judges the running beams at their current length) or at `max_new_tokens`, when the best
  running beams are finished as they stand. We follow the rules of transformers' `_beam_search`
  step for step, so on the same logits the sequences are the same.
- **No-repeat n-gram blocking** (any method) forbids a token that would complete an n-gram already
  present in the sequence (prompt included), a cheap cure for repetition loops. Unlike Hugging Face,
  n-grams that touch left padding are not counted.

Mechanics. Prompts are LEFT-padded (B, T) with an attention mask; a real token's position is the number
of real tokens before it, as transformers' `generate` computes it. The prompt is processed in one call
that fills the cache (`model.init_cache(batch, length)`, slots [soft prompt][prompt][new tokens]); then
each step feeds one token per sequence. Prefill and the whole decode loop (`lax.while_loop`, which exits
once every sequence has finished) are one jitted function, built once per (model, settings) and compiled
by jit once per input shape. Finished sequences are filled with `pad_token_id` up to the full length.

The decoder interface (GPT-2 today, Llama-family later): `model.apply(variables, ids, attention_mask=,
position_ids=, cache=, cache_index=, prepend_prompt=)` returning `.logits` and `.cache`, whose leaves
have the batch as leading axis (beam search reorders them); `model.init_cache(batch, length)`;
`model.peft.prompt_length` soft prompt tokens, which the caller lays out in the cache (see gpt2.py).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

METHODS = ("greedy", "sample", "beam")

# Hugging Face's "minus infinity that still adds": a beam score that can never win but stays finite.
_NEVER = -1.0e9


@dataclasses.dataclass(frozen=True)
class Settings:
  """Everything that changes the traced program: one compilation per distinct value (and shapes)."""

  method: str
  max_new_tokens: int
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  num_beams: int = 4
  length_penalty: float = 1.0
  no_repeat_ngram_size: int = 0
  eos_token_ids: tuple[int, ...] = ()
  pad_token_id: int = 0


def generate(
  model,
  params,
  input_ids,
  attention_mask=None,
  *,
  max_new_tokens: int,
  method: str = "greedy",
  temperature: float = 1.0,
  top_k: int = 0,
  top_p: float = 1.0,
  num_beams: int = 4,
  length_penalty: float = 1.0,
  no_repeat_ngram_size: int = 0,
  eos_token_id=None,
  pad_token_id: int | None = None,
  rng=None,
  variables: dict | None = None,
) -> jax.Array:
  """Prompt + `max_new_tokens` new token ids, int32 (B, T + max_new_tokens); after EOS, `pad_token_id`.

  `input_ids` (B, T) are left-padded where `attention_mask` (B, T) is 0. `eos_token_id` is an int, a
  sequence of ints, or None (never stop early); `pad_token_id` defaults to the (first) EOS id, else 0.
  `variables` replaces `{"params": params}` when a PEFT method adds collections ("lora", "prompt"…).
  `rng` (a JAX key) is required by method="sample".
  """
  check_settings(method, max_new_tokens, temperature, top_k, top_p, num_beams)
  if method == "sample" and rng is None:
    raise ValueError("method='sample' needs rng=jax.random.key(seed): sampling is reproducible only from a key")
  eos = () if eos_token_id is None else tuple(int(e) for e in np.atleast_1d(eos_token_id))
  if pad_token_id is None:
    pad_token_id = eos[0] if eos else 0
  # Knobs the method ignores keep their defaults, so that they cannot cause a recompilation.
  sampling = method == "sample"
  beam = method == "beam"
  settings = Settings(
    method,
    int(max_new_tokens),
    float(temperature) if sampling else 1.0,
    int(top_k) if sampling else 0,
    float(top_p) if sampling else 1.0,
    int(num_beams) if beam else 4,
    float(length_penalty) if beam else 1.0,
    int(no_repeat_ngram_size),
    eos,
    int(pad_token_id),
  )
  input_ids = jnp.asarray(input_ids, jnp.int32)
  attention_mask = jnp.ones_like(input_ids) if attention_mask is None else jnp.asarray(attention_mask, jnp.int32)
  if attention_mask.shape != input_ids.shape:
    raise ValueError(f"attention_mask shape {attention_mask.shape} differs from input_ids shape {input_ids.shape}")
  if variables is None:
    variables = {"params": params}
  return compiled_generate(model, settings)(variables, input_ids, attention_mask, rng)


def check_settings(
  method: str, max_new_tokens: int, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, num_beams: int = 4
) -> None:
  """Raises ValueError naming the first setting `generate` would refuse (callers check before a long run)."""
  if method not in METHODS:
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")
  if max_new_tokens < 1:
    raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
  if method == "sample" and temperature <= 0:
    raise ValueError(f"temperature must be positive, got {temperature} (use method='greedy' for argmax)")
  if top_k < 0:
    raise ValueError(f"top_k must be 0 (off) or positive, got {top_k}")
  if not 0.0 < top_p <= 1.0:
    raise ValueError(f"top_p must lie in (0, 1], got {top_p}")
  if method == "beam" and num_beams < 1:
    raise ValueError(f"num_beams must be positive, got {num_beams}")


@functools.lru_cache(maxsize=32)
def compiled_generate(model, settings: Settings):
  """The jitted `(variables, input_ids, attention_mask, rng) -> tokens` for one model and settings.

  Models (Flax modules with frozen-dataclass configs) and settings are hashable, so this cache returns
  the same jitted function for the same pair, and jit then compiles it once per input shape.
  """
  decode = _beam_search if settings.method == "beam" else _sample_or_greedy
  return jax.jit(functools.partial(decode, model, settings))


# --- shared pieces -------------------------------------------------------------------------------------


def _prefill(model, variables, input_ids, attention_mask, batch_repeats: int, max_new_tokens: int):
  """Runs the prompt through the model into a fresh cache.

  Returns (last-position logits, cache, full cache mask, position of the first new token, first new
  slot), with the batch repeated `batch_repeats` times (beams) after the prompt pass.
  """
  batch, prompt_len = input_ids.shape
  n_soft = model.peft.prompt_length
  # Soft-prompt slots hold real (learned) tokens; new-token slots will hold real tokens: mask 1.
  # Causal attention keeps queries from seeing slots not yet written.
  prompt_mask = jnp.concatenate([jnp.ones((batch, n_soft), jnp.int32), attention_mask], axis=1)
  positions = jnp.maximum(jnp.cumsum(prompt_mask, axis=1) - 1, 0)
  mask = jnp.concatenate([prompt_mask, jnp.ones((batch, max_new_tokens), jnp.int32)], axis=1)
  cache = model.init_cache(batch, mask.shape[1])
  out = model.apply(variables, input_ids, attention_mask=mask, position_ids=positions, cache=cache, cache_index=0)
  logits, cache = out.logits[:, -1].astype(jnp.float32), out.cache
  next_position = prompt_mask.sum(axis=1)  # real tokens so far: the next token's position
  if batch_repeats > 1:
    repeat = lambda x: jnp.repeat(x, batch_repeats, axis=0)
    logits, cache, mask, next_position = (
      repeat(logits),
      jax.tree.map(repeat, cache),
      repeat(mask),
      repeat(next_position),
    )
  return logits, cache, mask, next_position, n_soft + prompt_len


def _step(model, variables, tokens, mask, positions, cache, slot):
  """Feeds one token per sequence (B,) at cache `slot`; returns next-token logits and the cache."""
  out = model.apply(
    variables,
    tokens[:, None],
    attention_mask=mask,
    position_ids=positions[:, None],
    cache=cache,
    cache_index=slot,
    prepend_prompt=False,
  )
  return out.logits[:, -1].astype(jnp.float32), out.cache


def ban_repeated_ngrams(scores: jax.Array, tokens: jax.Array, valid: jax.Array, length, n: int) -> jax.Array:
  """Sets to -inf every token that would complete an n-gram already in tokens[:, :length].

  tokens (B, L) is the sequence buffer, valid (B, L) marks real tokens (not padding); `length` may be
  traced. An n-gram counts only if all its tokens are real, and so must the n - 1 tokens it continues.
  """
  batch, buffer = tokens.shape
  starts = buffer - n + 1
  if starts <= 0:
    return scores
  context = jax.lax.dynamic_slice_in_dim(tokens, length - (n - 1), n - 1, axis=1)
  context_valid = jax.lax.dynamic_slice_in_dim(valid, length - (n - 1), n - 1, axis=1).all(axis=1)
  # n-gram j is tokens[j : j + n]; it is complete once j + n <= length.
  match = (jnp.arange(starts) + n <= length)[None, :] & context_valid[:, None] & (length >= n - 1)
  for k in range(n):
    match &= valid[:, k : k + starts]
    if k < n - 1:
      match &= tokens[:, k : k + starts] == context[:, k : k + 1]
  banned = jnp.zeros(scores.shape, jnp.int32).at[jnp.arange(batch)[:, None], tokens[:, n - 1 :]].add(match)
  return jnp.where(banned > 0, -jnp.inf, scores)


def _warp(logits: jax.Array, s: Settings) -> jax.Array:
  """Temperature, then top-k, then top-p, as Hugging Face's sampling warpers (each keeps ≥ 1 token)."""
  logits = logits / s.temperature if s.temperature != 1.0 else logits
  if s.top_k > 0 and s.top_k < logits.shape[-1]:
    kth = jax.lax.top_k(logits, s.top_k)[0][:, -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if s.top_p < 1.0:
    order = jnp.argsort(logits, axis=-1)  # ascending
    ascending = jnp.take_along_axis(logits, order, axis=-1)
    # Drop the unlikely tail whose total mass is ≤ 1 - p; the likeliest token always stays.
    drop = (jnp.cumsum(jax.nn.softmax(ascending, axis=-1), axis=-1) <= 1.0 - s.top_p).at[:, -1].set(False)
    drop = jnp.zeros_like(drop).at[jnp.arange(logits.shape[0])[:, None], order].set(drop)
    logits = jnp.where(drop, -jnp.inf, logits)
  return logits


# --- greedy and sampling -------------------------------------------------------------------------------


def _sample_or_greedy(model, s: Settings, variables, input_ids, attention_mask, rng):
  batch, prompt_len = input_ids.shape
  logits, cache, mask, next_position, first_slot = _prefill(
    model, variables, input_ids, attention_mask, 1, s.max_new_tokens
  )
  tokens = jnp.concatenate([input_ids, jnp.full((batch, s.max_new_tokens), s.pad_token_id, jnp.int32)], axis=1)
  valid = jnp.concatenate([attention_mask > 0, jnp.ones((batch, s.max_new_tokens), bool)], axis=1)
  eos = jnp.asarray(s.eos_token_ids, jnp.int32)

  def choose(logits, tokens, t):
    if s.no_repeat_ngram_size:
      logits = ban_repeated_ngrams(logits, tokens, valid, prompt_len + t, s.no_repeat_ngram_size)
    if s.method == "greedy":
      return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    return jax.random.categorical(jax.random.fold_in(rng, t), _warp(logits, s), axis=-1).astype(jnp.int32)

  def body(state):
    t, tokens, finished, logits, cache = state
    token = jnp.where(finished, s.pad_token_id, choose(logits, tokens, t))
    tokens = tokens.at[:, prompt_len + t].set(token)
    finished = finished | jnp.isin(token, eos)
    # The last step's forward pass is wasted; skipping it would cost a lax.cond around the model.
    logits, cache = _step(model, variables, token, mask, next_position + t, cache, first_slot + t)
    return t + 1, tokens, finished, logits, cache

  def running(state):
    t, _, finished, _, _ = state
    return (t < s.max_new_tokens) & ~finished.all()

  state = (jnp.int32(0), tokens, jnp.zeros((batch,), bool), logits, cache)
  return jax.lax.while_loop(running, body, state)[1]


# --- beam search ---------------------------------------------------------------------------------------


def _beam_search(model, s: Settings, variables, input_ids, attention_mask, rng):
  """Hugging Face's vectorised beam search (transformers `GenerationMixin._beam_search`), rule for rule:

  per batch item, K running beams and K finished hypotheses. Each step takes the top 2K (beam, token)
  extensions by summed log-prob (2K so that K survive even if K end in EOS). Those ending in EOS, or all
  of them at the last step, become finished candidates if they rank in the top K; the rest, best first,
  are the next running beams. Finished candidates are scored with the length penalty and merged into
  the K best finished. The -1e9 offsets and their order reproduce Hugging Face's float32 arithmetic.
  """
  del rng
  batch, prompt_len = input_ids.shape
  k, steps = s.num_beams, s.max_new_tokens
  logits, cache, mask, next_position, first_slot = _prefill(model, variables, input_ids, attention_mask, k, steps)
  vocab = logits.shape[-1]
  if vocab < 2 * k:
    raise ValueError(f"beam search with {k} beams needs a vocabulary of at least {2 * k} tokens, got {vocab}")
  length = prompt_len + steps
  prompt = jnp.concatenate([input_ids, jnp.full((batch, steps), s.pad_token_id, jnp.int32)], axis=1)
  running_seqs = jnp.broadcast_to(prompt[:, None], (batch, k, length))
  valid = jnp.repeat(jnp.concatenate([attention_mask > 0, jnp.ones((batch, steps), bool)], axis=1), k, axis=0)
  eos = jnp.asarray(s.eos_token_ids, jnp.int32)
  keep = max(2, 1 + len(s.eos_token_ids)) * k
  in_top_k = jnp.arange(keep) < k
  # generated_length ** length_penalty for generated lengths 1…steps, rounded to float32 once, as torch
  # does with the Python float it divides by.
  penalty = jnp.asarray(np.arange(1, steps + 1, dtype=np.float64) ** s.length_penalty, jnp.float32)
  gather = lambda x, idx: jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)

  def body(state):
    t, running_seqs, running_scores, seqs, scores, finished, improvable, logits, cache = state
    position = prompt_len + t
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    if s.no_repeat_ngram_size:
      log_probs = ban_repeated_ngrams(
        log_probs, running_seqs.reshape(batch * k, length), valid, position, s.no_repeat_ngram_size
      )
    log_probs = (log_probs.reshape(batch, k, vocab) + running_scores[:, :, None]).reshape(batch, k * vocab)
    top_scores, top_index = jax.lax.top_k(log_probs, keep)
    parent, token = top_index // vocab, top_index % vocab
    top_seqs = gather(running_seqs, parent).at[:, :, position].set(token)
    ends = jnp.isin(token, eos) | (t == steps - 1)  # EOS, or the length limit for everyone

    # Running beams: the best K extensions that did not end.
    running_candidates = top_scores + ends.astype(jnp.float32) * _NEVER
    best = jax.lax.top_k(running_candidates, k)[1]
    running_seqs, running_scores, parent = (
      gather(top_seqs, best),
      gather(running_candidates, best),
      gather(parent, best),
    )

    # Finished hypotheses: top-K extensions that ended, length-penalised, merged into the K best so far.
    just_finished = ends & in_top_k[None]
    candidate_scores = top_scores / penalty[t]
    candidate_scores = candidate_scores + (~improvable).astype(jnp.float32)[:, None] * _NEVER
    candidate_scores = candidate_scores + (~just_finished).astype(jnp.float32) * _NEVER
    merged_scores = jnp.concatenate([scores, candidate_scores], axis=1)
    best = jax.lax.top_k(merged_scores, k)[1]
    seqs = gather(jnp.concatenate([seqs, top_seqs], axis=1), best)
    scores = gather(merged_scores, best)
    finished = gather(jnp.concatenate([finished, just_finished], axis=1), best)

    # Can a running beam still beat the worst finished one? (judged at its current length)
    worst_finished = jnp.where(finished, scores.min(axis=1, keepdims=True), _NEVER)
    improvable = improvable & jnp.any(running_scores[:, :1] / penalty[t] > worst_finished, axis=1)

    flat_parent = (jnp.arange(batch)[:, None] * k + parent).reshape(-1)
    cache = jax.tree.map(lambda x: x[flat_parent], cache)
    token = running_seqs[:, :, position].reshape(-1)
    logits, cache = _step(model, variables, token, mask, next_position + t, cache, first_slot + t)
    return t + 1, running_seqs, running_scores, seqs, scores, finished, improvable, logits, cache

  def running(state):
    t, improvable = state[0], state[6]
    return (t < steps) & improvable.any()

  # Only the first beam starts live, so the first step does not pick the same extension K times.
  running_scores = jnp.zeros((batch, k), jnp.float32).at[:, 1:].set(_NEVER)
  state = (
    jnp.int32(0),
    running_seqs,
    running_scores,
    running_seqs,
    jnp.full((batch, k), _NEVER, jnp.float32),
    jnp.zeros((batch, k), bool),
    jnp.ones((batch,), bool),
    logits,
    cache,
  )
  seqs = jax.lax.while_loop(running, body, state)[3]
  return seqs[:, 0]

"""Prompt tuning (Lester et al. 2021) and prefix tuning (Li & Liang 2021).

Prompt tuning learns `prompt_length` soft token embeddings inserted at the input of a frozen model.
They are initialised from rows of the vocabulary embedding table, which Lester et al. found far better
than random initialisation. Encoders insert them right after the first token ([CLS]), so the pooler
still reads [CLS]; decoders prepend them. The model extends the attention mask to cover them and strips
their positions from its outputs, so task heads never see them.

Prefix tuning learns, for every layer, `prefix_length` key and value vectors per attention head that
every query attends to (as if a prefix had been processed before the input). They do not occupy
positions and are never masked.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from ftjax.peft.spec import PeftSpec

# BPE and WordPiece vocabularies are roughly ordered by frequency; the first rows of BERT's are special
# and [unusedN] tokens. Drawing from ids [1000, 6000) approximates Lester et al.'s "5,000 most common".
_INIT_VOCAB_RANGE = (1000, 6000)


def soft_prompt(module: nn.Module, word_embeddings: jax.Array, spec: PeftSpec) -> jax.Array:
  """The (prompt_length, hidden) soft prompt of `module`, initialised from vocabulary rows."""

  def init():
    vocab = word_embeddings.shape[0]
    low, high = _INIT_VOCAB_RANGE if vocab > _INIT_VOCAB_RANGE[1] else (0, vocab)
    ids = jax.random.randint(module.make_rng("params"), (spec.prompt_length,), low, high)
    return word_embeddings[ids].astype(jnp.float32)

  return module.variable("prompt", "embeddings", init).value


def key_value_prefix(module: nn.Module, num_heads: int, head_dim: int, spec: PeftSpec):
  """Per-layer (prefix_length, heads, head_dim) key and value prefixes of an attention `module`."""
  shape = (spec.prefix_length, num_heads, head_dim)
  # Not "key"/"value": BERT's attention module already has submodules of those names.
  init = lambda: nn.initializers.normal(0.02)(module.make_rng("params"), shape)
  key = module.variable("prefix", "prefix_key", init).value
  value = module.variable("prefix", "prefix_value", init).value
  return key, value

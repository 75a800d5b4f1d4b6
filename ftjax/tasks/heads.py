"""Task heads: small Flax modules applied to a backbone's output, with their own params pytree.

Names follow transformers' task classes (`classifier`, `qa_outputs`, `score`), so that an exported
checkpoint loads with the matching Auto class. Heads are always trained from scratch: the checkpoint
loader never reads them, and `init_from` carries them over from a finished run instead.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from ftjax.errors import InputError
from ftjax.models.dropout import Dropout
from ftjax.models.layers import Dense
from ftjax.models.outputs import DecoderOutput, EncoderOutput


class SequenceClassificationHead(nn.Module):
  """Logits (B, num_labels) for a whole sequence (num_labels = 1: regression).

  Encoders read, by `pooling`: "pooler", BERT's pooler output (tanh of a dense layer on [CLS]), as
  `BertForSequenceClassification` does; "cls", the [CLS] hidden state itself; "mean", the mean of the
  real tokens' hidden states, as sentence-transformers pools (all-MiniLM-L6-v2 was trained for it; its
  pooler never was). Decoders read the hidden state of the last real token and have no bias, as
  `GPT2ForSequenceClassification` (`score`) does.
  """

  num_labels: int
  dropout_rate: float = 0.1
  dtype: jnp.dtype = jnp.float32
  pooling: str = "pooler"

  @nn.compact
  def __call__(self, outputs, attention_mask, deterministic: bool = True) -> jax.Array:
    if isinstance(outputs, DecoderOutput):
      last = jnp.sum(attention_mask, axis=1) - 1  # right padding: index of the last real token
      pooled = jnp.take_along_axis(outputs.last_hidden_state, last[:, None, None], axis=1)[:, 0]
      return Dense(self.num_labels, use_bias=False, dtype=self.dtype, name="score")(pooled).astype(jnp.float32)
    pooled = Dropout(self.dropout_rate)(pool(outputs, attention_mask, self.pooling), deterministic=deterministic)
    return Dense(self.num_labels, dtype=self.dtype, name="classifier")(pooled).astype(jnp.float32)


POOLINGS = ("pooler", "cls", "mean")


def pool(outputs: EncoderOutput, attention_mask, pooling: str) -> jax.Array:
  """One vector per sequence (B, H) from an encoder's outputs."""
  if pooling == "pooler":
    if outputs.pooler_output is None:
      raise InputError(
        "config key head_pooling: 'pooler' reads the backbone's pooler and this checkpoint has none "
        "(ELECTRA, DistilBERT and DeBERTa ship without one): use cls or mean"
      )
    return outputs.pooler_output
  hidden = outputs.last_hidden_state
  if pooling == "cls":
    return hidden[:, 0]
  if pooling == "mean":
    mask = attention_mask[:, :, None].astype(hidden.dtype)
    return jnp.sum(hidden * mask, axis=1) / jnp.maximum(jnp.sum(mask, axis=1), 1)
  raise ValueError(f"unknown pooling {pooling!r}; known: {POOLINGS}")


class TokenClassificationHead(nn.Module):
  """Logits (B, T, num_labels) per token, as `BertForTokenClassification`."""

  num_labels: int
  dropout_rate: float = 0.1
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, outputs: EncoderOutput, attention_mask, deterministic: bool = True) -> jax.Array:
    h = Dropout(self.dropout_rate)(outputs.last_hidden_state, deterministic=deterministic)
    return Dense(self.num_labels, dtype=self.dtype, name="classifier")(h).astype(jnp.float32)


class QuestionAnsweringHead(nn.Module):
  """Start and end logits (B, T) each, as `BertForQuestionAnswering` (`qa_outputs`, no dropout)."""

  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, outputs: EncoderOutput, attention_mask, deterministic: bool = True):
    logits = Dense(2, dtype=self.dtype, name="qa_outputs")(outputs.last_hidden_state).astype(jnp.float32)
    return logits[..., 0], logits[..., 1]


class EntityStartHead(nn.Module):
  """Logits (B, num_labels) for the relation between two marked entities: the hidden states at the two
  entity-start markers, concatenated (B, 2H), dropout, one dense layer (Baldini Soares et al. 2019's
  "entity start" representation). Positions (B,) index the tokens; None (initialisation) reads token 0."""

  num_labels: int
  dropout_rate: float = 0.1
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(
    self, outputs, attention_mask, deterministic: bool = True, entity1_positions=None, entity2_positions=None
  ) -> jax.Array:
    hidden = outputs.last_hidden_state
    zeros = jnp.zeros(hidden.shape[:1], jnp.int32)

    def at(positions):
      positions = zeros if positions is None else positions
      return jnp.take_along_axis(hidden, positions[:, None, None], axis=1)[:, 0]

    pooled = jnp.concatenate([at(entity1_positions), at(entity2_positions)], axis=-1)
    pooled = Dropout(self.dropout_rate)(pooled, deterministic=deterministic)
    return Dense(self.num_labels, dtype=self.dtype, name="classifier")(pooled).astype(jnp.float32)

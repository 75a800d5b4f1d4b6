"""Output records of the backbones (pytrees, so they pass through jit and vmap)."""

from __future__ import annotations

import flax.struct
import jax


@flax.struct.dataclass
class EncoderOutput:
  last_hidden_state: jax.Array  # (batch, length, hidden), one row per input token
  pooler_output: jax.Array | None  # (batch, hidden): tanh(dense([CLS])) as BERT defines it


@flax.struct.dataclass
class DecoderOutput:
  logits: jax.Array  # (batch, length, vocab), float32
  last_hidden_state: jax.Array  # (batch, length, hidden) after the final norm
  cache: dict | None = None  # per-layer key/value cache when decoding incrementally

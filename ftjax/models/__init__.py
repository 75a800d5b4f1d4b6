"""Functional Flax backbones (one file per architecture) and their Hugging Face checkpoint loader."""

from ftjax.models.loading import (
  ARCHITECTURES,
  CheckpointError,
  backbone_reference,
  build_model,
  from_pretrained,
  load_tokenizer,
  resolve,
)
from ftjax.models.outputs import DecoderOutput, EncoderOutput

__all__ = [
  "ARCHITECTURES",
  "CheckpointError",
  "DecoderOutput",
  "EncoderOutput",
  "backbone_reference",
  "build_model",
  "from_pretrained",
  "load_tokenizer",
  "resolve",
]

"""ftjax: fine-tune pretrained BERT- and GPT-style language models in JAX."""

from ftjax import xla_cpu
from ftjax.models import from_pretrained, load_tokenizer

xla_cpu.set_threefry_lowering(
  "unrolled"
)  # dropout masks: the same bits, several times faster on CPU (ftjax/xla_cpu.py)

__all__ = ["from_pretrained", "load_tokenizer"]

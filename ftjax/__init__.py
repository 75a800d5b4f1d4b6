"""ftjax: fine-tune pretrained BERT- and GPT-style language models in JAX.

The four entry points a user needs; everything else lives in its module (README: "Where do I change X?").
Importing ftjax changes nothing global: XLA:CPU lowering choices are scoped to a run (ftjax/xla_cpu.py).
"""

from ftjax.generation import generate
from ftjax.loop import train_and_evaluate
from ftjax.models import from_pretrained, load_tokenizer

__all__ = ["from_pretrained", "generate", "load_tokenizer", "train_and_evaluate"]

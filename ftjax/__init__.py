"""ftjax: fine-tune pretrained BERT- and GPT-style language models in JAX."""
from ftjax.models import from_pretrained, load_tokenizer

__all__ = ["from_pretrained", "load_tokenizer"]

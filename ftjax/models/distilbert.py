"""DistilBERT (Sanh et al. 2019): BERT's encoder without token types or pooler, under other names.

The computation is bert.py's (post-LayerNorm layers, eps 1e-12, absolute positions); config.json's
keys (`dim`, `n_layers`, …) and the checkpoint's names (`transformer.layer.0.attention.q_lin`) are
translated here. Module paths stay BERT's, so LoRA targets and trainability rules read the same.
With `sinusoidal_pos_embds` the position table is loaded as stored; transformers freezes it, ftjax's
full fine-tuning would train it (freeze it with trainable=("freeze:position_embeddings",)).
"""

from __future__ import annotations

import dataclasses

from ftjax.models import bert

# DistilBertConfig key → BertConfig field.
_CONFIG_KEYS = {
  "vocab_size": "vocab_size",
  "dim": "hidden_size",
  "n_layers": "num_hidden_layers",
  "n_heads": "num_attention_heads",
  "hidden_dim": "intermediate_size",
  "activation": "hidden_act",
  "dropout": "hidden_dropout_prob",
  "attention_dropout": "attention_probs_dropout_prob",
  "max_position_embeddings": "max_position_embeddings",
  "pad_token_id": "pad_token_id",
}


@dataclasses.dataclass(frozen=True)
class DistilBertConfig(bert.BertConfig):
  type_vocab_size: int = 0

  @classmethod
  def from_hf(cls, hf: dict) -> "DistilBertConfig":
    translated = {ours: hf[theirs] for theirs, ours in _CONFIG_KEYS.items() if theirs in hf}
    return super().from_hf({**translated, "type_vocab_size": 0, "layer_norm_eps": 1e-12})


# BERT's checkpoint name fragments → DistilBERT's, in the order they are tried.
_RENAMES = (
  ("encoder.layer.", "transformer.layer."),
  ("attention.self.query", "attention.q_lin"),
  ("attention.self.key", "attention.k_lin"),
  ("attention.self.value", "attention.v_lin"),
  ("attention.output.dense", "attention.out_lin"),
  ("attention.output.LayerNorm", "sa_layer_norm"),
  ("intermediate.dense", "ffn.lin1"),
  ("output.dense", "ffn.lin2"),
  ("output.LayerNorm", "output_layer_norm"),
)


def _rename(name: str) -> str:
  for bert_name, ours in _RENAMES:
    name = name.replace(bert_name, ours)
  return name


def hf_names(config: DistilBertConfig, hf_keys) -> list[tuple[str, str, bool]]:
  """(our path, HF name, transpose) for every backbone tensor (DistilBERT has no pooler)."""
  return [(ours, _rename(theirs), t) for ours, theirs, t in bert.hf_names(config, ()) if not ours.startswith("pooler")]


HF_PREFIXES = ("distilbert.",)
# LoRA's default targets (config lora.targets="default"): q_lin and v_lin, at BERT's module paths.
LORA_TARGETS = r"attention/self/(query|value)$"
Config, Model = DistilBertConfig, bert.BertModel

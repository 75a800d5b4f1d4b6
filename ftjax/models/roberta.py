"""RoBERTa (Liu et al. 2019) and XLM-R (Conneau et al. 2020): BERT's encoder with RoBERTa's positions.

The computation is bert.py's; what differs is read from config.json here. Positions count from
padding_idx + 1 over the real tokens (fairseq's `make_positions`); transformers derives them from
`input_ids != pad_token_id`, we from the attention mask, which is the same for any batch whose padding
is exactly its pad tokens. The checkpoint names are BERT's under the `roberta.` prefix.
"""

from __future__ import annotations

import dataclasses

from ftjax.models import bert


@dataclasses.dataclass(frozen=True)
class RobertaConfig(bert.BertConfig):
  layer_norm_eps: float = 1e-5
  pad_token_id: int = 1

  @classmethod
  def from_hf(cls, hf: dict) -> "RobertaConfig":
    config = super().from_hf(hf)
    return dataclasses.replace(config, position_offset=config.pad_token_id + 1)


HF_PREFIXES = ("roberta.",)
# LoRA's default targets (config lora.targets="default"): query and value, as Hu et al. and PEFT.
LORA_TARGETS = r"attention/self/(query|value)$"
hf_names = bert.hf_names
Config, Model = RobertaConfig, bert.BertModel

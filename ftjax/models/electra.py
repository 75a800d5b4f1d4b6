"""ELECTRA's discriminator (Clark et al. 2020): BERT's encoder behind narrower embeddings.

The computation is bert.py's. Where `embedding_size` < `hidden_size` (ELECTRA-small: 128 → 256), the
embeddings are projected up by `embeddings_project`, a dense layer before the first encoder layer.
The discriminator has no pooler; its sequence-classification head (dense → GELU → out_proj) has no
ftjax counterpart, so such runs read [CLS] or the mean (config head_pooling).
"""

from __future__ import annotations

import dataclasses

from ftjax.models import bert


@dataclasses.dataclass(frozen=True)
class ElectraConfig(bert.BertConfig):
  """BertConfig under its own name (export finds the architecture by config class); config.json's
  `embedding_size` fills the field of that name."""


HF_PREFIXES = ("electra.",)
# LoRA's default targets (config lora.targets="default"): query and value, as Hu et al. and PEFT.
LORA_TARGETS = r"attention/self/(query|value)$"
hf_names = bert.hf_names
Config, Model = ElectraConfig, bert.BertModel

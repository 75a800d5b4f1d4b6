"""What a parameter-efficient method adds to a backbone, as one hashable value.

The model modules read a `PeftSpec` to decide where to create LoRA factors, bottleneck adapters, soft
prompts or key/value prefixes. It is a static module attribute (part of the architecture), so it must be
hashable; the *values* of the method's parameters live in their own variable collections
(`lora`, `adapter`, `prompt`, `prefix`), apart from the backbone's `params`.
"""

from __future__ import annotations

import dataclasses
import re

from ftjax.errors import InputError

# Variable collections a method may add beside the backbone's "params".
METHOD_COLLECTIONS = ("lora", "adapter", "prompt", "prefix")

# lora_targets value meaning "the architecture's LORA_TARGETS" (ftjax/models/<arch>.py); `build_model`
# replaces it by that regex before any module sees it.
DEFAULT_LORA_TARGETS = "default"


@dataclasses.dataclass(frozen=True)
class PeftSpec:
  # LoRA (Hu et al. 2021): regex searched in each Dense module's path, e.g. "attention/self/(query|value)$",
  # or DEFAULT_LORA_TARGETS.
  lora_targets: str | None = None
  lora_rank: int = 8
  lora_alpha: float = 16.0
  lora_dropout: float = 0.0  # dropout on the LoRA input only, as in the LoRA paper and PEFT
  lora_rslora: bool = False  # scale alpha/sqrt(r) (Kalajdzievski 2023) instead of alpha/r
  lora_dora: bool = False  # weight-decomposed LoRA (Liu et al. 2024): W' = m * V/||V||
  # Bottleneck adapters: "houlsby" (after attention and FFN) or "pfeiffer" (after FFN only).
  adapter: str | None = None
  adapter_size: int = 64  # bottleneck width (features)
  # Prompt tuning (Lester et al. 2021): soft tokens inserted at the input, initialised from vocab rows.
  prompt_length: int = 0
  # Prefix tuning (Li & Liang 2021): per-layer key/value prefixes attended by every query.
  prefix_length: int = 0

  def __post_init__(self):
    if self.adapter not in (None, "houlsby", "pfeiffer"):
      raise InputError(f"config key adapter.kind must be None, 'houlsby' or 'pfeiffer', got {self.adapter!r}")
    if self.lora_targets is not None:
      re.compile(self.lora_targets)  # fail at config time, not deep inside the forward pass
      if self.lora_rank <= 0:
        raise InputError(f"config key lora.rank must be positive, got {self.lora_rank}")
    if self.adapter is not None and self.adapter_size <= 0:
      raise InputError(f"config key adapter.size must be positive, got {self.adapter_size}")

  @property
  def lora_scale(self) -> float:
    return self.lora_alpha / (self.lora_rank**0.5 if self.lora_rslora else self.lora_rank)

  def lora_applies_to(self, module_path: tuple[str, ...]) -> bool:
    if self.lora_targets == DEFAULT_LORA_TARGETS:  # a regex "default" would silently match nothing
      raise ValueError("lora_targets='default' must be resolved to the architecture's LORA_TARGETS (build_model)")
    return self.lora_targets is not None and re.search(self.lora_targets, "/".join(module_path)) is not None


NO_PEFT = PeftSpec()

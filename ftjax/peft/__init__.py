"""Parameter-efficient fine-tuning methods: LoRA, bottleneck adapters, prompt and prefix tuning.

Each method is one small file. The backbone modules call into them; their parameters live in their own
variable collections (see `spec.METHOD_COLLECTIONS`), so they form separate pytrees from the backbone.
"""

from ftjax.peft.spec import METHOD_COLLECTIONS, NO_PEFT, PeftSpec

__all__ = ["METHOD_COLLECTIONS", "NO_PEFT", "PeftSpec"]

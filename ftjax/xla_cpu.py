"""XLA:CPU lowering choices that make training faster and leave every number as it was.

Dropout draws its masks with JAX's threefry2x32 hash. On CPU, JAX lowers the hash's 20 rounds as a
rolled `while` loop of 5 iterations (to keep compile times short on big programs): each iteration reads
and writes the whole uint32 state, so a mask over MiniLM's attention probabilities (32 × 12 × 128 × 128)
costs ~200 ms, six times per forward pass. The unrolled lowering, which JAX uses on every other platform,
fuses the hash into one loop over the elements: ~30 ms for the same mask (measured on this 2-core
machine), the same bits, hence the same masks, losses and trained weights. It costs compile time (the
MiniLM train step: 5.0 → 7.0 s, with FGM 5.9 → 11.3 s; scripts/bench.py).

`use_unrolled_threefry()` registers the unrolled rule for the CPU platform; `import ftjax` calls it.
Set FTJAX_ROLLED_THREEFRY=1 to keep JAX's own rule (e.g. when compile time matters more than steps).
Known problem (open): with the unrolled rule, the MiniLM LoRA + FGM train step did not finish compiling
in 16 min (SST-2, `--config.method=lora --config.adversarial.method=fgm`); with FTJAX_ROLLED_THREEFRY=1
the same 2-step run, compile and dev evaluation included, took 1.3 min. Run LoRA + FGM/PGD that way.
It uses JAX internals (jax._src); where they have moved, it changes nothing and says so in the return value.
"""
from __future__ import annotations

import functools
import os


@functools.cache
def use_unrolled_threefry() -> bool:
  """Lower threefry2x32 unrolled on CPU, as on GPU and TPU; True if the rule is in place."""
  if os.environ.get("FTJAX_ROLLED_THREEFRY", "") not in ("", "0"):
    return False
  try:
    from jax._src.interpreters import mlir
    from jax._src.random import threefry2x32
    lowering = threefry2x32._threefry2x32_lowering
    primitive = threefry2x32.threefry2x32_p
  except (ImportError, AttributeError):  # a JAX whose internals moved: keep its own rule
    return False
  rule = mlir.lower_fun(functools.partial(lowering, use_rolled_loops=False), multiple_results=True)
  mlir.register_lowering(primitive, rule, platform="cpu")
  return True

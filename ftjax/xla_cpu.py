"""XLA:CPU lowering choices that make training faster and leave every number as it was.

Dropout draws its masks with JAX's threefry2x32 hash. On CPU, JAX lowers the hash's 20 rounds as a
rolled `while` loop of 5 iterations (to keep compile times short on big programs): each iteration reads
and writes the whole uint32 state, so a mask over MiniLM's attention probabilities (32 × 12 × 128 × 128)
costs ~200 ms, six times per forward pass. The unrolled lowering, which JAX uses on every other platform,
fuses the hash into one loop over the elements: ~30 ms for the same mask (measured on this 2-core
machine), the same bits, hence the same masks, losses and trained weights. It costs compile time (the
MiniLM train step: 5.0 → 7.0 s, with FGM 5.9 → 11.3 s; scripts/bench.py).

`set_threefry_lowering("unrolled" | "rolled")` registers ftjax's rule or JAX's own for the CPU platform;
`import ftjax` sets "unrolled", and `train_and_evaluate` sets what its config's `cpu_threefry` says
(`lowering_for` resolves "auto") before anything is compiled; code that does not go through a config
calls set_threefry_lowering itself.

Where "rolled" is needed: the unrolled hash is a chain of cheap integer ops, and XLA's fusion copies cheap
producers into every consumer. LoRA's input dropout is the case found. With FGM/PGD, the mask on each
LoRA input meets the embedding gradient that FGM takes through the frozen backbone, and the MiniLM step
at sequence length 64 had fusions of ~3,800 instructions, 97k shifts in all (~4,800 copies of the hash);
XLA's fusion emitters did not finish compiling it in 15 min (with --xla_cpu_use_fusion_emitters=false:
2 min). Without an adversarial method, the LoRA step compiled unrolled on RTE and MRPC, but on CoLA it
had not compiled after 12 CPU-minutes (killed; the methods table's cola-lora-r-8-q-v-s0 on 2026-11-30).
Rolled, the hash is a loop that no fusion enters: both compile in under a minute (CoLA LoRA: 3 steps and
a dev pass in 57 s wall). The LoRA + FGM step with LoRA dropout 0 compiles unrolled in 27 s, as do
BitFit + FGM (24 s) and prompt tuning + FGM (38 s) (all measured with two training runs sharing the 2
cores). So the config's default, "auto", is rolled wherever LoRA dropout is on. (Wrapping the unrolled
hash in a loop XLA cannot remove also compiles, in 39 s, but gives back most of the speed-up: the bits
are written out and read back; an optimization_barrier does not help, XLA:CPU removes it before fusion.)
It uses JAX internals (jax._src); where they have moved, it changes nothing and says so in the return value.
"""

from __future__ import annotations

import functools

from ftjax.errors import InputError

LOWERINGS = ("unrolled", "rolled")
CHOICES = ("auto",) + LOWERINGS  # what the config key cpu_threefry accepts
_in_place = {"rule": None}  # the rule this process last registered: "unrolled", "rolled" or None (JAX's)


def lowering_for(choice: str, lora_dropout: float) -> str:
  """The config's cpu_threefry as a lowering: "auto" is rolled wherever LoRA's input dropout (> 0) is on
  (the steps that do not compile unrolled, above), unrolled everywhere else."""
  if choice not in CHOICES:
    raise InputError(f"config key cpu_threefry must be one of {CHOICES}, got {choice!r}")
  if choice != "auto":
    return choice
  return "rolled" if lora_dropout > 0 else "unrolled"


def set_threefry_lowering(kind: str) -> bool:
  """Lower threefry2x32 on CPU unrolled (as on GPU and TPU) or rolled (JAX's CPU rule); True if unrolled
  is now in place. Affects what is compiled afterwards, never a number."""
  if kind not in LOWERINGS:
    raise InputError(f"threefry lowering must be one of {LOWERINGS}, got {kind!r}")
  if _in_place["rule"] == kind:
    return kind == "unrolled"
  try:
    from jax._src.interpreters import mlir
    from jax._src.random import threefry2x32

    primitive = threefry2x32.threefry2x32_p
    if kind == "unrolled":
      rule = mlir.lower_fun(
        functools.partial(threefry2x32._threefry2x32_lowering, use_rolled_loops=False), multiple_results=True
      )
    else:
      rule = threefry2x32._threefry2x32_cpu_lowering_rule
  except (ImportError, AttributeError):  # a JAX whose internals moved: keep its own rule
    return False
  mlir.register_lowering(primitive, rule, platform="cpu")
  _in_place["rule"] = kind
  return kind == "unrolled"


def unrolled_threefry_in_place() -> bool:
  return _in_place["rule"] == "unrolled"

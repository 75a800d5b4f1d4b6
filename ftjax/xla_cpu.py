"""XLA:CPU lowering choices that make training faster and leave every number as it was.

Dropout draws its masks with JAX's threefry2x32 hash. On CPU, JAX lowers the hash's 20 rounds as a
rolled `while` loop of 5 iterations (to keep compile times short on big programs): each iteration reads
and writes the whole uint32 state, so a mask over MiniLM's attention probabilities (32 × 12 × 128 × 128)
costs ~200 ms, six times per forward pass. The unrolled lowering, which JAX uses on every other platform,
fuses the hash into one loop over the elements: ~30 ms for the same mask (measured on this 2-core
machine), the same bits, hence the same masks, losses and trained weights. It costs compile time (the
MiniLM train step: 5.0 → 7.0 s, with FGM 5.9 → 11.3 s; scripts/bench.py).

`import ftjax` changes nothing: `train_and_evaluate` registers what its config's `cpu_threefry` says
(`lowering_for` resolves "auto") before anything is compiled and puts JAX's table back as it was when the
run ends; code that does not go through a config scopes it with `with threefry_lowering("unrolled"):`.

Why "rolled" was once needed, and is no longer: the unrolled hash is a chain of cheap integer ops, and
XLA's fusion copies cheap producers into every consumer. With LoRA's input dropout and FGM/PGD, the MiniLM
step at sequence length 64 had fusions of ~3,800 instructions, 97k shifts in all (~4,800 copies of the
hash), and XLA's fusion emitters did not finish compiling it in 15 min; plain LoRA on CoLA had not
compiled after 12 CPU-minutes. So "auto" used to take rolled wherever LoRA dropout was on. Since every
ftjax dropout packs its mask into bits (ftjax/models/dropout.py), no fusion can copy a hash: that LoRA +
FGM step compiles unrolled in 10-15 s, the CoLA LoRA run's 3 steps and dev pass take 27 s, and the LoRA
step with input dropout 0.1 is 1.16x slower rolled than unrolled (MiniLM, 32 x 128; results/variants.md).
"auto" is now unrolled everywhere; "rolled" stays for runs recorded with it (the adversarial table's
LoRA + FGM/PGD cells), with the same numbers either way.

It uses JAX internals (jax._src); where they have moved, it changes nothing and says so in the return value.
"""

from __future__ import annotations

import contextlib
import functools

from ftjax.errors import InputError

LOWERINGS = ("unrolled", "rolled")
CHOICES = ("auto",) + LOWERINGS  # what the config key cpu_threefry accepts


def lowering_for(choice: str) -> str:
  """The config's cpu_threefry as a lowering: "auto" is unrolled (the faster steps; see above)."""
  if choice not in CHOICES:
    raise InputError(f"config key cpu_threefry must be one of {CHOICES}, got {choice!r}")
  return "unrolled" if choice == "auto" else choice


@functools.cache
def _jax_internals():
  """(mlir module, threefry primitive, {"unrolled": rule, "rolled": rule}), or None where JAX moved them.

  "rolled" is JAX's own CPU rule object; "unrolled" is made once, so that the rule in place can be named
  by identity (no module state records what was registered)."""
  try:
    from jax._src.interpreters import mlir
    from jax._src.random import threefry2x32

    unrolled = mlir.lower_fun(
      functools.partial(threefry2x32._threefry2x32_lowering, use_rolled_loops=False), multiple_results=True
    )
    rules = {"unrolled": unrolled, "rolled": threefry2x32._threefry2x32_cpu_lowering_rule}
    return mlir, threefry2x32.threefry2x32_p, rules
  except (ImportError, AttributeError):
    return None


def _cpu_table():
  mlir, _, _ = _jax_internals()
  return mlir._platform_specific_lowerings["cpu"]


def threefry_lowering_in_place() -> str | None:
  """ "unrolled" or "rolled" (JAX's CPU rule, its default), by the rule registered now; None if unknown."""
  internals = _jax_internals()
  if internals is None:
    return None
  _, primitive, rules = internals
  entry = _cpu_table().get(primitive)
  return next((kind for kind, rule in rules.items() if entry is not None and entry.rule is rule), None)


def set_threefry_lowering(kind: str) -> bool:
  """Lower threefry2x32 on CPU unrolled (as on GPU and TPU) or rolled (JAX's CPU rule) from now on, for
  this process; True if unrolled is now in place. Affects what is compiled afterwards, never a number.
  Prefer the scoped `threefry_lowering`: this one changes JAX's lowering table until changed back."""
  if kind not in LOWERINGS:
    raise InputError(f"threefry lowering must be one of {LOWERINGS}, got {kind!r}")
  internals = _jax_internals()
  if internals is None:  # a JAX whose internals moved: keep its own rule
    return False
  mlir, primitive, rules = internals
  if threefry_lowering_in_place() != kind:
    mlir.register_lowering(primitive, rules[kind], platform="cpu")
  return kind == "unrolled"


@contextlib.contextmanager
def restoring_lowering():
  """Whatever the body registers for threefry on CPU, JAX's table is as it was on exit (even on error).
  Programs compiled inside keep the rule they were compiled with."""
  internals = _jax_internals()
  if internals is None:
    yield
    return
  _, primitive, _ = internals
  table = _cpu_table()
  before = table.get(primitive)
  try:
    yield
  finally:
    if before is None:
      table.pop(primitive, None)
    else:
      table[primitive] = before


@contextlib.contextmanager
def threefry_lowering(kind: str):
  """`with threefry_lowering("unrolled"): ...`: compile the body's programs with that lowering, then put
  back the rule that was in place (what scripts/bench.py and code outside `train_and_evaluate` use)."""
  with restoring_lowering():
    set_threefry_lowering(kind)
    yield

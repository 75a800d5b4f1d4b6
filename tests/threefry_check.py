"""Three dropout train steps of the tiny BERT; prints a digest of the losses and trained weights.

tests/test_step.py runs it twice, with JAX's rolled threefry lowering (FTJAX_ROLLED_THREEFRY=1) and with
ftjax's unrolled one, and wants the same digest: the lowering may change speed, never a number.
"""
import hashlib
import sys
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout, whatever is installed
sys.path.insert(0, str(Path(__file__).resolve().parent))
import ftjax  # noqa: E402,F401  (applies or skips the lowering, per the environment)
from ftjax import step, xla_cpu  # noqa: E402

import tiny_run as tiny  # noqa: E402


def main():
  model, task, tx, state = tiny.tiny_run(total_steps=3)
  train_step = jax.jit(step.make_train_step(model, task, tx, adversarial_config=tiny.adversarial_config(), dropout=True))
  batches = [jax.device_put({k: v for k, v in tiny.random_batch(seed).items() if k != "example_index"})
             for seed in range(3)]
  hlo = train_step.lower(state, batches[0]).as_text()
  digest = hashlib.sha256()
  for batch in batches:
    state, metrics = train_step(state, batch)
    digest.update(np.asarray(metrics["loss_sum"]).tobytes())
  for leaf in jax.tree.leaves(tiny.host(state.trainable)):
    digest.update(np.ascontiguousarray(leaf).tobytes())
  print(f"unrolled={xla_cpu.use_unrolled_threefry()} while_loops={hlo.count('stablehlo.while')} digest={digest.hexdigest()}")


if __name__ == "__main__":
  main()

"""Peak host memory while loading a checkpoint onto 8 CPU devices (results/scale.md, "Host memory"):

  python scripts/load_memory.py --model=smollm2 --mesh=fsdp=8 --loader=whole
  python scripts/load_memory.py --model=smollm2 --mesh=fsdp=8 --loader=sliced

`whole`: `from_pretrained(model)` as before per-slice loading (every tensor read or dequantised whole into
float32 host memory), then each parameter cast to its dtype and `sharding.put` onto its sharding, the whole
copies alive meanwhile (as the loop held them);
`sliced`: `from_pretrained(model, placement=...)`, each device reading only its slices (ftjax/models/slices.py).
The placement is the training loop's (`experiment.placement`: the default sharding rules, trainable weights
float32, frozen ones in --param_dtype). Prints the process's peak RSS (VmHWM, MiB) at the start, after
loading and after placing, and the MB (1e6 bytes) of backbone weights on the fullest device. One loader per
process: the peak never goes down.
"""

import json
import os
import resource
import sys
from pathlib import Path

from absl import flags

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without installing
from ftjax import cli, trainability  # noqa: E402

flags.DEFINE_string("model", "smollm2", "checkpoint folder, .gguf file or packaged short name (smollm2, minilm)")
flags.DEFINE_string("mesh", "fsdp=8", "mesh axis sizes over the simulated devices (configs/base.py: mesh)")
flags.DEFINE_integer("devices", 8, "simulated CPU devices (XLA_FLAGS, set before jax starts)")
flags.DEFINE_enum("loader", "sliced", ["whole", "sliced"], "whole tensors then put, or each device its slices")
flags.DEFINE_enum("method", "full", sorted(trainability.PRESETS), "what trains: trainable weights stay float32")
flags.DEFINE_enum("param_dtype", "float32", ["float32", "bfloat16"], "dtype of the weights that do not train")
FLAGS = flags.FLAGS


def peak_rss_mib() -> float:
  """This process's peak RSS (Linux VmHWM, MiB). Not ru_maxrss: execve keeps the parent's, so a child of a
  large process (a test runner) would start at the parent's peak."""
  for line in Path("/proc/self/status").read_text().splitlines():
    if line.startswith("VmHWM:"):
      return int(line.split()[1]) / 1024  # kB
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # elsewhere: kilobytes, parent's included


def main(argv):
  del argv
  # before jax starts its backend (nothing in ftjax touches it at import)
  os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={FLAGS.devices}"
  import jax

  from ftjax import experiment, sharding
  from ftjax.models import from_pretrained
  from ftjax.tasks import make_task

  start = peak_rss_mib()
  mesh = sharding.make_mesh(FLAGS.mesh)
  rules = trainability.rules_for(FLAGS.method)

  def place(model):
    task = make_task("causal_lm" if model.is_decoder else "classification", 0 if model.is_decoder else 2)
    return experiment.placement(model, task, rules, mesh, (), FLAGS.param_dtype)

  if FLAGS.loader == "sliced":
    model, params = from_pretrained(FLAGS.model, placement=place)
    loaded = placed = peak_rss_mib()
  else:
    model, params = from_pretrained(FLAGS.model)
    loaded = peak_rss_mib()
    where = place(model)  # as the loop did: the whole copies stay alive while the shards are made
    flat = trainability.flatten(params)
    flat = {p: flat[p].astype(d) if s is None else sharding.put(flat[p].astype(d), s) for p, (s, d) in where.items()}
    params = trainability.unflatten(flat)
    placed = peak_rss_mib()
  jax.block_until_ready(params)
  held = sharding.bytes_per_device(params)
  report = {
    "model": FLAGS.model,
    "mesh": FLAGS.mesh,
    "loader": FLAGS.loader,
    "param_dtype": FLAGS.param_dtype,
    "devices": jax.device_count(),
    "backbone_mb": sum(x.nbytes for x in jax.tree.leaves(params)) / 1e6,
    "peak_rss_mib_start": round(start),
    "peak_rss_mib_loaded": round(loaded),
    "peak_rss_mib_placed": round(placed),
    "fullest_device_mb": max(held.values()) / 1e6,
  }
  print(json.dumps(report))


if __name__ == "__main__":
  cli.run(main)

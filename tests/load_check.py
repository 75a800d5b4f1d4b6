"""Loading straight into shards (ftjax/models/slices.py) on 8 simulated CPU devices, against the whole-tensor
loader, printed as a JSON report that test_loading_shards.py checks. A separate process: the device count
is fixed at jax import.

  python tests/load_check.py llama                 # random Llama by transformers: float32 and bf16 safetensors
  python tests/load_check.py gguf                  # the packaged SmolLM2 GGUF (llama.cpp's q/k row permutation)
  python tests/load_check.py loop MODEL TFDS RTE WORKDIR   # train_and_evaluate, sliced vs whole loader
  python tests/load_check.py multihost MODEL TFDS RTE RUN  # one of two processes: load_trained over both

For each mesh and (method, param_dtype): every backbone parameter of `from_pretrained(placement=...)` on its
sharding, each device's shard of the shape the sharding gives, and its bytes equal to the whole-tensor
loader's value cast to the placement's dtype.
"""

import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # ftjax from this checkout, installed or not
if "device_count" not in os.environ.get("XLA_FLAGS", ""):  # multihost: the test gives each process 4
  os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"

import jax  # noqa: E402  (after XLA_FLAGS)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from ftjax import experiment, sharding, trainability  # noqa: E402
from ftjax.models import from_pretrained  # noqa: E402
from ftjax.tasks import make_task  # noqa: E402

MESHES = ("fsdp=8", "fsdp=4,tensor=2")
CASES = (("full", "float32"), ("lora", "bfloat16"))


def compare(path, mesh_text, method, param_dtype) -> dict:
  """Sliced against whole loading of one checkpoint: counts of parameters that differ or are misplaced."""
  mesh = sharding.make_mesh(mesh_text)
  seen = {}

  def place(model):
    task = make_task("causal_lm" if model.is_decoder else "classification", 0 if model.is_decoder else 2)
    seen.update(experiment.placement(model, task, trainability.rules_for(method), mesh, (), param_dtype))
    return seen

  _, whole = from_pretrained(path)
  _, placed = from_pretrained(path, placement=place)
  whole, placed = trainability.flatten(whole), trainability.flatten(placed)
  differ, misplaced, split = [], [], 0
  for path_, value in placed.items():
    where, dtype = seen[path_]
    expected = np.asarray(jnp.asarray(whole[path_]).astype(dtype))
    got = np.asarray(value)
    if got.dtype != expected.dtype or got.tobytes() != expected.tobytes():
      differ.append(path_)
    if value.sharding != where or any(s.data.shape != where.shard_shape(value.shape) for s in value.addressable_shards):
      misplaced.append(path_)
    split += where.shard_shape(value.shape) != value.shape
  dtypes = sorted({str(v.dtype) for v in placed.values()})
  return {"params": len(placed), "split": split, "differ": differ, "misplaced": misplaced, "dtypes": dtypes}


def write_llama(folder: Path, dtype) -> Path:
  """A random-weight Llama saved by transformers in `dtype` (safetensors + config.json)."""
  import torch
  from transformers import LlamaConfig, LlamaForCausalLM

  from shard_check import SMALL_LLAMA

  torch.manual_seed(0)
  LlamaForCausalLM(LlamaConfig(**SMALL_LLAMA)).to(getattr(torch, dtype)).save_pretrained(folder)
  return folder


def loop_runs(model, tfds_dir, rte_dir, workdir: Path) -> dict:
  """train_and_evaluate with fsdp=8 as the loop loads now (sliced) and as it loaded before (whole, then put):
  full fine-tuning in float32, then LoRA with DoRA from it (init_from) with bfloat16 frozen weights."""
  from configs import glue
  from conftest import tiny_config

  from ftjax import loop

  def config(method, **overrides):
    c = tiny_config(glue.get_config("rte"), model, tfds_dir, method=method, parallel="mesh", mesh="fsdp=8")
    c.data_dir, c.max_steps, c.eval_every, c.checkpoint_every, c.learning_rate = rte_dir, 4, 4, 4, 1e-3
    c.lora.targets, c.lora.dora = r"attention/self/(query|value)$", True
    for key, value in overrides.items():
      setattr(c, key, value)
    return c

  build = experiment.build

  def whole_build(config, mesh=None):  # the loader before this change: every tensor whole, placed by put_state
    return build(config)

  report = {}
  for loader in ("sliced", "whole"):
    experiment.build = build if loader == "sliced" else whole_build
    full, lora = workdir / f"full_{loader}", workdir / f"lora_{loader}"
    loop.train_and_evaluate(config("full"), full)
    loop.train_and_evaluate(config("lora", init_from=str(full), param_dtype="bfloat16"), lora)
    runs = {}
    for name, run in (("full", full), ("lora", lora)):
      lines = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
      _, _, trainable, _ = experiment.restore(run)  # the best checkpoint's trainable parameters
      runs[name] = {
        "losses": [(l["step"], l["split"], l.get("loss")) for l in lines],
        "trainable": trainability.flatten(jax.device_get(trainable)),
      }
    report[loader] = runs
  experiment.build = build
  out = {}
  for name in ("full", "lora"):
    a, b = report["sliced"][name], report["whole"][name]
    out[name] = {
      "losses": a["losses"],
      "losses_equal": a["losses"] == b["losses"],
      "params_equal": a["trainable"].keys() == b["trainable"].keys()
      and all(np.array_equal(a["trainable"][p], b["trainable"][p]) for p in a["trainable"]),
    }
  # load_trained into templates sharded over fsdp=8: values as unsharded templates get them, shardings kept
  c = config("lora", init_from=str(workdir / "full_sliced"), param_dtype="bfloat16")
  exp = experiment.build(c, sharding.make_mesh("fsdp=8"))
  trainable, frozen = trainability.partition(exp.tree, exp.rules)
  frozen = experiment.frozen_weights(frozen, "bfloat16")
  _, sharded = loop.load_trained(c.init_from, trainable, frozen)
  _, plain = loop.load_trained(c.init_from, *jax.device_get((trainable, frozen)))
  sharded, plain, template = map(trainability.flatten, (sharded, plain, frozen))
  out["load_trained"] = {
    "equal": all(np.asarray(sharded[p]).tobytes() == np.asarray(plain[p]).tobytes() for p in plain),
    "kept_sharding": all(sharded[p].sharding == template[p].sharding for p in template),
    "split": sum(v.sharding.shard_shape(v.shape) != v.shape for v in sharded.values()),
  }
  return out


def load_trained_across_processes(model, tfds_dir, rte_dir, earlier) -> dict:
  """One of two processes (jax.distributed, 4 devices each): `load_trained` into a DoRA run's templates
  sharded over fsdp=8, which span both processes; each local shard against the unsharded result."""
  from configs import glue
  from conftest import tiny_config

  from ftjax import loop

  c = tiny_config(glue.get_config("rte"), model, tfds_dir, method="lora", parallel="mesh", mesh="fsdp=8")
  c.data_dir, c.init_from, c.param_dtype = rte_dir, earlier, "bfloat16"
  # DoRA: its initialisation reads the query/value kernels, loaded whole on each process's first device
  c.lora.targets, c.lora.dora = r"attention/self/(query|value)$", True
  exp = experiment.build(c, sharding.make_mesh("fsdp=8"))
  trainable, frozen = trainability.partition(exp.tree, exp.rules)
  frozen = experiment.frozen_weights(frozen, "bfloat16")
  carried = trainability.flatten(trainability.combine(*loop.load_trained(c.init_from, trainable, frozen)))
  hosts = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), (trainable, frozen))
  reference = trainability.flatten(trainability.combine(*loop.load_trained(c.init_from, *hosts)))
  spanning = [p for p, v in carried.items() if not v.is_fully_addressable]
  differ = [
    p
    for p, v in carried.items()
    if not p.startswith("lora/")  # fresh LoRA factors: not carried (the reference's are zeros)
    for s in v.addressable_shards
    if np.asarray(s.data).tobytes() != np.ascontiguousarray(reference[p][s.index]).tobytes()
  ]
  return {"process": jax.process_index(), "spanning": len(spanning), "params": len(carried), "differ": differ}


def main():
  which = sys.argv[1]
  if which == "multihost":
    from ftjax import parallel

    parallel.initialize_distributed()  # FTJAX_COORDINATOR, FTJAX_NUM_PROCESSES, FTJAX_PROCESS_ID
  report = {"devices": jax.device_count()}
  if which == "llama":
    from safetensors import safe_open

    for dtype in ("float32", "bfloat16"):
      with tempfile.TemporaryDirectory() as folder:
        path = write_llama(Path(folder), dtype)
        with safe_open(str(path / "model.safetensors"), framework="np") as f:
          report[f"{dtype} file"] = sorted({f.get_slice(k).get_dtype() for k in f.keys()})
        for mesh in MESHES:
          for method, param_dtype in CASES:
            report[f"{dtype} {mesh} {method} {param_dtype}"] = compare(path, mesh, method, param_dtype)
  elif which == "gguf":
    for mesh, (method, param_dtype) in zip(MESHES, CASES):
      report[f"{mesh} {method} {param_dtype}"] = compare("smollm2", mesh, method, param_dtype)
  elif which == "multihost":
    report["multihost"] = load_trained_across_processes(*sys.argv[2:6])
  else:
    from tiny_run import fast_compiles

    fast_compiles()
    report["loop"] = loop_runs(*sys.argv[2:5], Path(sys.argv[5]))
  print("REPORT " + json.dumps(report))


if __name__ == "__main__":
  main()

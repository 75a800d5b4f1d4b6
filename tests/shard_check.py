"""Sharded training on 8 simulated CPU devices against one device, printed as a JSON report that
test_sharding.py checks. A separate process: the device count is fixed at jax import.

  python tests/shard_check.py llama     # random Llama written by transformers (4 layers, hidden 256, GQA)
  python tests/shard_check.py minilm    # the packaged MiniLM: LoRA + FGM, and full fine-tuning

For each mesh: 5 steps of the jitted step with the state laid out by the default sharding rules; the
losses and final parameters against the single-device run, and the bytes of parameters and optimiser
state that each device holds (summed from addressable_shards).
"""

import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # ftjax from this checkout, installed or not
os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"

import jax  # noqa: E402  (after XLA_FLAGS)
import numpy as np  # noqa: E402

from ftjax import checkpoints, experiment, optim, parallel, sharding, step, trainability  # noqa: E402
from ftjax.models import from_pretrained  # noqa: E402
from ftjax.peft.spec import PeftSpec  # noqa: E402
from ftjax.tasks import make_task  # noqa: E402

import tiny_run as tiny  # noqa: E402

STEPS, BATCH, LENGTH = 5, 8, 16
MESHES = ("fsdp=8", "fsdp=4,tensor=2", "data=2,fsdp=4")
SMALL_LLAMA = dict(
  vocab_size=512,
  hidden_size=256,
  intermediate_size=512,
  num_hidden_layers=4,
  num_attention_heads=8,
  num_key_value_heads=2,
  max_position_embeddings=64,
)


def write_llama(folder: Path) -> Path:
  """A random-weight Llama saved by transformers (safetensors + config.json)."""
  import torch
  from transformers import LlamaConfig, LlamaForCausalLM

  torch.manual_seed(0)
  LlamaForCausalLM(LlamaConfig(**SMALL_LLAMA)).save_pretrained(folder)
  return folder


def batch(seed: int, kind: str, vocab: int):
  b = tiny.random_batch(seed, batch_size=BATCH, length=LENGTH)
  b["input_ids"] = np.where(b["attention_mask"] > 0, b["input_ids"] % vocab, 0).astype(np.int32)
  if kind == "causal_lm":
    b["labels"] = np.where(b["attention_mask"] > 0, b["input_ids"], -100).astype(np.int32)
  return b


def setup(model_path, kind, method, peft=PeftSpec()):
  model, backbone = from_pretrained(model_path, peft=peft)
  task = make_task(kind, 2 if kind == "classification" else 0)
  tree = experiment.init_tree(model, task, backbone, seed=0)
  trainable, frozen = trainability.partition(tree, trainability.rules_for(method))
  config = tiny.optimizer_config()
  config.learning_rate = 5e-5  # base.py's: Adam's update is ~lr per step whatever the gradient's size, so a larger
  # one would amplify summation-order differences (1e-7 in the gradients) along with it
  tx, _ = optim.make_optimizer(config, trainable, STEPS, 4)
  return model, task, tx, tiny.host(step.create_state(trainable, frozen, tx, 0))


def run(mode, mesh, model, task, tx, state0, kind, adversarial="none"):
  """(final host state, losses, bytes of trainable + optimiser state per device, device state)."""
  par = parallel.make_parallel(mode, mesh)
  shardings = par.state_shardings(state0, sharding.rules_for(model))
  train_step = par.compile_train_step(
    lambda axis_name: step.make_train_step(
      model, task, tx, adversarial_config=tiny.adversarial_config(adversarial), axis_name=axis_name
    ),
    shardings,
  )
  state = par.put_state(state0, shardings)
  losses = []
  for i in range(STEPS):
    state, metrics = train_step(state, par.put_batch(batch(i, kind, model.config.vocab_size)))
    losses.append(float(metrics["loss_sum"]) / float(metrics["count"]))
  held = sharding.bytes_per_device((state.trainable, state.opt_state))
  return par.get_state(state), losses, max(held.values()), state, shardings


def max_diff(a, b):
  return float(max((np.max(np.abs(x - y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))), default=0.0))


def compare(name, model_path, kind, method, peft=PeftSpec(), adversarial="none"):
  model, task, tx, state0 = setup(model_path, kind, method, peft)
  single, single_losses, *_ = run("none", None, model, task, tx, state0, kind, adversarial)
  total = sum(x.nbytes for x in jax.tree.leaves((state0.trainable, state0.opt_state)))
  moved = max_diff(single.trainable, state0.trainable)
  out = {"single_losses": single_losses, "param_and_opt_bytes": total, "moved": moved}
  for mesh in MESHES:
    final, losses, held, *_ = run("mesh", mesh, model, task, tx, state0, kind, adversarial)
    shards = int(np.prod([v for k, v in sharding.parse_mesh(mesh, 8).items() if k != "data"]))
    out[mesh] = {
      "model_shards": shards,
      "loss_diff": float(np.max(np.abs(np.array(losses) - single_losses))),
      "param_diff": max_diff(final.trainable, single.trainable),
      "frozen_diff": max_diff(final.frozen, single.frozen),
      "max_device_bytes": held,
      "fraction": held / total,
    }
    print(
      f"{name} {mesh}: max bytes per device {held:,} of {total:,} ({held / total:.4f}); "
      f"loss diff {out[mesh]['loss_diff']:.2e}, param diff {out[mesh]['param_diff']:.2e}",
      file=sys.stderr,
    )
  return out, (model, task, tx, state0)


def checkpoint_across_meshes(model, task, tx, state0, kind):
  """Saved from fsdp=8 (the sharded arrays themselves), restored onto data=4,fsdp=2."""
  *_, state, _ = run("mesh", "fsdp=8", model, task, tx, state0, kind)
  with tempfile.TemporaryDirectory() as workdir:
    saver = checkpoints.Checkpoints(workdir)
    saver.save(state.replace(frozen={}), {"note": "fsdp=8"})
    par = parallel.make_parallel("mesh", "data=4,fsdp=2")
    target = par.state_shardings(state0, sharding.rules_for(model))
    restored, loop_state = checkpoints.Checkpoints(workdir).restore(state0, shardings=target)
    saver.close()
  kernel = "backbone/layers_0/mlp/up_proj/kernel"
  return {
    "identical": max_diff(restored.trainable, jax.device_get(state.trainable)) == 0.0
    and max_diff(restored.opt_state, jax.device_get(state.opt_state)) == 0.0,
    "restored_spec": str(trainability.flatten(restored.trainable)[kernel].sharding.spec),
    "restored_mesh": dict(trainability.flatten(restored.trainable)[kernel].sharding.mesh.shape),
    "loop_state": loop_state,
  }


def plan_vs_measured(model, task, tx, state0, mesh="fsdp=8"):
  """memory.plan of full fine-tuning against what the devices hold and the compiled step's memory analysis."""
  from ftjax import memory

  par = parallel.make_parallel("mesh", mesh)
  shardings = par.state_shardings(state0, sharding.rules_for(model))
  train_step = par.compile_train_step(
    lambda axis_name: step.make_train_step(model, task, tx, adversarial_config=tiny.adversarial_config()), shardings
  )
  state = par.put_state(state0, shardings)
  b = par.put_batch(batch(0, "causal_lm", model.config.vocab_size))
  analysis = train_step.lower(state, b).compile().memory_analysis()
  compiled = (
    analysis.argument_size_in_bytes
    + analysis.output_size_in_bytes
    - analysis.alias_size_in_bytes
    + analysis.temp_size_in_bytes
  )
  held = max(sharding.bytes_per_device((state.trainable, state.frozen, state.opt_state)).values())
  parts = memory.plan(
    model, task, trainability.rules_for("full"), sharding.parse_mesh(mesh, 8), batch_size=BATCH, max_length=LENGTH
  )
  planned = parts["frozen weights"] + parts["trainable weights"] + parts["optimiser state"]
  print(f"plan {parts}; held {held:,}; compiled step {compiled:,} ({analysis})", file=sys.stderr)
  return {
    "planned_state": planned,
    "held_state": held,
    "planned_total": parts["total"],
    "compiled_total": compiled,
    "temp": analysis.temp_size_in_bytes,
  }


def main():
  tiny.fast_compiles()
  which = sys.argv[1]
  report = {"devices": jax.device_count()}
  if which == "llama":
    with tempfile.TemporaryDirectory() as folder:
      path = write_llama(Path(folder))
      report["full"], setup_ = compare("llama full", path, "causal_lm", "full")
      report["checkpoint"] = checkpoint_across_meshes(*setup_, "causal_lm")
      report["plan"] = plan_vs_measured(*setup_)
  else:
    lora = PeftSpec(lora_targets=r"attention/self/(query|value)$", lora_rank=8, lora_alpha=16.0, lora_dropout=0.1)
    report["lora_fgm"], _ = compare("minilm lora+fgm", "minilm", "classification", "lora", lora, "fgm")
    report["full"], _ = compare("minilm full", "minilm", "classification", "full")
  print("REPORT " + json.dumps(report))


if __name__ == "__main__":
  main()

"""Accelerator step-time benchmark: ftjax against PyTorch + PEFT in bf16, on a BERT-base and a ~1B Llama.

  python scripts/bench.py --device                        # one GPU: both models, full and LoRA (H100: ~5 min?)
  python scripts/bench.py --device --device-models=bert   # one model only (--device-modes=lora: one mode)
  python scripts/bench.py --device --quick --out /tmp/b   # tiny models on CPU: the smoke test (tests/test_bench.py)

`scripts/bench.py --device` hands its arguments to `main` here. Without a GPU (jax.devices() all CPU) it
stops with one error line and writes nothing, unless --quick; on a TPU too (PyTorch would have no side).
JAX and PyTorch share the GPU, so JAX does not preallocate (XLA_PYTHON_CLIENT_PREALLOCATE=false unless
set). Where the two training states of a (model, mode) would not fit the device together (PyTorch's peak
after its warm-up + ftjax's compiled step > 85% of the memory: likely the 1B Llama's full fine-tuning on
an 80 GB H100, where XLA:CPU's analysis of the ftjax step gives 13.8 GiB state + 30.3 GiB temporaries and
PyTorch's needs ~30 GiB by estimate), the group is timed one framework at a time (PyTorch, freed, then
ftjax), and the report says so; so is a group that ran out of memory anyway, once; --one-at-a-time does
it for every group.

The models (random weights, nothing downloaded), with the batch each trains on:
  bert:  BERT-base (12 layers, hidden 768, 12 heads, FFN 3072, vocab 30522, 110M parameters), two-class
         sequence classification, batch 32 × 128: the GLUE fine-tuning shape, and scripts/bench.py's;
  llama: Llama-3.2-1B's shape (16 layers, hidden 2048, 32 query / 8 key-value heads, FFN 8192, vocab
         128256, tied embeddings, 1.24B parameters), causal-LM loss on every token, batch 8 × 512.
Each (model, mode) builds ONE seeded random PyTorch model (transformers' own initialisation, float32, on
the device); ftjax's backbone is its state dict, mapped name by name as ftjax's loader maps a checkpoint
(`ftjax_backbone`); the classifier is bench_steps' seed-0 head on both sides. So both frameworks start
from the same weights: the first-step losses in the table agree up to bf16 rounding (and, for BERT,
dropout's different masks; tests/test_bench.py checks the float32 losses agree).

Modes, like with like (scripts/bench_steps.py builds both steps): full fine-tuning and LoRA (rank 8,
alpha 16, dropout 0, on the query and value projections: ftjax's lora method against PEFT's LoraConfig),
AdamW (lr 5e-5, weight decay 0.01, eps 1e-8) with global-norm clipping at 1.0, float32 master weights and
optimiser state, bf16 compute: ftjax's compute dtype bfloat16 against PyTorch's forward under
`torch.autocast(device, dtype=torch.bfloat16)`. Dropout: BERT's own 0.1 (hidden, attention and
classifier) on both sides; Llama has none. PyTorch runs eager (transformers' default SDPA attention,
AdamW's default foreach implementation); ftjax one jitted step.

Measured per (model, mode, framework): ftjax's compile time (`jit(...).lower(...).compile()`); the time
of the first warm-up step (PyTorch's includes its kernel selection); the median step time over --reps
steps after --warmup steps, the two frameworks ALTERNATING one step each (order reversed on odd
repetitions; one at a time where both do not fit, above), each step waited for (`block_until_ready` on the step's output; PyTorch's `loss.item()`
after the optimiser step, which synchronises the stream); tokens/s = B·T ÷ median; device memory:
PyTorch's `torch.cuda.max_memory_allocated()` from just before its model was built to the end of its
timing, ftjax's compiled step footprint from XLA's `memory_analysis()` (arguments + outputs − aliased +
temporaries: state, batch, activations), with JAX's process-wide `peak_bytes_in_use` after each model
in the notes where the device reports it.

Model FLOPs per step (`model_flops`, matmuls only, as scripts/bench_steps.py counts them): forward
  F = 2·B·T·N_mm + 4·B·L·T²·(heads·head_dim)
where N_mm is the number of weights that multiply activations (every dense layer; for a decoder also the
LM head, the tied embedding matrix here; embedding lookups, norms and softmax are not counted) and the
second term is QKᵀ and PV over the full T × T square (causal masking not discounted, as PaLM's MFU).
BERT: N_mm = L·(4H² + 2HI), the same F as bench_steps.forward_flops. Full fine-tuning: 3F (the backward
pass computes activation and weight gradients, 2F); LoRA: 2F (activation gradients only; the rank-8
factors are negligible). MFU = model FLOPs ÷ median step time ÷ the chip's dense bf16 peak (`PEAKS`,
by `jax.devices()[0].device_kind`); an unknown kind (a CPU included) is set against a bf16 matmul
measured in this run (`matmul_probe`), and the report says so.

Output: `<out>/bench_gpu.md` (default results/; below its hand-written findings: the table, device kind,
peak used, versions, command, date), rewritten after every (model, mode) so a run cut short still leaves
the finished rows; the last stdout line is
`RATIOS_DEVICE bert_full=… bert_lora=… llama_full=… llama_lora=…` (ftjax ms/step ÷ PyTorch ms/step; nan
where not run).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import math
import os
import re
import sys
import time
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without installing
from bench_steps import (  # noqa: E402
  LORA,
  PACKAGES,
  Contestant,
  classifier_params,
  copy_head,
  forward_flops,
  ftjax_train_contestant,
  median_ms,
  synthetic_batch,
  torch_lora,
  torch_train_contestant,
)
from ftjax import provenance  # noqa: E402
from ftjax.experiment import init_tree  # noqa: E402
from ftjax.models import build_model, loading  # noqa: E402
from ftjax.peft import PeftSpec  # noqa: E402
from ftjax.results import write_page  # noqa: E402
from ftjax.tasks import make_task  # noqa: E402

MODES = ("full", "lora")
FORWARDS = {"full": 3, "lora": 2}  # FLOPs per step in forward passes F (module docstring)

# model → (transformers config class, its arguments, batch, length), full size and --quick.
MODELS = {
  "bert": dict(
    config="BertConfig",  # the defaults are BERT-base: 12 layers, 768, 12 heads, 3072, vocab 30522
    full=dict(kwargs={}, batch=32, length=128),
    quick=dict(
      kwargs=dict(vocab_size=200, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64),
      batch=2,
      length=16,
    ),
  ),
  "llama": dict(
    config="LlamaConfig",
    full=dict(  # Llama-3.2-1B's shape
      kwargs=dict(
        vocab_size=128256,
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=64,
        tie_word_embeddings=True,
        rope_theta=500000.0,
        rms_norm_eps=1e-5,
        max_position_embeddings=131072,
      ),
      batch=8,
      length=512,
    ),
    quick=dict(
      kwargs=dict(
        vocab_size=256,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,  # as the accelerator run's
      ),
      batch=2,
      length=16,
    ),
  ),
}
# LoRA targets: the query and value projections on both sides.
LORA_TARGETS = {
  "bert": (LORA["targets_jax"], LORA["targets_torch"], "SEQ_CLS"),
  "llama": (r"self_attn/(q_proj|v_proj)$", ["q_proj", "v_proj"], "CAUSAL_LM"),
}

# Dense bf16 matmul peak per chip [TFLOP/s] (without 2:4 sparsity), by a pattern over
# jax.devices()[0].device_kind (first match wins). Sources:
#   H100 SXM 989.4, H200 the same chip: glennklockwood.com/garden/processors/h100 (BF16 matrix 989.4,
#     1978.9 sparse); H100 PCIe 756: NVIDIA's H100 table (1,513 with sparsity, "1/2 lower without");
#   H100 NVL 835: NVIDIA's H100 NVL product brief (1,671 with sparsity), not checked here;
#   A100 312: hmc-tech.com's A100 spec (BF16 tensor 311.87); L4 121: NVIDIA's L4 datasheet (242 with
#     sparsity; hmc-tech.com computes 125.3 at the 2040 MHz boost clock);
#   TPU v4 275, v5e 197, v5p 459: cloud.google.com/tpu/docs/v4, /v5e, /v5p-training ("peak compute per
#     chip (bf16)").
PEAKS = (
  (r"H100.*PCIe", 756.0),
  (r"H100 NVL", 835.0),
  (r"H100|H200|GH200", 989.4),
  (r"A100", 312.0),
  (r"\bL4\b", 121.0),
  (r"TPU v4", 275.0),
  (r"TPU v5 ?lite|TPU v5e", 197.0),
  (r"TPU v5p?$", 459.0),
)


def parse_args(argv=None):
  p = argparse.ArgumentParser(prog="scripts/bench.py --device", description=__doc__.split("\n")[0])
  p.add_argument("--device", action="store_true", help="this benchmark (scripts/bench.py hands --device runs here)")
  p.add_argument("--device-models", default=",".join(MODELS), help="comma-separated subset of " + ",".join(MODELS))
  p.add_argument("--device-modes", default=",".join(MODES), help="comma-separated subset of " + ",".join(MODES))
  p.add_argument("--reps", type=int, default=5, help="timed steps per contestant")
  p.add_argument("--warmup", type=int, default=2, help="untimed steps per contestant before timing")
  p.add_argument("--quick", action="store_true", help="tiny models, batch 2 × 16, 1 warm-up, 1 rep (runs on CPU)")
  p.add_argument("--out", default="results", help="folder for bench_gpu.md")
  p.add_argument(
    "--one-at-a-time",
    action="store_true",
    help="time each framework alone (PyTorch, then ftjax), not alternating, in every group (by default only where "
    "both would not fit the device together)",
  )
  args = p.parse_args(argv)
  for name, known in (("models", MODELS), ("modes", MODES)):
    chosen = [m for m in getattr(args, f"device_{name}").split(",") if m]
    if not chosen or set(chosen) - set(known):
      p.error(f"--device-{name}: {chosen} is not a non-empty subset of {','.join(known)}")
    setattr(args, name, chosen)
  if args.quick:
    args.reps, args.warmup = 1, 1
  if args.reps < 1 or args.warmup < 1:
    p.error(
      f"--reps and --warmup must be at least 1 (the first warm-up step gives the first loss), got {args.reps}, {args.warmup}"
    )
  return args


# --- the pure pieces --------------------------------------------------------------------------------


def accelerator_error(devices) -> str | None:
  """The one-line refusal when `devices` (jax.devices()) holds no GPU or TPU, else None."""
  if all(d.platform == "cpu" for d in devices):
    return f"no GPU/TPU: jax.devices() is {devices}; run on an accelerator, or --quick to smoke-test on CPU"
  return None


def chip_peak(device_kind: str) -> float | None:
  """The dense bf16 peak [TFLOP/s] of a `device_kind` in PEAKS, or None for a chip not listed."""
  return next((tflops for pattern, tflops in PEAKS if re.search(pattern, device_kind)), None)


def model_flops(hf_config: dict, batch: int, length: int) -> float:
  """Forward-pass model FLOPs F of one batch (module docstring); a step is FORWARDS[mode]·F."""
  if hf_config["model_type"] == "bert":
    return forward_flops(hf_config, batch, length)
  L, H, I = hf_config["num_hidden_layers"], hf_config["hidden_size"], hf_config["intermediate_size"]
  heads, kv_heads = hf_config["num_attention_heads"], hf_config["num_key_value_heads"]
  head_dim = hf_config.get("head_dim") or H // heads
  per_layer = H * heads * head_dim * 2 + H * kv_heads * head_dim * 2 + 3 * H * I  # q, o; k, v; gate, up, down
  n_mm = L * per_layer + H * hf_config["vocab_size"]  # + the LM head
  return 2 * batch * length * n_mm + 4 * batch * L * length**2 * heads * head_dim


def matmul_probe(n: int, reps: int = 5) -> float:
  """Measured bf16 N × N @ N × N throughput of a jitted jax matmul [TFLOP/s], the best of `reps`."""
  a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n)), jnp.bfloat16)
  mm = jax.jit(jnp.matmul)
  mm(a, a).block_until_ready()
  best = math.inf
  for _ in range(reps):
    t = time.perf_counter()
    mm(a, a).block_until_ready()
    best = min(best, time.perf_counter() - t)
  return 2 * n**3 / best / 1e12


# --- one model on both sides ------------------------------------------------------------------------


def hf_config(name: str, quick: bool) -> dict:
  """The config.json dict of `name` (MODELS), as transformers writes it."""
  import transformers

  size = MODELS[name]["quick" if quick else "full"]
  return getattr(transformers, MODELS[name]["config"])(**size["kwargs"]).to_dict()


def torch_model(config: dict, device, seed: int = 0):
  """A seeded, randomly initialised float32 transformers model for `config`, built on `device`:
  BertForSequenceClassification (two labels) or LlamaForCausalLM."""
  import torch
  import transformers

  cls = {"bert": transformers.BertForSequenceClassification, "llama": transformers.LlamaForCausalLM}
  kind = config["model_type"]
  hf = getattr(transformers, MODELS[kind]["config"]).from_dict({**config, "num_labels": 2})
  torch.manual_seed(seed)
  with torch.device(device):
    return cls[kind](hf).float()


def ftjax_backbone(model, model_type: str, state_dict) -> dict:
  """ftjax's backbone params for `model` from a transformers state dict (its backbone's names:
  `BertModel` for BERT, the whole `LlamaForCausalLM` for Llama), mapped and shape-checked as
  `ftjax.models.from_pretrained` maps a checkpoint; float32."""
  arch = loading.ARCHITECTURES[model_type]
  expected = traverse_util.flatten_dict(loading.abstract_params(model), sep="/")
  flat = {}
  for ours, theirs, transpose in arch.hf_names(model.config, state_dict.keys()):
    value = state_dict[theirs].detach().float().cpu().numpy()
    value = value.T if transpose else value
    if value.shape != expected[ours].shape:
      raise ValueError(f"{theirs} has shape {value.shape}, ftjax's {ours} needs {expected[ours].shape}")
    flat[ours] = jnp.asarray(value)
  unfilled = sorted(set(expected) - set(flat))
  if unfilled:
    raise ValueError(f"the state dict leaves ftjax params unset: {unfilled[:5]}")
  return traverse_util.unflatten_dict(flat, sep="/")


def batches(config: dict, batch: int, length: int, device) -> tuple[dict, dict]:
  """(ftjax batch of numpy arrays, PyTorch inputs on `device` with labels): the same synthetic tokens."""
  import torch

  data = synthetic_batch(config["vocab_size"], batch, length)
  keys = ("input_ids", "attention_mask", "token_type_ids")
  if config["model_type"] != "bert":  # causal LM: every token is a target (Hugging Face's shift inside)
    data = {**data, "labels": data["input_ids"].copy()}
    data.pop("token_type_ids")
    keys = ("input_ids", "attention_mask")
  inputs = {k: torch.from_numpy(data[k].astype(np.int64)).to(device) for k in keys + ("labels",)}
  return data, inputs


def both_sides(name: str, config: dict, mode: str, dtype, torch_device):
  """(ftjax model, task, tree, PyTorch model) of `name` for `mode`, from one random PyTorch model: the
  PyTorch side wrapped by PEFT for LoRA, ftjax's tree holding the same backbone (and head)."""
  jax_targets, torch_targets, task_type = LORA_TARGETS[name]
  peft = (
    PeftSpec(lora_targets=jax_targets, lora_rank=LORA["rank"], lora_alpha=LORA["alpha"])
    if mode == "lora"
    else PeftSpec()
  )
  model = build_model(config, dtype=dtype, peft=peft)
  reference = torch_model(config, torch_device)
  if name == "bert":
    task = make_task("classification", 2)
    backbone = ftjax_backbone(model, "bert", reference.bert.state_dict())
    head = classifier_params(config)
    copy_head(reference, head)
  else:
    task = make_task("causal_lm")
    backbone = ftjax_backbone(model, config["model_type"], reference.state_dict())
    head = {}
  tree = init_tree(model, task, backbone, seed=0)
  tree["head"] = head
  if mode == "lora":
    reference = torch_lora(reference, task_type, torch_targets)
  return model, task, tree, reference


def first_losses(name: str, config: dict, batch: int, length: int) -> tuple[float, float]:
  """(ftjax, PyTorch) loss of one deterministic float32 forward pass from the shared random weights, on
  the CPU: both sides compute the same function of the same weights exactly when these agree."""
  import torch

  from ftjax import step as ftstep

  model, task, tree, reference = both_sides(name, config, "full", jnp.float32, "cpu")
  data, inputs = batches(config, batch, length, "cpu")
  out = ftstep.apply_model(model, task, tree, jax.device_put(data), deterministic=True)
  loss_sum, count = task.loss(out, data)
  reference.eval()
  with torch.no_grad():
    theirs = reference(**inputs).loss.item()
  return float(loss_sum / count), theirs


# --- timing -------------------------------------------------------------------------------------------


def mean_loss(result) -> float:
  """A step's loss: ftjax's metrics (sum and count) or PyTorch's float."""
  if isinstance(result, dict):
    return float(result["loss_sum"]) / max(float(result["count"]), 1.0)
  return float(result)


def step_bytes(compiled) -> float:
  """Device memory of one compiled ftjax step: arguments + outputs − aliased (donated) + temporaries."""
  try:
    m = compiled.memory_analysis()
    return float(m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes)
  except Exception:  # a backend without the analysis
    return float("nan")


def jax_peak_bytes() -> float:
  stats = jax.devices()[0].memory_stats() or {}
  return float(stats.get("peak_bytes_in_use", float("nan")))


def time_group(name: str, mode: str, config: dict, args, torch_device, together: bool | None = None) -> dict:
  """{"ftjax", "torch"} for one (model, mode), each built, warmed up and timed; each Contestant gets
  first_s, first_loss, mem_bytes and alone. `together`: both timed alternately (one step each per
  repetition); False: one at a time, PyTorch's model freed before ftjax's first step; None: together
  unless, on a GPU, PyTorch's peak after its warm-up plus ftjax's compiled step footprint would exceed
  85% of the device's memory (the 1B Llama's full fine-tuning on an 80 GB card)."""
  import torch

  size = MODELS[name]["quick" if args.quick else "full"]
  cuda = torch_device.startswith("cuda")

  def free():
    gc.collect()
    if cuda:
      torch.cuda.empty_cache()

  free()
  if cuda:
    torch.cuda.reset_peak_memory_stats()
  model, task, tree, reference = both_sides(name, config, mode, jnp.bfloat16, torch_device)
  data, inputs = batches(config, size["batch"], size["length"], torch_device)
  ours = ftjax_train_contestant(model, task, tree, "lora" if mode == "lora" else "full", data)
  theirs = torch_train_contestant(reference, mode, inputs, torch_device.split(":")[0])
  del tree, reference  # the steps hold them now

  def warm_up(c: Contestant):
    for i in range(args.warmup):
      t = time.perf_counter()
      result = c.run()
      if i == 0:
        c.first_s, c.first_loss = time.perf_counter() - t, mean_loss(result)

  def alternate(order: list[Contestant]):
    for rep in range(args.reps):
      for c in order if rep % 2 == 0 else order[::-1]:
        c.timed()

  warm_up(theirs)
  ours.mem_bytes = step_bytes(ours.compiled)
  if together is None:  # would both fit? (ftjax's state is on the device already, its temporaries not yet)
    needed = torch.cuda.max_memory_allocated() + np.nan_to_num(ours.mem_bytes) if cuda else 0.0
    together = not cuda or needed < 0.85 * torch.cuda.get_device_properties(0).total_memory
  if together:
    warm_up(ours)
    alternate([ours, theirs])
  else:  # PyTorch's model, optimiser and cache go back to the device before ftjax's first step
    alternate([theirs])
  theirs.mem_bytes = torch.cuda.max_memory_allocated() if cuda else float("nan")
  theirs.run = None
  free()
  if not together:
    warm_up(ours)
    alternate([ours])
  ours.run = ours.compiled = None  # keep the numbers, free the state and executable
  free()
  ours.alone = theirs.alone = not together
  return {"ftjax": ours, "torch": theirs}


# --- report -------------------------------------------------------------------------------------------


def versions() -> dict[str, str]:
  import torch

  found = provenance.versions(PACKAGES)
  found["jax backend"] = getattr(jax.devices()[0].client, "platform_version", jax.devices()[0].platform)
  if torch.cuda.is_available():
    found["torch CUDA"] = f"{torch.version.cuda} (cuDNN {torch.backends.cudnn.version()})"
  return found


def ratios(results: dict) -> dict[str, float]:
  """{"bert_full": ftjax ms ÷ PyTorch ms, …} over every model and mode, nan where not run."""
  out = {}
  for name in MODELS:
    for mode in MODES:
      pair = results.get((name, mode))
      out[f"{name}_{mode}"] = median_ms(pair["ftjax"]) / median_ms(pair["torch"]) if pair else float("nan")
  return out


def report(args, results: dict, configs: dict, peak: tuple[float, str], notes: list[str], done: bool) -> str:
  device = jax.devices()[0]
  tflops, peak_source = peak
  lines = [
    f"Generated by `python {' '.join(sys.argv)}` on {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}"
    + ("." if done else f"; PARTIAL: {len(results)} of {len(args.models) * len(args.modes)} (model, mode) groups."),
    "",
    f"- Device: {device.device_kind} (jax platform {device.platform}, {len(jax.devices())} device(s); "
    f"the benchmark uses one).",
    f"- Peak used for MFU: {tflops:.1f} TFLOP/s dense bf16 ({peak_source}).",
    "- Versions: " + ", ".join(f"{k} {v}" for k, v in versions().items()) + ".",
    f"- XLA_FLAGS: `{os.environ.get('XLA_FLAGS') or '(none)'}`; XLA_PYTHON_CLIENT_PREALLOCATE: "
    f"`{os.environ.get('XLA_PYTHON_CLIENT_PREALLOCATE', '(unset)')}`.",
    f"- {args.warmup} warm-up + {args.reps} timed steps per contestant, ftjax and PyTorch alternating; medians.",
    "- bf16 compute, float32 master weights and AdamW state on both sides (ftjax dtype bfloat16; PyTorch "
    "`torch.autocast(device, dtype=torch.bfloat16)`); LoRA r=8, alpha 16 on query and value; BERT dropout 0.1, "
    "Llama none. Same random weights on both sides (scripts/bench_device.py).",
    "- Model FLOPs per step: F = 2·B·T·N_mm + 4·B·L·T²·(heads·head_dim) per forward pass (N_mm: weights in "
    "matmuls, LM head included); full 3F, LoRA 2F. Memory: PyTorch `max_memory_allocated`, ftjax the "
    "compiled step's XLA `memory_analysis` (arguments + outputs − donated + temporaries).",
  ]
  for name, config in configs.items():
    size = MODELS[name]["quick" if args.quick else "full"]
    lines.append(
      f"- {name}: {config['num_hidden_layers']} layers, hidden {config['hidden_size']}, FFN "
      f"{config['intermediate_size']}, vocab {config['vocab_size']}; batch {size['batch']} × {size['length']}."
    )
  lines += notes
  lines += [
    "",
    "| model | mode | framework | ms/step | ÷ PyTorch | tokens/s | model TFLOP | MFU | compile s | first step s "
    "| memory GB | first loss |",
    "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
  ]
  for (name, mode), pair in results.items():
    size = MODELS[name]["quick" if args.quick else "full"]
    tokens = size["batch"] * size["length"]
    flops = FORWARDS[mode] * model_flops(configs[name], size["batch"], size["length"])
    for framework in ("ftjax", "torch"):
      c = pair[framework]
      seconds = median_ms(c) / 1e3
      compile_s = "—" if math.isnan(c.compile_s) else f"{c.compile_s:.1f}"  # PyTorch eager compiles nothing
      lines.append(
        f"| {name} | {mode} | {framework} | {median_ms(c):.2f} | {median_ms(c) / median_ms(pair['torch']):.2f} "
        f"| {tokens / seconds:,.0f} | {flops / 1e12:.3f} | {100 * flops / seconds / (tflops * 1e12):.1f}% "
        f"| {compile_s} | {c.first_s:.2f} | {c.mem_bytes / 2**30:.2f} | {c.first_loss:.4f} |"
      )
  return "\n".join(lines) + "\n"


def ratios_line(results: dict) -> str:
  return "RATIOS_DEVICE " + " ".join(f"{k}={v:.3f}" for k, v in ratios(results).items())


def main(argv=None):
  args = parse_args(argv)
  # JAX would take 75% of the GPU's memory at its first use; PyTorch shares the device, so JAX grows on demand.
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  import torch
  import transformers

  warnings.filterwarnings("ignore", category=FutureWarning)  # transformers' deprecations, once per PEFT wrap
  transformers.logging.set_verbosity_error()
  transformers.logging.disable_progress_bar()
  devices = jax.devices()
  error = accelerator_error(devices)
  if error and not args.quick:
    raise SystemExit(error)
  platform_name = devices[0].platform
  torch_device = "cuda" if platform_name == "gpu" else "cpu"
  if torch_device == "cuda" and not torch.cuda.is_available():
    raise SystemExit(f"jax sees {devices[0].device_kind}, but torch {torch.__version__} sees no CUDA device")
  if platform_name == "tpu":
    raise SystemExit("a TPU: PyTorch has no side to run here (torch_xla is not used); run on a GPU")
  tflops = chip_peak(devices[0].device_kind)
  if tflops is not None:
    peak = (tflops, f"the {devices[0].device_kind} spec sheet's; scripts/bench_device.py PEAKS")
  else:
    n = 512 if args.quick else 8192
    tflops = matmul_probe(n)
    peak = (tflops, f"device kind {devices[0].device_kind!r} has no spec-sheet peak: a bf16 {n}² matmul measured now")
  print(f"{devices[0].device_kind}: {peak[0]:.1f} TFLOP/s bf16 ({peak[1]})", flush=True)
  out = Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  configs = {name: hf_config(name, args.quick) for name in args.models}
  results, notes = {}, []
  for name in args.models:
    for mode in args.modes:
      pair = None
      for together in (False,) if args.one_at_a_time else (None, False):
        try:
          pair = time_group(name, mode, configs[name], args, torch_device, together)
        except RuntimeError as e:  # torch.cuda.OutOfMemoryError, or XLA's RESOURCE_EXHAUSTED (JaxRuntimeError)
          if "RESOURCE_EXHAUSTED" not in str(e) and not isinstance(e, torch.cuda.OutOfMemoryError):
            raise
          how = "one at a time" if together is False else "together"
          notes.append(f"- {name} {mode}: out of device memory {how} ({type(e).__name__}: {str(e)[:160]}).")
          print(notes[-1], flush=True)
        gc.collect()  # the exception, and the frames holding the models, are gone here
        if torch_device == "cuda":
          torch.cuda.empty_cache()
        if pair is not None:
          if pair["ftjax"].alone:
            notes.append(f"- {name} {mode}: ftjax and PyTorch timed one at a time (PyTorch first), not alternating.")
          break
      if pair is None:
        continue
      results[(name, mode)] = pair
      print(
        f"{name:5s} {mode:4s} ftjax {median_ms(pair['ftjax']):8.2f} ms (compile {pair['ftjax'].compile_s:.1f} s)  "
        f"torch {median_ms(pair['torch']):8.2f} ms",
        flush=True,
      )
      done = (name, mode) == (args.models[-1], args.modes[-1])
      write_page(
        out / "bench_gpu.md", "ftjax vs PyTorch on an accelerator", report(args, results, configs, peak, notes, done)
      )
    if not math.isnan(jax_peak_bytes()):
      notes.append(
        f"- JAX `peak_bytes_in_use` after {name}: {jax_peak_bytes() / 2**30:.2f} GB (process high-water mark)."
      )
  write_page(
    out / "bench_gpu.md", "ftjax vs PyTorch on an accelerator", report(args, results, configs, peak, notes, True)
  )
  print(f"wrote {out / 'bench_gpu.md'}", flush=True)
  print(ratios_line(results), flush=True)

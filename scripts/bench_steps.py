"""The steps scripts/bench.py times and scripts/profile_step.py profiles (a module of theirs, not a script).

One contestant per framework and mode, on the same model and batch. Like with like: both sides load the
same checkpoint (the head too: PyTorch's classifier is copied from ftjax's), see the same synthetic
tokens, train with dropout p = 0.1 (LoRA dropout 0, PEFT's default), float32, AdamW with global-norm
clipping at 1.0 (scripts/bench.py runs PyTorch on 2 threads). FGM is each side's usual recipe: ftjax
perturbs the word-embedding *output* per example (ftjax/adversarial.py); PyTorch perturbs
`word_embeddings.weight` by ε·g/‖g‖ after the clean backward, runs a second forward/backward and
restores the matrix. Both are two forward-backward passes.

Model FLOPs, counted analytically (matmuls only: embeddings are lookups, norms and softmax are not
counted), with L layers, width H, FFN width I, B sequences of T tokens:
  forward F = 2·B·T·L·(4H² + 2HI) + 4·B·L·T²·H        (the dense layers, plus QKᵀ and PV)
  full: 3F (backward = 2× forward); LoRA and BitFit: 2F (activation gradients only; the rank-8 factors
  and biases are negligible); head: F; full + FGM: 6F (two forward-backward passes); inference: F.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

import ftjax
from ftjax import optim, step as ftstep, trainability, xla_cpu
from ftjax.experiment import init_tree
from ftjax.peft import PeftSpec
from ftjax.tasks import make_task

MODES = ("full", "lora", "bitfit", "head", "fgm", "infer", "bf16_full")
LR, WEIGHT_DECAY, MAX_GRAD_NORM, FGM_EPSILON = 5e-5, 0.01, 1.0, 1.0
LORA = dict(rank=8, alpha=16, targets_jax=r"attention/self/(query|value)$", targets_torch=["query", "value"])
# FLOPs per step in units of one forward pass F (the module docstring).
# What the benchmarks' timings depend on, by PyPI name (their reports list the versions).
PACKAGES = ("jax", "jaxlib", "flax", "optax", "torch", "transformers", "peft")
FORWARDS = {"full": 3, "lora": 2, "bitfit": 2, "head": 1, "fgm": 6, "infer": 1, "bf16_full": 3}


def mode_list(parser: argparse.ArgumentParser, text: str) -> list[str]:
  """--modes=a,b,c as a list, each one of MODES (else the parser's usage error)."""
  modes = [m for m in text.split(",") if m]
  unknown = set(modes) - set(MODES)
  if unknown:
    parser.error(f"--modes: unknown {sorted(unknown)}; known: {','.join(MODES)}")
  return modes


def forward_flops(hf_config: dict, batch: int, length: int) -> float:
  L, H, I = hf_config["num_hidden_layers"], hf_config["hidden_size"], hf_config["intermediate_size"]
  return 2 * batch * length * L * (4 * H * H + 2 * H * I) + 4 * batch * L * length**2 * H


def synthetic_batch(vocab: int, batch: int, length: int, seed: int = 0) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  return {
    "input_ids": rng.integers(min(1000, vocab // 2), vocab, (batch, length)).astype(np.int32),
    "attention_mask": np.ones((batch, length), np.int32),
    "token_type_ids": np.zeros((batch, length), np.int32),
    "labels": rng.integers(0, 2, batch).astype(np.int32),
    "weights": np.ones((batch,), np.float32),
  }


def classifier_params(hf_config: dict):
  """A seed-0 two-class head, shared by every contestant (PyTorch copies it into its classifier)."""
  from ftjax.models.outputs import EncoderOutput

  width = hf_config["hidden_size"]
  dummy = EncoderOutput(last_hidden_state=jnp.zeros((1, 1, width)), pooler_output=jnp.zeros((1, width)))
  return jax.device_get(make_task("classification", 2).head.init(jax.random.key(0), dummy, jnp.ones((1, 1)))["params"])


class Contestant:
  """One framework's step for one mode: `run()` takes one step and waits for it."""

  def __init__(self, name, run, compile_s=float("nan"), xla_flops=float("nan"), compiled=None):
    self.name, self.run, self.compile_s, self.xla_flops = name, run, compile_s, xla_flops
    self.compiled = compiled  # ftjax: the XLA executable (scripts/profile_step.py reads its HLO)
    self.times: list[float] = []
    self.rss_mb = float("nan")

  def timed(self):
    t = time.perf_counter()
    self.run()
    self.times.append(time.perf_counter() - t)


def median_ms(c: Contestant) -> float:
  """The contestant's median step time over its timed repetitions [ms]."""
  return 1e3 * statistics.median(c.times)


# --- ftjax -----------------------------------------------------------------------------------------


def optimizer_config():
  return ml_collections.ConfigDict(
    dict(
      learning_rate=LR,
      warmup_steps=0,
      warmup_ratio=0.0,
      schedule="constant",
      max_grad_norm=MAX_GRAD_NORM,
      adam_b1=0.9,
      adam_b2=0.999,
      adam_eps=1e-8,
      weight_decay=WEIGHT_DECAY,
      decay_embeddings=False,
      head_lr_multiplier=1.0,
      lora_plus_ratio=1.0,
      layer_decay=1.0,
    )
  )


def xla_flops(compiled) -> float:
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", float("nan"))) if cost else float("nan")


def ftjax_contestant(
  folder, mode: str, batch: dict, head_params, lowering: str = "unrolled", lora_dropout: float = 0.0
) -> Contestant:
  """ftjax's step for `mode`; `lowering`: dropout's threefry hash on CPU (ftjax/xla_cpu.py); `lora_dropout`:
  the LoRA input dropout of mode "lora" (0, PEFT's default, as PyTorch's side has it)."""
  method = {"full": "full", "fgm": "full", "bf16_full": "full", "infer": "full"}.get(mode, mode)
  dtype = jnp.bfloat16 if mode == "bf16_full" else jnp.float32
  peft = (
    PeftSpec(
      lora_targets=LORA["targets_jax"], lora_rank=LORA["rank"], lora_alpha=LORA["alpha"], lora_dropout=lora_dropout
    )
    if mode == "lora"
    else PeftSpec()
  )
  model, backbone = ftjax.from_pretrained(folder, dtype=dtype, peft=peft)
  task = make_task("classification", 2)
  tree = init_tree(model, task, backbone, seed=0)
  tree["head"] = head_params
  if mode == "infer":
    trainable, frozen = trainability.partition(tree, trainability.rules_for(method))
    dev_batch = jax.device_put(batch)
    fn = jax.jit(ftstep.make_eval_step(model, task))
    t = time.perf_counter()
    compiled = fn.lower(trainable, frozen, dev_batch).compile()
    compile_s = time.perf_counter() - t
    return Contestant(
      "ftjax",
      lambda: jax.block_until_ready(compiled(trainable, frozen, dev_batch)[0]),
      compile_s,
      xla_flops(compiled),
      compiled,
    )
  return ftjax_train_contestant(model, task, tree, method, batch, fgm=mode == "fgm", lowering=lowering)


def ftjax_train_contestant(
  model, task, tree: dict, method: str, batch: dict, fgm: bool = False, lowering: str = "unrolled"
) -> Contestant:
  """ftjax's jitted train step for `method` (a trainability preset) on `tree` ({"backbone", "head", and
  the method's collections}); `run()` takes one step, waits for it and returns its metrics."""
  trainable, frozen = trainability.partition(tree, trainability.rules_for(method))
  dev_batch = jax.device_put(batch)
  num_layers = model.config.num_hidden_layers
  tx, _ = optim.make_optimizer(optimizer_config(), trainable, 1000, num_layers)
  adversarial = ml_collections.ConfigDict(
    dict(
      method="fgm" if fgm else "none",
      epsilon=FGM_EPSILON,
      steps=1,
      step_size=0.0,
      weight=1.0,
      init_magnitude=0.0,
    )
  )
  fn = jax.jit(ftstep.make_train_step(model, task, tx, adversarial_config=adversarial, dropout=True), donate_argnums=0)
  holder = {"state": ftstep.create_state(trainable, frozen, tx, seed=0)}
  del trainable, frozen  # the state holds them (donated to the first step)
  t = time.perf_counter()
  with xla_cpu.threefry_lowering(lowering):  # "unrolled": dropout's hash as training runs use it (docs/performance.md)
    compiled = fn.lower(holder["state"], dev_batch).compile()
  compile_s = time.perf_counter() - t

  def run():
    holder["state"], metrics = compiled(holder["state"], dev_batch)
    metrics["loss_sum"].block_until_ready()
    return metrics

  return Contestant("ftjax", run, compile_s, xla_flops(compiled), compiled)


# --- PyTorch ---------------------------------------------------------------------------------------


def torch_contestant(folder, mode: str, batch: dict, head_params, autocast: bool = False) -> Contestant:
  """PyTorch's step for `mode`; with `autocast`, the forward pass runs under
  `torch.autocast("cpu", dtype=torch.bfloat16)` (the usual PyTorch bf16 recipe: float32 parameters and
  optimiser, bf16 matmuls; the backward pass follows the forward's dtypes)."""
  import torch
  from transformers import AutoModelForSequenceClassification

  torch.manual_seed(0)
  model = AutoModelForSequenceClassification.from_pretrained(str(folder), num_labels=2)
  copy_head(model, head_params)
  inputs = {k: torch.from_numpy(batch[k].astype(np.int64)) for k in ("input_ids", "attention_mask", "token_type_ids")}
  labels = torch.from_numpy(batch["labels"].astype(np.int64))
  if mode == "infer":
    if autocast:
      raise ValueError("torch_contestant: autocast is for the training modes, not infer")
    model.eval()

    def run_infer():
      with torch.inference_mode():
        model(**inputs).logits.sum().item()

    return Contestant("torch", run_infer)
  if mode == "lora":
    model = torch_lora(model, "SEQ_CLS", LORA["targets_torch"])
  elif mode in ("bitfit", "head"):
    for name, p in model.named_parameters():
      p.requires_grad_(name.startswith("classifier.") or (mode == "bitfit" and name.endswith("bias")))
  return torch_train_contestant(model, mode, {**inputs, "labels": labels}, "cpu" if autocast else None)


def copy_head(model, head_params) -> None:
  """Puts ftjax's classifier (`classifier_params`) into a transformers sequence classifier, in place."""
  import torch

  with torch.no_grad():  # Flax kernels are in × out; torch weights out × in
    model.classifier.weight.copy_(torch.from_numpy(np.asarray(head_params["classifier"]["kernel"]).T.copy()))
    model.classifier.bias.copy_(torch.from_numpy(np.array(head_params["classifier"]["bias"])))


def torch_lora(model, task_type: str, targets: list[str]):
  """`model` with PEFT's LoRA (rank, alpha of LORA; dropout 0, PEFT's default) on the `targets` modules."""
  import peft as hf_peft

  config = hf_peft.LoraConfig(
    task_type=task_type, r=LORA["rank"], lora_alpha=LORA["alpha"], lora_dropout=0.0, target_modules=targets
  )
  return hf_peft.get_peft_model(model, config)


def torch_train_contestant(model, mode: str, inputs: dict, autocast: str | None = None) -> Contestant:
  """PyTorch's train step on the parameters of `model` that require gradients; `inputs` (labels included)
  on the model's device. `autocast`: the device type ("cpu", "cuda") whose bf16 autocast the forward
  passes run under, or None for float32. `run()` takes one step and returns its loss (`.item()` waits
  for the step, optimiser update included, on any device)."""
  import contextlib

  import torch

  model.train()
  params = [p for p in model.parameters() if p.requires_grad]
  opt = torch.optim.AdamW(params, lr=LR, weight_decay=WEIGHT_DECAY, eps=1e-8)
  embedding = model.get_input_embeddings().weight
  compute = (lambda: torch.autocast(autocast, dtype=torch.bfloat16)) if autocast else contextlib.nullcontext

  def run():
    with compute():
      loss = model(**inputs).loss
    loss.backward()
    if mode == "fgm":  # the usual recipe: perturb the embedding matrix, second pass, restore
      backup = embedding.data.clone()
      norm = torch.linalg.vector_norm(embedding.grad)
      if torch.isfinite(norm) and norm > 0:
        embedding.data.add_(FGM_EPSILON * embedding.grad / norm)
      with compute():
        second = model(**inputs).loss
      second.backward()
      embedding.data = backup
    torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.item()

  return Contestant("torch", run)


def tiny_bert_folder() -> Path:
  """A random 2-layer BERT saved as an HF folder, for --quick (both frameworks load it)."""
  from transformers import BertConfig, BertModel
  import torch

  torch.manual_seed(0)
  config = BertConfig(
    vocab_size=200,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=64,
  )
  folder = Path(tempfile.mkdtemp(prefix="ftjax-bench-"))
  BertModel(config).save_pretrained(folder)
  return folder

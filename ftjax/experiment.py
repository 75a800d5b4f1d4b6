"""What a config builds: the backbone with its method, the tokenizer, the task, the initial parameters.

Shared by training, evaluation, prediction and export, so that every script rebuilds a run the same way.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp

from ftjax import models, trainability
from ftjax.errors import InputError
from ftjax.peft.spec import METHOD_COLLECTIONS, PeftSpec
from ftjax.tasks import Task, datasets, kinds, make_task
from ftjax.tasks.heads import POOLINGS

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def peft_spec(config) -> PeftSpec:
  """The architecture additions of `config.method` (nothing for full, head and bitfit)."""
  m = config.method
  return PeftSpec(
    lora_targets=config.lora.targets if m == "lora" else None,
    lora_rank=config.lora.rank,
    lora_alpha=config.lora.alpha,
    lora_dropout=config.lora.dropout,
    lora_rslora=config.lora.rslora,
    lora_dora=config.lora.dora,
    adapter=config.adapter.kind if m == "adapter" else None,
    adapter_size=config.adapter.size,
    prompt_length=config.prompt_length if m == "prompt" else 0,
    prefix_length=config.prefix_length if m == "prefix" else 0,
  )


@dataclasses.dataclass
class Experiment:
  model: object  # the Flax backbone (with its PEFT additions)
  tokenizer: object
  task: Task
  tree: dict  # {"backbone", "head", and the method's collections}: initial values
  rules: tuple[str, ...]  # trainability rules: config.trainable, then the method's preset

  @property
  def num_layers(self) -> int:
    c = self.model.config
    return getattr(c, "num_hidden_layers", None) or getattr(c, "n_layer")


def init_tree(model, task: Task, backbone: dict, seed: int) -> dict:
  """Initial method and head parameters around a loaded backbone.

  Method parameters are initialised with the real backbone in place (DoRA's magnitudes are the loaded
  kernels' norms; soft prompts copy loaded vocabulary rows)."""
  method_rng, head_rng = jax.random.split(jax.random.key(seed))
  ids = jnp.zeros((2, 8), jnp.int32)
  mask = jnp.ones_like(ids)
  outputs, method = model.apply(
    {"params": backbone}, ids, attention_mask=mask, mutable=list(METHOD_COLLECTIONS), rngs={"params": method_rng}
  )
  tree = {"backbone": backbone, **{k: v for k, v in method.items() if v}}
  inputs = {name: jnp.zeros((2,), jnp.int32) for name in task.head_inputs}  # e.g. entity positions (B,)
  tree["head"] = {} if task.head is None else task.head.init(head_rng, outputs, mask, **inputs)["params"]
  return tree


def build(config) -> Experiment:
  if config.dtype not in DTYPES:
    raise InputError(f"config key dtype: {config.dtype!r} is not one of {sorted(DTYPES)}")
  src = datasets.source(config)
  label_names = tuple(src.label_names(config))
  pooling = config.get("head_pooling", "pooler")  # runs saved before the key existed used the pooler
  if pooling not in POOLINGS:
    raise InputError(f"config key head_pooling: {pooling!r} is not one of {POOLINGS}")
  task = make_task(src.kind, len(label_names), label_names, config.head_dropout, pooling)
  model, backbone = models.from_pretrained(
    config.model, dtype=DTYPES[config.dtype], peft=peft_spec(config), remat=config.remat
  )
  if kinds.kind(src.kind).generates and not model.is_decoder:
    raise InputError(f"config key task.source: {config.task.source} needs a decoder; {config.model} is an encoder")
  tokenizer = models.load_tokenizer(config.model)
  if tokenizer.pad_token_id is None:  # GPT-2 has none; padding is masked anyway, EOS is the usual stand-in
    tokenizer.pad_token = tokenizer.eos_token
  tree = init_tree(model, task, backbone, config.seed)
  return Experiment(model, tokenizer, task, tree, trainability.rules_for(config.method, tuple(config.trainable)))


def load_config(workdir):
  """The config a run was trained with (workdir/config.json)."""
  import ml_collections

  file = Path(workdir).expanduser() / "config.json"
  if not file.is_file():
    raise FileNotFoundError(f"{file} does not exist: {workdir} is not an ftjax run folder")
  return ml_collections.ConfigDict(json.loads(file.read_text()))


def restore(workdir, config=None):
  """(config, experiment, trainable, frozen) of a finished run, with its best trained parameters (and,
  for a run started with `init_from`, the frozen weights it started from).

  The backbone is reloaded from where the run recorded it, and checked against the sha256 of its
  weights: a run whose backbone changed underneath it is refused rather than silently mis-evaluated."""
  from ftjax import checkpoints
  from ftjax.models.loading import backbone_reference

  workdir = Path(workdir).expanduser().resolve()
  config = config or load_config(workdir)
  exp = build(config)
  record = json.loads((workdir / "run.json").read_text())
  now = backbone_reference(config.model)["sha256"]
  if now != record["backbone"]["sha256"]:
    raise InputError(
      f"{workdir / 'run.json'}: the backbone {config.model} has changed since training "
      f"(sha256 {record['backbone']['sha256']} then, {now} now)"
    )
  trainable, frozen = trainability.partition(exp.tree, exp.rules)
  if config.get("init_from"):  # the frozen weights it started from are the earlier run's, never checkpointed
    from ftjax.loop import load_trained

    trainable, frozen = load_trained(config.init_from, trainable, frozen)
  manager = checkpoints.Checkpoints(workdir)
  trainable = manager.restore_trainable(trainable)
  manager.close()
  return config, exp, trainable, frozen

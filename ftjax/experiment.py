"""What a config builds: the backbone with its method, the tokenizer, the task, the initial parameters.

Shared by training, evaluation, prediction and export, so that every script rebuilds a run the same way.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp

from jax.sharding import NamedSharding

from ftjax import models, sharding, trainability
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


def placement(model, task: Task, rules, mesh, layout=(), param_dtype: str = "float32", seed: int = 0) -> dict:
  """{backbone path: (NamedSharding, dtype)} of a run on `mesh`, decided before any weight is read: laid
  out as the run's state will be (sharding.py: the config's `layout` rules, then the architecture's),
  trainable weights float32, frozen ones in `param_dtype` (as `frozen_weights` makes them).

  The few weights whose values the method's initialisation reads (DoRA's kernels, the vocabulary rows a
  soft prompt copies) are placed (None, float32), whole on the default device as the plain loader gives
  them, so `init_tree` computes exactly what it computes on one device; the loop lays them out after."""
  backbone = models.loading.abstract_params(model)

  def initialised(tree):  # what init_tree makes around a backbone, the backbone itself left out
    return {k: v for k, v in init_tree(model, task, tree, seed).items() if k != "backbone"}

  tree = {"backbone": backbone, **jax.eval_shape(initialised, backbone)}
  trains = trainability.trainable_paths(tree, rules)
  specs = sharding.param_specs(tree, sharding.rules_for(model, layout), dict(mesh.shape))
  if param_dtype not in DTYPES:
    raise InputError(f"config key param_dtype: {param_dtype!r} is not one of {sorted(DTYPES)}")
  read = read_at_init(initialised, backbone)
  where = {}
  for path in trainability.flatten(backbone):
    full = f"backbone/{path}"
    if path in read:
      where[path] = (None, jnp.float32)
    else:
      where[path] = (NamedSharding(mesh, specs[full]), jnp.float32 if trains[full] else DTYPES[param_dtype])
  return where


def read_at_init(fn, backbone) -> set[str]:
  """The paths of `backbone` whose values (not only shapes) `fn(backbone)` reads: the inputs that a
  backward sweep over its jaxpr reaches from the outputs (a call whose outputs are used counts all its
  inputs as read: an over-estimate, never an under-estimate)."""
  from jax.extend.core import Var

  closed = jax.make_jaxpr(fn)(backbone)
  live = {v for v in closed.jaxpr.outvars if isinstance(v, Var)}
  for eqn in reversed(closed.jaxpr.eqns):
    if any(v in live for v in eqn.outvars):
      live.update(v for v in eqn.invars if isinstance(v, Var))
  paths = ["/".join(str(k.key) for k in key_path) for key_path, _ in jax.tree_util.tree_flatten_with_path(backbone)[0]]
  return {path for path, var in zip(paths, closed.jaxpr.invars) if var in live}


def build(config, mesh=None) -> Experiment:
  """What `config` builds. With a `mesh` (the loop's, mesh mode) the backbone is read straight into the
  shards and dtypes of `placement`; without one (or with init_from_peft, whose import reshapes the model
  after loading) every weight is read whole, float32, onto the default device."""
  if config.dtype not in DTYPES:
    raise InputError(f"config key dtype: {config.dtype!r} is not one of {sorted(DTYPES)}")
  src = datasets.source(config)
  label_names = tuple(src.label_names(config))
  pooling = config.get("head_pooling", "pooler")  # runs saved before the key existed used the pooler
  if pooling not in POOLINGS:
    raise InputError(f"config key head_pooling: {pooling!r} is not one of {POOLINGS}")
  task = make_task(src.kind, len(label_names), label_names, config.head_dropout, pooling)
  peft_folder = config.get("init_from_peft", "")  # runs saved before the key existed have none
  if peft_folder and config.method != "lora":
    raise InputError(f"config key init_from_peft: a PEFT LoRA adapter needs method='lora', not {config.method!r}")
  spec = peft_spec(config)
  rules = trainability.rules_for(config.method, tuple(config.trainable))
  place = None
  if mesh is not None and not peft_folder:
    layout, param_dtype = tuple(config.get("sharding", ())), config.get("param_dtype", "float32")
    place = lambda model: placement(model, task, rules, mesh, layout, param_dtype, config.seed)  # noqa: E731
  model, backbone = models.from_pretrained(
    config.model,
    dtype=DTYPES[config.dtype],
    peft=dataclasses.replace(spec, lora_targets=None) if peft_folder else spec,
    remat=config.remat,
    placement=place,
  )
  if kinds.kind(src.kind).generates and not model.is_decoder:
    raise InputError(f"config key task.source: {config.task.source} needs a decoder; {config.model} is an encoder")
  tokenizer = models.load_tokenizer(config.model)
  if tokenizer.pad_token_id is None:  # GPT-2 has none; padding is masked anyway, EOS is the usual stand-in
    tokenizer.pad_token = tokenizer.eos_token
  if peft_folder:
    model, backbone, imported = import_peft(peft_folder, model, backbone, config.lora.dropout)
    if "pooler" in imported:  # PEFT trained it (modules_to_save): so does ftjax
      rules = ("train:^backbone/pooler/",) + rules
  tree = init_tree(model, task, backbone, config.seed)
  if peft_folder:
    tree = with_imported(tree, imported, peft_folder)
  return Experiment(model, tokenizer, task, tree, rules)


def import_peft(folder, model, backbone: dict, dropout: float):
  """(model with the adapter's LoRA, backbone, {"lora", "head"[, "pooler"]}) for config key init_from_peft.

  The adapter's targets, rank, alpha, rsLoRA and DoRA replace config.lora's; its head (modules_to_save)
  replaces the fresh one, and RoBERTa's classifier.dense the backbone's pooler (export.HEAD_LAYOUTS).
  `dropout` (config lora.dropout) applies when training continues, as the adapter's does in PEFT."""
  from ftjax import export

  try:
    spec, lora_tree, head_tree = export.import_peft_adapter(Path(folder).expanduser(), model)
  except (ValueError, KeyError) as e:
    raise InputError(f"config key init_from_peft: {e}") from None
  imported = {"lora": lora_tree, "head": dict(head_tree or {})}
  if "pooler" in imported["head"]:
    imported["pooler"] = imported["head"].pop("pooler")
    backbone = {**backbone, "pooler": imported["pooler"]}
    model = model.clone(add_pooling_layer=True)
  model = model.clone(peft=dataclasses.replace(spec, lora_dropout=dropout))
  return model, backbone, imported


def with_imported(tree: dict, imported: dict, folder) -> dict:
  """`tree` with the imported LoRA factors and head; a head shaped unlike the task's is refused."""
  tree = {**tree, "lora": imported["lora"]}
  if imported["head"]:
    shapes = lambda head: {path: tuple(v.shape) for path, v in trainability.flatten(head).items()}
    if shapes(tree["head"]) != shapes(imported["head"]):
      raise InputError(
        f"config key init_from_peft: the head in {folder} {shapes(imported['head'])} does not fit this task's "
        f"head {shapes(tree['head'])} (another number of labels?)"
      )
    tree["head"] = imported["head"]
  return tree


def from_peft(config, folder):
  """(config, experiment, trainable, frozen) of a PEFT LoRA adapter trained elsewhere, as `restore`
  gives them for a finished run: the base model and task of `config`, the adapter's factors and head."""
  config = copy.deepcopy(config)
  config.init_from_peft = str(folder)
  exp = build(config)
  trainable, frozen = trainability.partition(exp.tree, exp.rules)
  return config, exp, trainable, frozen


def for_inference(workdir, peft_folder, config):
  """What scripts/evaluate.py and predict.py score: a finished run (`workdir`), or a PEFT adapter
  (`peft_folder`, with `config` naming the base model and task)."""
  if peft_folder:
    if config is None:
      raise InputError("--init_from_peft needs --config=configs/<file>.py[:arg] (the base model and the task)")
    return from_peft(config, peft_folder)
  if not workdir:
    raise InputError("give --workdir (a finished run), or --init_from_peft with --config")
  return restore(workdir, config)


def frozen_weights(frozen: dict, param_dtype: str = "float32") -> dict:
  """The weights that do not train in `param_dtype` (config key param_dtype): bfloat16 halves their
  memory; trainable ones stay float32, and so do the optimiser state and gradients."""
  if param_dtype not in DTYPES:
    raise InputError(f"config key param_dtype: {param_dtype!r} is not one of {sorted(DTYPES)}")
  dtype = DTYPES[param_dtype]
  return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, frozen)


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
  record = json.loads((workdir / "run.json").read_text())
  if config.task.source == "table" and not config.task.get("label_names"):
    # The run's label set, so that predicting or scoring needs none of its training files.
    with config.unlocked():
      config.task.label_names = tuple(record["task"]["label_names"])
  exp = build(config)
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
  frozen = frozen_weights(frozen, config.get("param_dtype", "float32"))
  manager = checkpoints.Checkpoints(workdir)
  trainable = manager.restore_trainable(trainable)
  manager.close()
  return config, exp, trainable, frozen

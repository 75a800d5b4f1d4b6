"""Where parameters live: a named device mesh, and rules over parameter paths that split arrays over it.

The mesh has three named axes, sized by `config.mesh`, e.g. `"data=-1,fsdp=8,tensor=1"` (an axis not
named has size 1; one size may be -1: the devices left over):

  data    plain data parallelism: batch rows split, parameters replicated;
  fsdp    batch rows split too, and each parameter split along one dimension (ZeRO-3 / FSDP): XLA
          gathers a weight where a layer needs it and reduce-scatters its gradient;
  tensor  Megatron-style tensor parallelism: column-parallel q/k/v/up/gate kernels (output features
          split), row-parallel output/down kernels (input features split), vocabulary-parallel embeddings.

Batches are split over (data, fsdp). A sharding rule is `"<regex>:<spec>"`: the regex is searched in a
parameter's path (as in trainability.py: `backbone/layers_3/self_attn/q_proj/kernel`, `lora/.../a`,
`head/classifier/kernel`); the spec names, per array dimension, the mesh axis it is split over, several
joined by `+` (`fsdp+tensor`: over both), or `-` (not split); an empty spec replicates the array. The config's `sharding` rules come first, then the
architecture's `SHARDING` (beside its model code), then `PEFT_AND_HEADS` below; the first match decides,
so an ablation of the layout is one line, e.g. everything replicated (pure data parallelism):
`--config.sharding='(".*:",)'`. Every leaf must be decided; a config rule that matches no parameter, and a
dimension that its axis does not divide, are errors naming the parameter, its shape and the rule.
Optimiser state is laid out as its parameter (Adam's moments are parameter-shaped); scalars replicate.
"""

from __future__ import annotations

import re

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from ftjax import trainability
from ftjax.errors import InputError

AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")  # batch rows are split over both: FSDP is data parallelism too
NOT_SPLIT = "-"

# Method parameters and task heads, for every architecture: they are what trains (and carries Adam's
# state), so they are split over every device of a model replica, fsdp and tensor together, along their
# wide dimension (the model's features); their rank / bottleneck / label dimension is small and stays
# whole. Prefix key/value tensors, DoRA magnitudes and biases are vectors or tiny: replicated.
PEFT_AND_HEADS = (
  r"^lora/.*/a$:fsdp+tensor,-",
  r"^lora/.*/b$:-,fsdp+tensor",
  r"^lora/.*/magnitude$:",
  r"^adapter/.*_down_kernel$:fsdp+tensor,-",
  r"^adapter/.*_up_kernel$:-,fsdp+tensor",
  r"^adapter/.*_bias$:",
  r"^prompt/:-,fsdp+tensor",
  r"^prefix/:",
  r"^head/.*/kernel$:fsdp+tensor,-",
  r"^head/.*/bias$:",
)


class ShardingError(InputError):
  """A malformed mesh or rule, a parameter no rule decides, or a dimension its axis does not divide."""


def parse_mesh(text: str, num_devices: int) -> dict[str, int]:
  """{"data": d, "fsdp": f, "tensor": t} from "data=-1,fsdp=8", checked against the device count."""
  sizes = {axis: 1 for axis in AXES}
  named = set()
  for part in filter(None, (p.strip() for p in str(text).split(","))):
    axis, sep, size = part.partition("=")
    axis = axis.strip()
    if not sep or axis not in AXES:
      raise ShardingError(f"config key mesh: {part!r} must read <axis>=<size> with axis one of {AXES} (in {text!r})")
    if axis in named:
      raise ShardingError(f"config key mesh: axis {axis!r} is named twice in {text!r}")
    try:
      sizes[axis] = int(size)
    except ValueError:
      raise ShardingError(f"config key mesh: size {size!r} of axis {axis!r} is not an integer (in {text!r})") from None
    if sizes[axis] == 0 or sizes[axis] < -1:
      raise ShardingError(f"config key mesh: size of axis {axis!r} must be positive or -1, got {sizes[axis]}")
    named.add(axis)
  free = [a for a in AXES if sizes[a] == -1]
  if len(free) > 1:
    raise ShardingError(f"config key mesh: only one axis may be -1, got {free} in {text!r}")
  fixed = int(np.prod([s for s in sizes.values() if s != -1]))
  if free:
    if num_devices % fixed:
      raise ShardingError(
        f"config key mesh: {text!r} fixes {fixed} devices per {free[0]} slice, which does not divide the "
        f"{num_devices} devices"
      )
    sizes[free[0]] = num_devices // fixed
  elif fixed != num_devices:
    raise ShardingError(
      f"config key mesh: the sizes of {text!r} multiply to {fixed}, but there are {num_devices} devices"
    )
  return sizes


def make_mesh(text: str = "data=-1", devices=None) -> Mesh:
  """The (data, fsdp, tensor) mesh over `devices` (default: every process's devices, by process, so each
  process's devices hold a contiguous block of batch rows)."""
  devices = list(jax.devices() if devices is None else devices)
  sizes = parse_mesh(text, len(devices))
  return Mesh(np.array(devices).reshape([sizes[a] for a in AXES]), AXES)


def parse_rules(rules) -> list[tuple[re.Pattern, tuple[tuple[str, ...], ...] | None, str]]:
  """(regex, spec, rule text): spec holds per dimension the axes it is split over (none: `()`); spec None
  means replicated (an empty spec)."""
  parsed = []
  for rule in rules:
    pattern, sep, spec_text = str(rule).rpartition(":")
    if not sep:
      raise ShardingError(f"sharding rule {rule!r} must read '<regex>:<spec>', spec e.g. 'fsdp,tensor' or empty")
    try:
      regex = re.compile(pattern)
    except re.error as e:
      raise ShardingError(f"sharding rule {rule!r}: bad regex: {e}") from None
    spec = None
    if spec_text.strip():
      entries = [e.strip() for e in spec_text.split(",")]
      spec = tuple(() if e == NOT_SPLIT else tuple(a.strip() for a in e.split("+")) for e in entries)
    named = [a for axes in spec or () for a in axes]
    for axis in named:
      if axis not in AXES:
        raise ShardingError(f"sharding rule {rule!r}: unknown mesh axis {axis!r}; axes are {AXES} or '-'")
    if len(named) != len(set(named)):
      raise ShardingError(f"sharding rule {rule!r} splits two dimensions over the same axis")
    parsed.append((regex, spec, str(rule)))
  return parsed


def rules_for(model, overrides=()) -> tuple[str, ...]:
  """The config's rules, then the architecture's `SHARDING`, then `PEFT_AND_HEADS`."""
  from ftjax.models.loading import ARCHITECTURES

  arch = next((a for a in ARCHITECTURES.values() if isinstance(model, a.Model)), None)
  if arch is None or not hasattr(arch, "SHARDING"):
    raise ShardingError(f"{type(model).__name__} has no default SHARDING rules (add them beside its model code)")
  return tuple(overrides) + tuple(arch.SHARDING) + PEFT_AND_HEADS


def param_specs(tree: dict, rules, mesh_sizes: dict[str, int], checked=()) -> dict[str, P]:
  """path → PartitionSpec for every leaf of `tree` (arrays or shape structs). Raises, naming parameters
  and rules, if a leaf matches no rule, a spec has the wrong rank or an axis does not divide a dimension;
  and if one of the rules in `checked` (the config's own) matches no parameter."""
  parsed = parse_rules(rules)
  flat = trainability.flatten(tree)
  specs, undecided, used = {}, [], set()
  for path, leaf in flat.items():
    shape = tuple(np.shape(leaf))
    match = next(((spec, rule) for regex, spec, rule in parsed if regex.search(path)), None)
    if match is None:
      undecided.append(f"{path} {shape}")
      continue
    spec, rule = match
    used.add(rule)
    if spec is None:
      specs[path] = P()
      continue
    if len(spec) != len(shape):
      raise ShardingError(f"sharding rule {rule!r} gives {len(spec)} dimensions for parameter {path} of shape {shape}")
    for dim, (size, axes) in enumerate(zip(shape, spec)):
      parts = int(np.prod([mesh_sizes[a] for a in axes]))
      if size % parts:
        named = "×".join(f"{a}={mesh_sizes[a]}" for a in axes)
        raise ShardingError(
          f"parameter {path} of shape {shape}: dimension {dim} ({size}) is not divisible by mesh axis "
          f"{named} (rule {rule!r})"
        )
    # an axis of size 1 splits nothing: left out, a data-only mesh compiles the replicated program of old
    split = [tuple(a for a in axes if mesh_sizes[a] > 1) for axes in spec]
    split = [None if not axes else axes[0] if len(axes) == 1 else axes for axes in split]
    specs[path] = P(*split) if any(split) else P()
  if undecided:
    raise ShardingError(
      f"{len(undecided)} parameters match no sharding rule, e.g. {undecided[:3]}; add a rule to config key sharding"
    )
  unused = [r for r in checked if str(r) not in used]
  if unused:
    raise ShardingError(f"config key sharding: rule {unused[0]!r} matches no parameter")
  return specs


def opt_state_specs(opt_state, specs: dict[str, P], shapes: dict[str, tuple]):
  """A pytree of PartitionSpecs over `opt_state`: a leaf whose dict keys spell a parameter's path (and
  shape) is laid out as that parameter, every other leaf (step counts) replicated."""

  def spec(key_path, leaf):
    path = "/".join(str(k.key) for k in key_path if isinstance(k, jax.tree_util.DictKey))
    if path in specs and tuple(np.shape(leaf)) == shapes[path]:
      return specs[path]
    return P()

  return jax.tree_util.tree_map_with_path(spec, opt_state)


def state_shardings(state, rules, mesh: Mesh, checked=()):
  """NamedShardings for a TrainState (same structure): trainable and frozen by the rules, optimiser state
  as its parameters, step and rng replicated."""
  sizes = dict(mesh.shape)
  trainable = param_specs(state.trainable, rules, sizes, ())
  frozen = param_specs(state.frozen, rules, sizes, ())
  if checked:  # a config rule must match some parameter, trainable or frozen
    param_specs(trainability.combine(state.trainable, state.frozen), rules, sizes, checked)
  shapes = {p: tuple(np.shape(v)) for p, v in trainability.flatten(state.trainable).items()}
  named = lambda specs: jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=_is_spec)  # noqa: E731
  return state.replace(
    step=named(P()),
    trainable=named(trainability.unflatten(trainable)),
    frozen=named(trainability.unflatten(frozen)),
    opt_state=named(opt_state_specs(state.opt_state, trainable, shapes)),
    rng=named(P()),
  )


def _is_spec(x) -> bool:
  return isinstance(x, P)


def put(tree, shardings):
  """Host (or device) arrays onto their shardings, each device receiving only its slice: works across
  processes as long as every process holds the same values."""

  def one(x, sharding):
    if isinstance(x, jax.Array) and x.sharding == sharding:
      return x
    x = np.asarray(x) if not isinstance(x, jax.Array) else x
    return jax.make_array_from_callback(np.shape(x), sharding, lambda index: np.asarray(x[index]))

  return jax.tree.map(one, tree, shardings)


def bytes_per_device(tree) -> dict:
  """{device: bytes of `tree` it holds}, summed over the addressable shards of every array."""
  held: dict = {}
  for leaf in jax.tree.leaves(tree):
    for shard in leaf.addressable_shards:
      held[shard.device] = held.get(shard.device, 0) + shard.data.nbytes
  return held

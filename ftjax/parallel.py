"""Data parallelism: the same step on every local device, each on its slice of the batch.

`make_parallel(mode)` returns a `Parallel`; the loop uses only its methods, so switching modes is one
config line and the step function (step.py) stays the same pure `train_step(state, batch)`.

  "mesh" (default)  `jax.jit` over the (data, fsdp, tensor) `Mesh` of `config.mesh` (sharding.py):
                    batches are `NamedSharding(mesh, P(("data", "fsdp")))` (rows split over devices),
                    the state is laid out by the sharding rules (replicated on a data-only mesh).
                    XLA inserts the all-reduce of gradients and metric sums (and, with fsdp or tensor
                    axes, the gathers and reduce-scatters of weights) itself; the step needs no axis name.
                    With `jax_threefry_partitionable` (the default since jax 0.5) random bits depend
                    only on the key and the element's position, so dropout masks equal a single
                    device's and the run is the single-device run, up to summation order.
  "pmap"            `jax.pmap` with axis_name "batch": the state carries a leading device axis (one
                    copy per device), a batch is reshaped to [devices, B / devices, ...], and the step
                    psums gradients and sums over "batch". Each device folds its index into the dropout
                    key, so masks differ from a single-device run (results agree with dropout off).
  "none"            plain `jax.jit` on the first device.

Train metrics come back as device scalars (not synced to the host): for pmap they are device 0's copy
of the psum'd values, which every device holds.

Multi-host (several processes, each with its own devices), mesh mode:
  1. every process calls `initialize_distributed` (scripts do, from the FTJAX_* environment or config
     key `distributed`) before any other jax call; `jax.devices()` then lists all processes' devices
     and the mesh spans them;
  2. each process reads its own shard of the data: the input pipeline's
     `shard_index=jax.process_index(), num_shards=jax.process_count()`, with a per-process batch of
     `global_batch / jax.process_count()` rows;
  3. `put_batch` turns the process-local rows into one global array with
     `jax.make_array_from_process_local_data` (on one process this is a plain sharded device_put);
  4. the state is built identically on every process (same seed, same backbone), so `put_state` gives
     each device its slices of the same values; checkpoints take the sharded arrays as they are (each
     process writes its own shards: `checkpointable`), and `to_host` all-gathers batch-sharded outputs.
pmap mode runs multi-host as well (pmap maps over local devices and psums over all), with each process
feeding its local batch.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from ftjax import sharding as layout
from ftjax.errors import InputError

MODES = ("mesh", "pmap", "none")
# Batch entries the host keeps (to map predictions back to examples); the device step never sees them.
HOST_ONLY_KEYS = ("example_index",)
PMAP_AXIS = "batch"


@dataclasses.dataclass(frozen=True)
class Parallel:
  mode: str
  devices: tuple  # this process's devices that take part (one for "none")
  mesh: Mesh | None  # mesh mode only: all processes' devices, axes (data, fsdp, tensor)

  @property
  def num_devices(self) -> int:
    """Devices that share a global batch (all processes' in mesh mode)."""
    return self.mesh.size if self.mesh is not None else len(self.devices)

  # --- shardings -----------------------------------------------------------------------------------

  def _replicated(self):
    return NamedSharding(self.mesh, P()) if self.mode == "mesh" else None

  def _batch_sharding(self):
    return NamedSharding(self.mesh, P(layout.BATCH_AXES)) if self.mode == "mesh" else None

  def state_shardings(self, state, rules, checked=()):
    """The state's NamedShardings by the sharding `rules` (mesh mode; None in the others). Raises for a
    leaf no rule decides or a dimension its axis does not divide, before anything compiles."""
    return layout.state_shardings(state, rules, self.mesh, checked) if self.mode == "mesh" else None

  def _pmap_sharding(self):
    """Leading axis over the local devices, as pmap lays out its inputs."""
    return NamedSharding(Mesh(np.array(self.devices), (PMAP_AXIS,)), P(PMAP_AXIS))

  # --- compiled steps ------------------------------------------------------------------------------

  def compile_train_step(self, make_step: Callable[[str | None], Callable], shardings=None) -> Callable:
    """`make_step(axis_name)` → pure `train_step(state, batch)`; returns it compiled once, state donated.
    Mesh mode: the state in and out on `shardings` (from `state_shardings`; None: replicated)."""
    if self.mode == "pmap":
      step = jax.pmap(make_step(PMAP_AXIS), axis_name=PMAP_AXIS, donate_argnums=(0,))

      def pmapped(state, batch):
        state, metrics = step(state, batch)
        return state, jax.tree.map(lambda x: x[0], metrics)  # identical on every device (psum'd)

      return pmapped
    if self.mode == "mesh":
      rep = self._replicated()
      state = rep if shardings is None else shardings
      return jax.jit(
        make_step(None), in_shardings=(state, self._batch_sharding()), out_shardings=(state, rep), donate_argnums=(0,)
      )
    return jax.jit(make_step(None), donate_argnums=(0,))

  def compile_eval_step(self, eval_step: Callable, shardings=None) -> Callable:
    """`eval_step(trainable, frozen, batch) -> (outputs, sums)` compiled: outputs stay sharded along the
    batch (read them with `to_host`); the sums are device scalars over the whole global batch. Mesh mode:
    trainable and frozen on the state `shardings`' (None: replicated)."""
    if self.mode == "pmap":

      def summed(trainable, frozen, batch):
        outputs, sums = eval_step(trainable, frozen, batch)
        return outputs, jax.lax.psum(sums, PMAP_AXIS)

      step = jax.pmap(summed, axis_name=PMAP_AXIS)

      def pmapped(trainable, frozen, batch):
        outputs, sums = step(trainable, frozen, batch)
        return outputs, jax.tree.map(lambda x: x[0], sums)

      return pmapped
    if self.mode == "mesh":
      rep = self._replicated()
      params = (rep, rep) if shardings is None else (shardings.trainable, shardings.frozen)
      return jax.jit(eval_step, in_shardings=(*params, self._batch_sharding()))
    return jax.jit(eval_step)

  # --- moving data ---------------------------------------------------------------------------------

  def put_state(self, state: Any, shardings=None) -> Any:
    """The state on the devices: on `shardings` or replicated (mesh; each device receives only its
    slices), one stacked copy per device (pmap)."""
    if self.mode == "mesh":
      if shardings is not None:
        return layout.put(state, shardings)
      if jax.process_count() > 1:  # each process gives its devices their copies of the same values
        return layout.put(state, jax.tree.map(lambda _: self._replicated(), state))
      return jax.device_put(state, self._replicated())
    if self.mode == "pmap":
      n = len(self.devices)
      stacked = jax.tree.map(lambda x: np.broadcast_to(np.asarray(x), (n,) + np.shape(x)), state)
      return jax.device_put(stacked, self._pmap_sharding())
    return jax.device_put(state, self.devices[0])

  def get_state(self, state: Any) -> Any:
    """Host (numpy) pytree of one copy of the state (all processes' shards gathered)."""
    if self.mode == "pmap":
      state = jax.tree.map(lambda x: x[0], state)
    if self.mode == "mesh" and jax.process_count() > 1:
      from jax.experimental import multihost_utils

      return multihost_utils.process_allgather(state, tiled=True)
    return jax.device_get(state)

  def checkpointable(self, state: Any) -> Any:
    """What checkpoints save: a host copy of one device's state; with several processes (mesh), the
    sharded arrays themselves, each process writing its own shards (no process holds them all)."""
    return state if self.mode == "mesh" and jax.process_count() > 1 else self.get_state(state)

  def put_batch(self, batch: dict) -> dict:
    """This process's rows of a batch onto its devices; host-only keys (`example_index`) dropped."""
    batch = {k: v for k, v in batch.items() if k not in HOST_ONLY_KEYS}
    rows = {np.shape(v)[0] for v in batch.values()}
    if len(rows) != 1:
      raise ValueError(f"batch entries disagree on the number of rows: { {k: np.shape(v) for k, v in batch.items()} }")
    rows = rows.pop()
    # devices that take different rows: tensor-parallel devices share theirs
    splits = len(self.devices) if self.mode != "mesh" else self.mesh.shape["data"] * self.mesh.shape["fsdp"]
    local = splits // jax.process_count() if self.mode == "mesh" else splits
    if rows % local:
      raise InputError(
        f"batch size {rows * jax.process_count()} (this process: {rows} rows) is not "
        f"divisible by the {local * jax.process_count()} devices of parallel mode "
        f"{self.mode!r} that split it (mesh axes data × fsdp); choose a multiple of that"
      )
    if self.mode == "mesh":
      sharding = self._batch_sharding()
      return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}
    if self.mode == "pmap":
      n = len(self.devices)
      stacked = {k: np.asarray(v).reshape((n, rows // n) + np.shape(v)[1:]) for k, v in batch.items()}
      return jax.device_put(stacked, self._pmap_sharding())
    return jax.device_put(batch, self.devices[0])

  def to_host(self, x: Any) -> Any:
    """numpy copies of device outputs; pmap's leading device axis folded back into the batch."""
    if self.mode == "mesh" and jax.process_count() > 1:
      from jax.experimental import multihost_utils

      x = multihost_utils.process_allgather(x, tiled=True)

    def fold(a):
      a = np.asarray(a)
      return a.reshape((-1,) + a.shape[2:]) if self.mode == "pmap" and a.ndim >= 2 else a

    return jax.tree.map(fold, x)


def make_parallel(mode: str = "mesh", mesh: str = "data=-1") -> Parallel:
  """`mesh` (mesh mode only): the axis sizes, e.g. "data=2,fsdp=4" (sharding.py).

  Scripts that score a finished run use `for_scoring`: one device, or the mesh when processes are several."""
  if mode == "mesh":
    return Parallel(mode, tuple(jax.local_devices()), layout.make_mesh(mesh))
  if mode == "pmap":
    return Parallel(mode, tuple(jax.local_devices()), None)
  if mode == "none":
    return Parallel(mode, (jax.local_devices()[0],), None)
  raise InputError(f"config key parallel: parallel mode must be one of {MODES}, got {mode!r}")


# How a process learns its place in a multi-process run where jax cannot find the cluster by itself.
DISTRIBUTED_ENV = ("FTJAX_COORDINATOR", "FTJAX_NUM_PROCESSES", "FTJAX_PROCESS_ID")


def initialize_distributed(requested: bool = False, environ=None) -> bool:
  """Calls `jax.distributed.initialize` (before any other jax call) when `requested` (config key
  `distributed`) or when the environment sets FTJAX_COORDINATOR (host:port of process 0),
  FTJAX_NUM_PROCESSES and FTJAX_PROCESS_ID, all three; without them jax finds the cluster itself (TPU
  pods, SLURM, Kubernetes). Returns whether it initialised. InputError naming the variable when only
  some are set or one is malformed."""
  import os

  environ = os.environ if environ is None else environ
  given = {k: environ[k] for k in DISTRIBUTED_ENV if environ.get(k)}
  if given and len(given) < len(DISTRIBUTED_ENV):
    missing = [k for k in DISTRIBUTED_ENV if k not in given]
    raise InputError(
      f"environment variable {missing[0]} is not set, but {sorted(given)} are: set all of {DISTRIBUTED_ENV} "
      "(or none, with --config.distributed=true, to let jax find the cluster)"
    )
  if not given and not requested:
    return False
  kwargs = {}
  if given:
    try:
      num, index = int(given["FTJAX_NUM_PROCESSES"]), int(given["FTJAX_PROCESS_ID"])
    except ValueError:
      raise InputError(
        f"environment variables FTJAX_NUM_PROCESSES and FTJAX_PROCESS_ID must be integers: {given}"
      ) from None
    if not 0 <= index < num:
      raise InputError(f"environment variable FTJAX_PROCESS_ID={index} is outside [0, FTJAX_NUM_PROCESSES={num})")
    if ":" not in given["FTJAX_COORDINATOR"]:
      raise InputError(f"environment variable FTJAX_COORDINATOR={given['FTJAX_COORDINATOR']!r} must read host:port")
    kwargs = dict(coordinator_address=given["FTJAX_COORDINATOR"], num_processes=num, process_id=index)
  # CPU devices of several processes talk through gloo (GPU and TPU collectives are unaffected).
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(**kwargs)
  return True


def for_scoring(config) -> Parallel:
  """Evaluation and prediction: the first device in one process; with several processes (multi-host),
  the run's mesh, each process reading its own rows (batches are split by process in run_eval)."""
  if jax.process_count() == 1:
    return make_parallel("none")
  return make_parallel("mesh", config.get("mesh", "data=-1"))

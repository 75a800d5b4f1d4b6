"""Checkpoints of a run, with orbax: only what trained, plus what the loop needs to resume exactly.

  workdir/checkpoints/latest/<step>/  trainable params, optimiser state, step, rng, the loop state (JSON)
                                      and the sha256 of the arrays: the last `keep` saves, for resuming
  workdir/checkpoints/best/<step>/    trainable params of the best dev evaluation, for restore-best,
                                      evaluation, prediction, export and `init_from`
  workdir/checkpoints/unrestorable/   latest checkpoints that failed to restore, moved aside (kept for a
                                      post-mortem; nothing reads them)

Frozen parameters are never saved: the run records its backbone (path and sha256 of the weights file)
in `workdir/run.json` and reloads it, so a LoRA run of MiniLM is about a megabyte.

No moment without a good checkpoint. Orbax writes each checkpoint to a temporary folder and renames it
when complete, so a run killed while saving leaves the previous one intact; a new checkpoint is then
read back and compared with what was saved before any older one is deleted, so a kill between the two
leaves both. On resume the newest latest checkpoint that restores and matches its sha256 is used: one
that fails (corrupt, truncated, missing files: a flipped byte can restore without error, hence the
sha256) is named in one line and the next older one is tried.

Several processes (a sharded run, each writing its own shards under ocdbt.process_<i>/): each process
restores its part of a step, and the step is used only if every process restored its part
(`_everywhere`), so all processes walk back together; process 0 moves the failed ones aside. A process
whose part fails leaves the others in orbax's end-of-restore barrier until its timeout, then they vote
too. The sha256 is taken of fully addressable arrays only; sharded arrays rely on orbax's read errors.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import re
import shutil
import sys
import threading
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp

from ftjax.errors import InputError, StorageError

RESUME_HINT = "--config.resume=false"

# Errors of a write that the disk or the permissions caused, as OSError (Python writes) or as the message
# of tensorstore's ValueError (array writes).
WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO)
WRITE_FAILURE = re.compile(
  r"No space left on device|Disk quota exceeded|Read-only file system|Permission denied|Input/output error"
)


class CorruptCheckpointError(InputError):
  """No checkpoint in the folder restores; the message names the folder and the ways out."""


def _abstract(tree, shardings=None):
  """Shape structs of `tree`; with `shardings` (a tree of NamedShardings like it), orbax restores each
  array straight into those shards, whatever mesh the checkpoint was saved from."""
  if shardings is None and jax.process_count() > 1:  # host templates: every process gets the whole arrays
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    everywhere = NamedSharding(Mesh(np.array(jax.devices()), ("all",)), PartitionSpec())
    shardings = jax.tree.map(lambda _: everywhere, tree)
  if shardings is None:
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=s), tree, shardings)


def tree_digest(tree) -> str | None:
  """sha256 over every leaf's path, dtype, shape and bytes; None if some leaf is not fully addressable
  (sharded over several processes: no process holds its bytes)."""
  digest = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
      return None
    array = np.ascontiguousarray(jax.device_get(leaf))
    digest.update(f"{jax.tree_util.keystr(path)}|{array.dtype}|{array.shape}|".encode())
    digest.update(array.tobytes())
  return digest.hexdigest()


def _cause(e: BaseException) -> str:
  """An exception as one line: its type and the first line of its message, cut to 300 characters."""
  lines = str(e).strip().splitlines()
  text = f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__
  return text if len(text) <= 300 else text[:297] + "..."


def _write_cause(e: BaseException) -> str:
  """What the disk said, e.g. "No space left on device" (tensorstore's messages run to kilobytes)."""
  if isinstance(e, OSError) and e.strerror:
    return e.strerror + (f" ({e.filename})" if e.filename else "")
  match = WRITE_FAILURE.search(str(e))
  return match.group(0) if match else _cause(e)


def _everywhere(ok: bool) -> bool:
  """Whether `ok` holds on every process (all take the same decision; a no-op with one process)."""
  if jax.process_count() == 1:
    return ok
  from jax.experimental import multihost_utils

  return bool(np.all(multihost_utils.process_allgather(np.asarray(ok))))


def _is_write_failure(e: BaseException) -> bool:
  return (isinstance(e, OSError) and e.errno in WRITE_ERRNOS) or bool(WRITE_FAILURE.search(str(e)))


class _OrbaxThreadErrors(logging.Filter):
  """Drops the errors orbax logs from its worker threads (each a traceback)."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not (record.levelno >= logging.ERROR and "orbax" in record.pathname)


def _quiet_orbax_threads() -> None:
  """When a save or restore fails, its exception says what went wrong, once; orbax's worker threads print
  it again and again (logged tracebacks, and "Event loop is closed" from tensorstore callbacks into the
  closed asyncio loop, until the interpreter exits). Hides both, in this process, from the first
  checkpoint operation on: they appear only when an operation failed, and its exception is kept."""
  absl_logger = logging.getLogger("absl")
  if not any(isinstance(f, _OrbaxThreadErrors) for f in absl_logger.filters):
    absl_logger.addFilter(_OrbaxThreadErrors())
  hook = sys.unraisablehook  # how tensorstore's callbacks report their exceptions
  if getattr(hook, "ftjax_quiet", False):
    return

  def unraisablehook(unraisable):
    if not (unraisable.exc_type is RuntimeError and str(unraisable.exc_value) == "Event loop is closed"):
      hook(unraisable)

  unraisablehook.ftjax_quiet = True
  sys.unraisablehook = unraisablehook


@contextlib.contextmanager
def _orbax_settled(seconds: float = 5.0):
  """For a save or restore that may fail: quiets orbax's threads, and on failure waits up to `seconds` for
  the threads it started (which otherwise go on writing into the folder the caller cleans)."""
  _quiet_orbax_threads()
  threads = set(threading.enumerate())
  try:
    yield
  except BaseException:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and (started := [t for t in threading.enumerate() if t not in threads]):
      started[0].join(timeout=max(deadline - time.monotonic(), 0.0))
    raise


def _manager(folder: Path) -> ocp.CheckpointManager:
  # Nothing is deleted by orbax (max_to_keep=None): old checkpoints go only once a new one is verified.
  # cleanup_tmp_directories: the half-written folder of a killed save is removed at the next start.
  return ocp.CheckpointManager(
    folder,
    options=ocp.CheckpointManagerOptions(
      max_to_keep=None, create=True, enable_async_checkpointing=False, cleanup_tmp_directories=True
    ),
  )


class Checkpoints:
  """The two orbax managers of a workdir."""

  def __init__(self, workdir: str | Path, keep: int = 2):
    self.root = Path(workdir).resolve() / "checkpoints"  # orbax wants absolute paths
    self.keep = max(keep, 1)
    self.latest = _manager(self.root / "latest")
    self.best = _manager(self.root / "best")

  def latest_step(self) -> int | None:
    return self.latest.latest_step()

  def save(self, state, loop_state: dict) -> None:
    """Saves the resumable state (host copies) and the loop's JSON state at `state.step`, reads it back,
    then deletes all but the newest `keep`. StorageError if the disk refuses (the older ones stay)."""
    step = int(state.step)
    if step in self.latest.all_steps():  # the run's end saves the step it checkpointed last
      return
    tree = {"trainable": state.trainable, "opt_state": state.opt_state, "step": state.step, "rng": state.rng}
    digest = tree_digest(tree)
    args = ocp.args.Composite(
      state=ocp.args.StandardSave(tree),
      loop=ocp.args.JsonSave(loop_state),
      integrity=ocp.args.JsonSave({"sha256": digest}),
    )
    self._write(self.latest, step, args, lambda: self._restore_latest(step, tree)[0], digest, "latest")
    for old in self.latest.all_steps()[: -self.keep]:
      self.latest.delete(old)

  def _restore_latest(self, step: int, template, shardings=None):
    """(state tree, loop state) of one latest checkpoint; ValueError if its arrays differ from its sha256."""
    items = dict(state=ocp.args.StandardRestore(_abstract(template, shardings)), loop=ocp.args.JsonRestore())
    has_digest = (self.latest.directory / str(step) / "integrity").is_dir()  # checkpoints before the sha256: none
    if has_digest:
      items["integrity"] = ocp.args.JsonRestore()
    restored = self.latest.restore(step, args=ocp.args.Composite(**items))
    tree = restored["state"]
    if has_digest:
      saved = restored["integrity"]["sha256"]
      if saved is not None and tree_digest(tree) != saved:
        raise ValueError(f"the arrays read differ from those written (sha256 {saved[:12]}… when saved)")
    return tree, dict(restored["loop"])

  def restore(self, state, say=print, shardings=None):
    """(state with trainable/opt_state/step/rng restored, loop state) from the newest latest checkpoint
    that restores; with `shardings` (like `state`: sharding.state_shardings) the arrays come back on
    them. Each one that fails is reported in one line (step, folder, cause) and, once an older one has
    restored, moved to checkpoints/unrestorable/; CorruptCheckpointError if none restores."""
    template = {"trainable": state.trainable, "opt_state": state.opt_state, "step": state.step, "rng": state.rng}
    if shardings is not None:
      shardings = {k: getattr(shardings, k) for k in template}
    failed = []
    for step in reversed(self.latest.all_steps()):
      try:
        with _orbax_settled():
          tree, loop_state = self._restore_latest(step, template, shardings)
        cause = None
      except Exception as e:  # any failure to read a checkpoint is a reason to try the older one
        cause = _cause(e)
      if not _everywhere(cause is None):
        failed.append(step)
        folder = self.latest.directory / str(step)
        say(f"checkpoint of step {step} in {folder} does not restore ({cause or 'it failed on another process'})")
        continue
      for bad in failed:  # kept on disk, out of the manager's way (a new save of that step would collide)
        self._move_aside(bad)
      return state.replace(**tree), loop_state
    raise CorruptCheckpointError(
      f"no checkpoint under {self.latest.directory} restores (steps {sorted(failed)}, each reported above): "
      f"start afresh with {RESUME_HINT} (it deletes {self.root}) or delete that folder yourself"
    )

  def _move_aside(self, step: int) -> None:
    if jax.process_index() == 0:
      target = self.root / "unrestorable" / f"latest_{step}"
      shutil.rmtree(target, ignore_errors=True)
      target.parent.mkdir(parents=True, exist_ok=True)
      (self.latest.directory / str(step)).rename(target)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils

      multihost_utils.sync_global_devices(f"ftjax_checkpoint_moved_aside_{step}")
    self.latest.reload()

  def save_best(self, step: int, trainable) -> None:
    """Writes and verifies `trainable` as the best checkpoint, then deletes the older best one: a kill
    between the two leaves both, and `best_step` picks the newer."""
    if step not in self.best.all_steps():
      digest = tree_digest(trainable)
      restore = lambda: self.best.restore(step, args=ocp.args.StandardRestore(_abstract(trainable)))  # noqa: E731
      self._write(self.best, step, ocp.args.StandardSave(trainable), restore, digest, "best")
    for old in self.best.all_steps():
      if old != step:
        self.best.delete(old)

  def _write(self, manager, step: int, args, read_back, digest: str | None, what: str) -> None:
    """Saves one checkpoint and reads it back; StorageError naming the cause and the folder if the disk
    refused or the bytes read back differ. What was half-written is removed (or, if orbax's threads still
    write to it, at the next start: cleanup_tmp_directories); older checkpoints stay."""
    folder = manager.directory / str(step)
    try:
      with _orbax_settled():
        manager.save(step, args=args, force=True)
        if tree_digest(read_back()) != digest:
          raise OSError(errno.EIO, "the checkpoint read back differs from what was written")
    except Exception as e:
      if not _is_write_failure(e):
        raise
      for partial in [folder, *manager.directory.glob(f"{step}.orbax-checkpoint-tmp*")]:
        shutil.rmtree(partial, ignore_errors=True)
      manager.reload()
      raise StorageError(
        f"could not write the {what} checkpoint of step {step} to {folder}: {_write_cause(e)}; the older "
        "checkpoints are intact: free space (or fix the permissions) and rerun the command to resume"
      ) from e

  def best_step(self) -> int | None:
    """The step of the best checkpoint: the newest written if a kill left two."""
    steps = self.best.all_steps()
    if len(steps) <= 1:
      return steps[0] if steps else None
    return max(steps, key=lambda s: (self.best.metadata(s).commit_timestamp_nsecs or 0, s))

  def restore_trainable(self, trainable_template):
    """Trainable params of the best checkpoint (a finished run always has one: without dev evaluations
    the loop marks its final parameters best)."""
    step = self.best_step()
    if step is None:
      raise FileNotFoundError(f"no best checkpoint under {self.best.directory}: the run has not finished")
    try:
      with _orbax_settled():
        return self.best.restore(step, args=ocp.args.StandardRestore(_abstract(trainable_template)))
    except Exception as e:
      raise CorruptCheckpointError(
        f"the best checkpoint {self.best.directory / str(step)} does not restore ({_cause(e)})"
      ) from e

  def discard(self) -> None:
    """Deletes every checkpoint of the workdir (a run started afresh with `resume=false`)."""
    self.close()
    shutil.rmtree(self.root, ignore_errors=True)
    self.latest = _manager(self.root / "latest")
    self.best = _manager(self.root / "best")

  def close(self) -> None:
    self.latest.close()
    self.best.close()


def size_bytes(folder: str | Path) -> int:
  return int(np.sum([p.stat().st_size for p in Path(folder).rglob("*") if p.is_file()]))

"""Checkpoints of a run, with orbax: only what trained, plus what the loop needs to resume exactly.

  workdir/checkpoints/latest/<step>/  trainable params, optimiser state, step, rng + loop state (JSON):
                                      the last `keep` saves, for resuming
  workdir/checkpoints/best/<step>/    trainable params of the best dev evaluation, for restore-best,
                                      evaluation, prediction, export and `init_from`

Frozen parameters are never saved: the run records its backbone (path and sha256 of the weights file)
in `workdir/run.json` and reloads it, so a LoRA run of MiniLM is about a megabyte.
Orbax writes each checkpoint to a temporary folder and renames it when complete, so a run killed while
saving leaves the previous checkpoint intact.
"""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp


def _abstract(tree):
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


class Checkpoints:
  """The two orbax managers of a workdir."""

  def __init__(self, workdir: str | Path, keep: int = 2):
    root = Path(workdir).resolve() / "checkpoints"  # orbax wants absolute paths
    self.latest = ocp.CheckpointManager(
      root / "latest",
      options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=False),
    )
    self.best = ocp.CheckpointManager(
      root / "best", options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True, enable_async_checkpointing=False)
    )

  def latest_step(self) -> int | None:
    return self.latest.latest_step()

  def save(self, state, loop_state: dict) -> None:
    """Saves the resumable state (host copies) and the loop's JSON state at `state.step`."""
    step = int(state.step)
    if self.latest.latest_step() == step:
      return
    tree = {"trainable": state.trainable, "opt_state": state.opt_state, "step": state.step, "rng": state.rng}
    self.latest.save(
      step, args=ocp.args.Composite(state=ocp.args.StandardSave(tree), loop=ocp.args.JsonSave(loop_state))
    )

  def restore(self, state):
    """(state with trainable/opt_state/step/rng restored, loop state) from the latest checkpoint."""
    template = {"trainable": state.trainable, "opt_state": state.opt_state, "step": state.step, "rng": state.rng}
    restored = self.latest.restore(
      self.latest.latest_step(),
      args=ocp.args.Composite(state=ocp.args.StandardRestore(_abstract(template)), loop=ocp.args.JsonRestore()),
    )
    tree = restored["state"]
    return state.replace(**tree), dict(restored["loop"])

  def save_best(self, step: int, trainable) -> None:
    for old in self.best.all_steps():
      if old != step:
        self.best.delete(old)
    if step not in self.best.all_steps():
      self.best.save(step, args=ocp.args.StandardSave(trainable))

  def best_step(self) -> int | None:
    return self.best.latest_step()

  def restore_trainable(self, trainable_template):
    """Trainable params of the best checkpoint (a finished run always has one: without dev evaluations
    the loop marks its final parameters best)."""
    step = self.best.latest_step()
    if step is None:
      raise FileNotFoundError(f"no best checkpoint under {self.best.directory}: the run has not finished")
    return self.best.restore(step, args=ocp.args.StandardRestore(_abstract(trainable_template)))

  def close(self) -> None:
    self.latest.close()
    self.best.close()


def size_bytes(folder: str | Path) -> int:
  return int(np.sum([p.stat().st_size for p in Path(folder).rglob("*") if p.is_file()]))

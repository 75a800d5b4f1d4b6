"""What a training run prints: a bar that follows the device, a line per evaluation, the next commands.

JAX dispatches a step asynchronously: `train_step` returns once the step is queued, long before it has
run, so a bar that counts calls runs ahead of the device and then stands still. `TrainProgress` keeps a
window of at most `IN_FLIGHT` dispatched steps whose completion has not been seen; when a dispatch
overfills it, the host waits for the oldest step's metrics (a step that many behind the newest, so the
device always has queued work and the newest step is never waited on) and the bar moves to that step.
The count on the bar is a finished step, at most `IN_FLIGHT` behind the last dispatched one.

Rate and estimate count training time only: the clock starts when the first step finishes (its time is
mostly compilation) and stops while the run evaluates (`paused`). The time left is the steps left times
the mean training seconds per step (checkpoint saves included), plus the evaluations still to come times
the mean seconds of those done (none before the first). An evaluation shows its own short bar over the
split's batches (`batches`), then one line: step, metrics, and whether it is the best so far
(`evaluation_line`). Output that is not a terminal (CI, nohup, a pipe) gets a plain line every
`PLAIN_EVERY` seconds instead of a redrawn bar.
"""

from __future__ import annotations

import collections
import contextlib
import shlex
import sys
import time
from pathlib import Path

import jax
import tqdm

IN_FLIGHT = 2  # dispatched steps whose completion is not yet seen [steps]
PLAIN_EVERY = 30.0  # between progress lines when the output is not a terminal [seconds]
BAR_FORMAT = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{eta}, {step_time}{postfix}]"


def is_terminal(file) -> bool:
  return bool(getattr(file, "isatty", None) and file.isatty())


def write(line: str) -> None:
  """A line on stdout that leaves open bars intact, flushed (stdout to a file is block-buffered)."""
  tqdm.tqdm.write(line, file=sys.stdout)
  sys.stdout.flush()


def batches(iterable, total: int, desc: str):
  """`iterable` with a transient bar on a terminal (evaluation, generation); as it is elsewhere."""
  if not is_terminal(sys.stderr):
    return iterable
  return tqdm.tqdm(iterable, total=total, desc=desc, unit="batch", leave=False, dynamic_ncols=True)


class _Bar(tqdm.tqdm):
  """tqdm showing `TrainProgress`'s step time and estimate (training time only) instead of its own."""

  def __init__(self, progress: TrainProgress, **kwargs):
    self.progress = progress  # set first: tqdm's __init__ already draws
    super().__init__(bar_format=BAR_FORMAT, **kwargs)

  @property
  def format_dict(self):
    return {**super().format_dict, **self.progress.timing()}


class TrainProgress:
  """The train bar: `dispatched(step, metrics)` after each step call, `completed(step)` once metrics up
  to `step` were fetched, `paused()` around evaluations, `close()` at the end. `eval_every` is the
  loop's: None without evaluations, 0 for one at the end only, else every that many steps and at the end."""

  def __init__(
    self,
    total: int,
    initial: int = 0,
    *,
    eval_every: int | None = None,
    in_flight: int = IN_FLIGHT,
    clock=time.monotonic,
  ):
    self.total, self.done, self.eval_every, self.in_flight, self.clock = total, initial, eval_every, in_flight, clock
    self.window: collections.deque = collections.deque()  # (step, device metrics), oldest first
    self.first = None  # (step, time) of the first completion seen: where the training clock starts
    self.paused_seconds = 0.0  # evaluation time after `first`, kept out of the rate
    self.eval_seconds: list[float] = []  # each evaluation's duration
    self.started = self.last_line = clock()
    self.postfix = ""
    self.bar = (
      _Bar(self, total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True)
      if is_terminal(sys.stderr)
      else None
    )

  def dispatched(self, step: int, metrics) -> None:
    self.window.append((step, metrics))
    while len(self.window) > self.in_flight:
      oldest, oldest_metrics = self.window.popleft()
      jax.block_until_ready(oldest_metrics)
      self._advance(oldest)

  def completed(self, step: int) -> None:
    while self.window and self.window[0][0] <= step:
      self.window.popleft()
    self._advance(step)

  def _advance(self, step: int) -> None:
    if self.first is None:
      self.first = (step, self.clock())
    if step > self.done:
      moved, self.done = step - self.done, step  # `done` first: the bar's redraw reads it
      if self.bar is not None:
        self.bar.update(moved)
    if self.bar is None and self.clock() - self.last_line >= PLAIN_EVERY:
      self.plain_line()

  def seconds_per_step(self) -> float | None:
    """Mean training seconds per step since the first completion; None before a second one."""
    if self.first is None or self.done <= self.first[0]:
      return None
    return (self.clock() - self.first[1] - self.paused_seconds) / (self.done - self.first[0])

  def evaluations_left(self) -> int:
    """Evaluations the loop will still run after step `done` (at multiples of eval_every and the end)."""
    every, total, done = self.eval_every, self.total, self.done
    if every is None or done >= total:
      return 0
    return (total // every - done // every if every else 0) + (1 if not every or total % every else 0)

  def seconds_left(self) -> float | None:
    spent = self.seconds_per_step()
    if spent is None:
      return None
    per_eval = sum(self.eval_seconds) / len(self.eval_seconds) if self.eval_seconds else 0.0
    return (self.total - self.done) * spent + self.evaluations_left() * per_eval

  def timing(self) -> dict:
    """{"eta", "step_time"} as the bar shows them."""
    spent, left = self.seconds_per_step(), self.seconds_left()
    if spent is None:
      return {"eta": "?", "step_time": "?s/step"}
    step_time = f"{spent:.2f}s/step" if spent >= 1 else f"{1 / max(spent, 1e-9):.2f}step/s"
    return {"eta": tqdm.tqdm.format_interval(left), "step_time": step_time}

  def set_postfix(self, **values) -> None:
    self.postfix = "  ".join(f"{k} {v}" for k, v in values.items())
    if self.bar is not None:
      self.bar.set_postfix(values, refresh=False)

  def plain_line(self) -> None:
    t = self.timing()
    percent = 100 * self.done / max(self.total, 1)
    elapsed = tqdm.tqdm.format_interval(self.clock() - self.started)
    write(
      f"train step {self.done}/{self.total} ({percent:.0f}%)  elapsed {elapsed}  left {t['eta']}  "
      f"{t['step_time']}" + (f"  {self.postfix}" if self.postfix else "")
    )
    self.last_line = self.clock()

  @contextlib.contextmanager
  def paused(self):
    """Time in this block (an evaluation) is kept out of the rate and the estimate."""
    start = self.clock()
    try:
      yield
    finally:
      self.eval_seconds.append(self.clock() - start)
      if self.first is not None:
        self.paused_seconds += self.eval_seconds[-1]

  def evaluated(self, step: int, split: str, values: dict, metric: str, improved: bool, best_step, best_value):
    write(evaluation_line(step, split, values, metric, improved, best_step, best_value))

  def close(self) -> None:
    if self.bar is not None:
      self.bar.close()
    elif self.done:
      self.plain_line()


def evaluation_line(step, split, values, metric, improved, best_step, best_value) -> str:
  """`eval dev step 40: loss 0.6912  accuracy 58.4838 ...  (best accuracy so far)`; when not improved,
  the best value and its step so far."""
  numbers = "  ".join(f"{k} {float(v):.4f}" for k, v in values.items())
  if improved:
    verdict = f"best {metric} so far"
  elif best_step is None:
    verdict = f"no finite {metric}"
  else:
    verdict = f"best {metric} {best_value:.4f} at step {best_step}"
  return f"eval {split} step {step}: {numbers}  ({verdict})"


def export_formats(config, model, kind: str) -> tuple[str, ...]:
  """The scripts/export.py formats this run has: hf for LoRA (merged) and plain fine-tuning of an
  architecture transformers has a class for, peft for LoRA; adapters, prompts and prefixes have none."""
  from ftjax import export
  from ftjax.tasks import kinds

  spec = model.peft
  task = kinds.kind(kind).export_task
  arch = export.ARCHITECTURES.get(type(model))
  if (
    spec.adapter or spec.prompt_length or spec.prefix_length or arch is None or (arch[0], task) not in export.HF_CLASSES
  ):
    return ()
  if task == "sequence_classification" and not model.is_decoder and config.get("head_pooling", "pooler") != "pooler":
    return ()  # transformers' BertForSequenceClassification reads the pooler
  return ("hf", "peft") if spec.lora_targets else ("hf",)


def next_commands(workdir: Path, config, model, kind: str) -> str:
  """The commands that come next for a finished run in `workdir`, flags as the scripts define them."""
  from ftjax.data import sources
  from ftjax.tasks import kinds

  w = shlex.quote(str(workdir))
  test = sources.source(config.task.source).labelled_test(config)
  split = next((s for s in ("test",) * bool(test) + ("train",) if s not in config.eval_splits), "dev")
  lines = [
    "next:",
    f"  python scripts/evaluate.py --workdir={w} --split={split}   # score another split",
    f"  python scripts/predict.py --workdir={w} --input=FILE   # one input a line: {kinds.kind(kind).predict_input}",
  ]
  for fmt in export_formats(config, model, kind):
    what = "a transformers checkpoint" if fmt == "hf" else "a PEFT adapter"
    out = shlex.quote(str(workdir / f"export-{fmt}"))
    lines.append(f"  python scripts/export.py --workdir={w} --out={out} --format={fmt}   # {what}")
  lines.append(f"  tensorboard --logdir {shlex.quote(str(workdir / 'tensorboard'))}   # the curves")
  return "\n".join(lines)

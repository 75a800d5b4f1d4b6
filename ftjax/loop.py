"""`train_and_evaluate(config, workdir)`: the whole fine-tuning recipe as one flat function.

Sections: run record → data → model, method and trainability → optimiser and state → resume or
`init_from` → devices → the loop (log, evaluate, early-stop, checkpoint) → final evaluation and summary.

Rerunning the same command on the same workdir resumes from the newest checkpoint that restores (an
older one if the newest is corrupt: checkpoints.py): the data order is a function of (seed, epoch), the
dropout key of (seed, step), and the optimiser state is restored, so the resumed run ends with the
parameters and metrics.jsonl of an uninterrupted one, bit for bit. SIGTERM or SIGINT (preemption.py)
stops the run after a checkpoint at the next step boundary (ftjax.errors.Stopped, exit status 75).

Files in the workdir: config.json, run.json (task, labels, backbone reference), metrics.jsonl (one JSON
object a line: step, split, metrics), tensorboard/, checkpoints/ (see checkpoints.py), summary.txt,
ner_report_<split>.txt for NER, train.lock (workdir_lock.py: held while a process trains in the
folder; a second process on the same workdir stops with an error).
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from pathlib import Path

import jax
import numpy as np

from ftjax import checkpoints as ckpt
from ftjax import evaluation, experiment, models, optim, parallel, preemption, progress, sharding, step as steps
from ftjax import provenance, trainability, xla_cpu
from ftjax.data import pipeline
from ftjax.errors import InputError, Stopped
from ftjax.evaluation import append_metrics
from ftjax.tasks import datasets, kinds
from ftjax.workdir_lock import exclusive_workdir


class NonFiniteError(FloatingPointError):
  """The loss or gradient became NaN or infinite; the message names the step."""


def train_and_evaluate(config, workdir) -> dict:
  """Fine-tunes as `config` says, in `workdir`; returns the final metrics per split."""
  workdir = Path(workdir).expanduser().resolve()
  workdir.mkdir(parents=True, exist_ok=True)
  # The run's XLA:CPU lowering and signal handlers end with the run. Several processes share a workdir
  # (multi-host): process 0 holds its lock.
  lock = exclusive_workdir(workdir) if jax.process_index() == 0 else contextlib.nullcontext()
  with lock, xla_cpu.restoring_lowering(), preemption.stop_signals() as stop:
    return _train_and_evaluate(config, workdir, stop)


def _train_and_evaluate(config, workdir: Path, stop: preemption.StopSignals) -> dict:
  started = time.time()
  cpu_started = time.process_time()  # CPU seconds of all this process's threads: what a grid's budget counts

  if config.generation.eval_examples > 0:
    evaluation.check_generation(config)  # a bad decoding setting fails now, not after training
  # --- model, method, task and the run record ---------------------------------------------------
  par = parallel.make_parallel(config.parallel, config.get("mesh", "data=-1"))
  exp = experiment.build(config, par.mesh)  # mesh mode: the backbone read straight into its shards
  threefry = xla_cpu.lowering_for(config.cpu_threefry)  # dropout hash's CPU lowering, before the step compiles
  xla_cpu.set_threefry_lowering(threefry)
  lead = jax.process_index() == 0  # several processes (multi-host): process 0 alone writes the run's files
  if lead:
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
  run_record = {
    "task": {"kind": exp.task.kind, "num_labels": exp.task.num_labels, "label_names": list(exp.task.label_names)},
    "backbone": models.backbone_reference(config.model),
    "rules": list(exp.rules),
    "cpu_threefry": threefry,
    "environment": provenance.environment(),  # versions, machine, devices, commit: what the numbers hold on
  }
  if lead:
    (workdir / "run.json").write_text(json.dumps(run_record, indent=2))

  # --- data ----------------------------------------------------------------------------------------
  train = datasets.load(config, exp.tokenizer, config.task.train_split, config.max_train_examples)
  dev = (
    datasets.load(config, exp.tokenizer, config.task.dev_split, config.max_eval_examples)
    if config.task.dev_split
    else None
  )
  if config.batch_size % config.grad_accum_steps:
    raise InputError(
      f"config key batch_size={config.batch_size} is not divisible by grad_accum_steps={config.grad_accum_steps}"
    )
  steps_per_epoch = pipeline.num_train_batches(train.num_rows, config.batch_size)
  if steps_per_epoch == 0:
    raise InputError(f"config key batch_size={config.batch_size} exceeds the {train.num_rows} training rows")
  total_steps = config.max_steps if config.max_steps > 0 else config.num_epochs * steps_per_epoch

  # --- trainability, optimiser, state ------------------------------------------------------------
  trainable, frozen = trainability.partition(exp.tree, exp.rules)
  frozen = experiment.frozen_weights(frozen, config.get("param_dtype", "float32"))
  print(trainability.summary(trainable, frozen))
  tx, lr_schedule = optim.make_optimizer(config, trainable, total_steps, exp.num_layers)
  state = steps.create_state(trainable, frozen, tx, config.seed)
  metric_name, mode = evaluation.selection(config, exp.task.kind)
  better = (lambda a, b: a > b) if mode == "max" else (lambda a, b: a < b)
  loop_state = {
    "best_value": None,
    "best_step": None,
    "best_metrics": None,
    "evals_without_improvement": 0,
    "stopped_early": False,
    "wall_seconds": 0.0,
    "cpu_seconds": 0.0,
  }  # times: to the latest checkpoint

  # --- devices: the mesh, and where each array lives (a bad rule stops here, before any compile) ----
  user_rules = tuple(config.get("sharding", ()))
  shardings = par.state_shardings(state, sharding.rules_for(exp.model, user_rules), checked=user_rules)

  # --- resume, or start from a finished run ------------------------------------------------------
  checkpoints = ckpt.Checkpoints(workdir, config.keep_checkpoints)
  if not config.resume:
    checkpoints.discard()
  if checkpoints.latest_step() is not None:
    # the newest that restores (checkpoints.py), straight into this mesh's shards
    state, loop_state = checkpoints.restore(state, shardings=shardings)
    print(f"resuming {workdir} at step {int(state.step)}")
    # the time earlier processes spent reaching this checkpoint (work after it is redone, so not counted)
    started -= loop_state.setdefault("wall_seconds", 0.0)
    cpu_started -= loop_state.setdefault("cpu_seconds", 0.0)
  elif config.init_from:
    carried, kept = load_trained(config.init_from, state.trainable, state.frozen)
    state = state.replace(trainable=carried, frozen=kept)
    print(f"starting from the trained parameters of {config.init_from}")
  if lead:  # at step 0: the lines of a run killed before its first checkpoint
    _truncate_metrics(workdir, int(state.step))

  # --- compiled steps --------------------------------------------------------------------------------
  adv = config.adversarial
  train_step = par.compile_train_step(
    lambda axis_name: steps.make_train_step(
      exp.model,
      exp.task,
      tx,
      adversarial_config=adv,
      grad_accum_steps=config.grad_accum_steps,
      dropout=config.dropout,
      axis_name=axis_name,
    ),
    shardings,
  )
  eval_step = par.compile_eval_step(steps.make_eval_step(exp.model, exp.task), shardings)
  state = par.put_state(state, shardings)

  import tensorboardX

  writer = tensorboardX.SummaryWriter(str(workdir / "tensorboard")) if lead else None

  def evaluate(split_data, step):
    with bar.paused():  # evaluation time stays out of the training rate and estimate
      values, report = evaluation.evaluate_split(
        par, eval_step, state.trainable, state.frozen, split_data, config.eval_batch_size
      )
    if values:
      append_metrics(workdir, step, split_data.split, values, writer)
    if report and lead:
      (workdir / kinds.kind(split_data.kind).report_file.format(split=split_data.split)).write_text(report)
    return values

  # --- the loop ------------------------------------------------------------------------------------
  def saved_part():
    """The host copy of what checkpoints hold: everything but the frozen weights (never saved)."""
    return par.checkpointable(state.replace(frozen={}))

  step = int(saved_part().step)
  dev_history: dict[int, dict] = {}
  # per-step device metrics, fetched once per log interval (no per-step sync); a stop at a signal saved its own
  pending: list = _window_from_json(loop_state.pop("unlogged", []))
  window_start, window_examples = time.time(), len(pending) * config.batch_size
  # advances as steps finish, not as they are dispatched; its time left counts the evaluations to come
  bar = progress.TrainProgress(total_steps, step, eval_every=config.eval_every if dev is not None else None)

  def flush():
    """Fetch pending metrics; stop on a non-finite step; log the window's averages."""
    nonlocal pending, window_start, window_examples
    if not pending:
      return
    fetched = jax.device_get([m for _, m in pending])
    _check_finite(pending, fetched, workdir)
    last_step = pending[-1][0]
    loss = sum(m["loss_sum"] for m in fetched) / max(sum(m["count"] for m in fetched), 1.0)
    elapsed = max(time.time() - window_start, 1e-9)
    values = {
      "loss": loss,
      "grad_norm": float(np.mean([m["grad_norm"] for m in fetched])),
      "learning_rate": float(lr_schedule(last_step - 1)),
      "examples_per_second": window_examples / elapsed,
    }
    if adv.method != "none":
      values["objective"] = sum(m["objective_sum"] for m in fetched) / max(sum(m["count"] for m in fetched), 1.0)
    append_metrics(workdir, last_step, "train", values, writer)
    bar.completed(last_step)
    bar.set_postfix(loss=f"{loss:.4f}", ex_s=f"{values['examples_per_second']:.1f}")
    pending, window_start, window_examples = [], time.time(), 0

  if stop.received:  # during start-up: the checkpoint restored (if any) is where the next run starts
    raise Stopped(f"{stop.received} before the first step; rerun the command to resume")
  while step < total_steps and not loop_state["stopped_early"]:
    epoch, start = divmod(step, steps_per_epoch)
    batches = pipeline.train_batches(
      train.features, config.batch_size, config.seed, epoch, start, jax.process_index(), jax.process_count()
    )
    for batch in pipeline.prefetch(batches):
      state, metrics = train_step(state, par.put_batch(batch))
      step += 1
      pending.append((step, metrics))
      window_examples += config.batch_size
      bar.dispatched(step, metrics)  # waits for the step IN_FLIGHT back, never for this one
      last = step == total_steps
      if step % config.log_every == 0 or last:
        flush()
      if dev is not None and ((config.eval_every and step % config.eval_every == 0) or last):
        flush()
        values = dev_history[step] = evaluate(dev, step)
        window_start = time.time()  # the next window's examples_per_second leaves the evaluation out
        value = values.get(metric_name)
        improved = (
          value is not None
          and math.isfinite(value)
          and (loop_state["best_value"] is None or better(value, loop_state["best_value"]))
        )
        bar.evaluated(step, dev.split, values, metric_name, improved, loop_state["best_step"], loop_state["best_value"])
        if improved:
          loop_state.update(
            best_value=value,
            best_step=step,
            evals_without_improvement=0,
            best_metrics={k: float(v) for k, v in values.items()},
          )
          checkpoints.save_best(step, saved_part().trainable)
        else:
          loop_state["evals_without_improvement"] += 1
          patience = config.early_stopping.patience
          if patience and loop_state["evals_without_improvement"] >= patience:
            loop_state["stopped_early"] = True
            progress.write(f"early stopping at step {step}: {metric_name} has not improved for {patience} evaluations")
      if step % config.checkpoint_every == 0 or last or loop_state["stopped_early"]:
        flush()  # raises before saving if a step was non-finite: the last checkpoint stays good
        loop_state["wall_seconds"] = time.time() - started
        loop_state["cpu_seconds"] = time.process_time() - cpu_started
        checkpoints.save(saved_part(), loop_state)
      if stop.received and not (last or loop_state["stopped_early"]):
        if writer is not None:
          writer.flush()
        bar.close()
        _stop_with_checkpoint(stop, checkpoints, saved_part(), loop_state, pending, started, cpu_started, workdir)
      if last or loop_state["stopped_early"]:
        break
  flush()
  bar.close()
  if stop.received:  # the last checkpoint is saved: the rerun does the final evaluation
    raise Stopped(f"{stop.received} after the last step ({step}); rerun the command for the final evaluation")

  # --- final evaluation and summary ------------------------------------------------------------------
  if checkpoints.best_step() is None:  # no dev metric to select on: the final parameters are "best"
    host = saved_part()
    checkpoints.save_best(step, host.trainable)
    checkpoints.save(host, loop_state)
  if config.early_stopping.restore_best and loop_state["best_step"] not in (None, step):
    host = par.get_state(state)
    state = par.put_state(host.replace(trainable=checkpoints.restore_trainable(host.trainable)), shardings)
    progress.write(
      f"restored the best checkpoint (step {loop_state['best_step']}, {metric_name} = {loop_state['best_value']:.3f})"
    )
  params_step = loop_state["best_step"] if config.early_stopping.restore_best and loop_state["best_step"] else step
  if loop_state.get("best_metrics") and loop_state["best_step"] not in dev_history:  # scored before a resume
    dev_history[loop_state["best_step"]] = loop_state["best_metrics"]
  final = {}
  for split in config.eval_splits:
    if split == config.task.dev_split and params_step in dev_history:  # these parameters were scored already
      final[split] = dev_history[params_step]
      continue
    data = (
      dev if split == config.task.dev_split else datasets.load(config, exp.tokenizer, split, config.max_eval_examples)
    )
    final[split] = evaluate(data, params_step)
  if kinds.kind(exp.task.kind).generates and config.generation.eval_examples > 0:
    split = config.generation.eval_split
    host = par.get_state(state)
    tree = trainability.combine(host.trainable, host.frozen)
    values = evaluation.evaluate_generation(config, exp, tree, split, workdir)
    append_metrics(workdir, params_step, split, values, writer)
    final[f"{split} generation"] = values
  checkpoints.close()
  if writer is not None:
    writer.close()
  summary = _summary(
    config,
    workdir,
    trainable,
    frozen,
    step,
    total_steps,
    loop_state,
    metric_name,
    final,
    time.time() - started,
    time.process_time() - cpu_started,
  )
  if lead:
    (workdir / "summary.txt").write_text(summary)
  print(summary)
  print(progress.next_commands(workdir, config, exp.model, exp.task.kind), flush=True)
  return final


def _check_finite(pending, fetched, workdir: Path) -> None:
  """NonFiniteError naming the first step of `pending` (with its fetched metrics) whose loss or gradient
  was NaN or infinite."""
  for (s, _), m in zip(pending, fetched):
    if m["nonfinite"]:
      raise NonFiniteError(
        f"non-finite loss or gradient at step {s} (loss sum {m['objective_sum']}, "
        f"gradient norm {m['grad_norm']}); the state was not updated and the last good "
        f"checkpoint under {workdir / 'checkpoints'} is intact"
      )


def _window_to_json(pending, fetched) -> list:
  """The steps' metrics not yet logged, as JSON for the loop state: [step, {name: [dtype, value]}]."""
  return [
    [s, {k: [np.asarray(v).dtype.name, np.asarray(v).tolist()] for k, v in m.items()}]
    for (s, _), m in zip(pending, fetched)
  ]


def _window_from_json(saved: list) -> list:
  """`pending` as it was when saved, with the same dtypes: the resumed run logs the same averages."""
  return [(s, {k: np.asarray(v, dtype) for k, (dtype, v) in m.items()}) for s, m in saved]


def _stop_with_checkpoint(stop, checkpoints, host_state, loop_state, pending, started, cpu_started, workdir) -> None:
  """Saves a checkpoint here, between log intervals, with the unlogged steps' metrics in it (the resumed
  run writes the same metrics.jsonl lines as an uninterrupted one), and raises Stopped."""
  fetched = jax.device_get([m for _, m in pending])
  _check_finite(pending, fetched, workdir)
  saved = {
    **loop_state,
    "unlogged": _window_to_json(pending, fetched),
    "wall_seconds": time.time() - started,
    "cpu_seconds": time.process_time() - cpu_started,
  }
  checkpoints.save(host_state, saved)
  step = int(host_state.step)
  raise Stopped(
    f"{stop.received} at step {step}: checkpoint saved in {checkpoints.latest.directory / str(step)}; "
    "rerun the command to resume"
  )


def _truncate_metrics(workdir: Path, step: int) -> None:
  """On resume, drop metric lines written after the checkpoint: they will be written again. A last line
  cut short (a kill in mid-write) is dropped too; a bad line before it is an error naming the line."""
  file = workdir / "metrics.jsonl"
  if not file.exists():
    return
  lines = file.read_text().splitlines()
  kept = []
  for number, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except json.JSONDecodeError as e:
      if number < len(lines):
        raise InputError(f"{file}:{number}: not a JSON line ({e}); delete the line to resume") from None
      print(f"{file}:{number}: dropped a line cut short ({line[:60]!r}), written by a process killed while writing it")
      continue
    if record["step"] <= step:
      kept.append(line)
  text = "".join(l + "\n" for l in kept)
  if text != "".join(l + "\n" for l in lines):
    partial = file.with_suffix(".jsonl.tmp")  # written whole, then renamed: a kill here loses no line
    partial.write_text(text)
    partial.replace(file)


def load_trained(workdir, trainable: dict, frozen: dict) -> tuple[dict, dict]:
  """(trainable, frozen) with the parameters of a finished run in place, for `init_from`, across methods.

  The earlier run's whole tree is rebuilt (experiment.restore: its best checkpoint over its own backbone,
  which may itself come from an `init_from`). Its backbone replaces this run's, trainable or frozen (a
  full run into a LoRA run); LoRA factors this run has no place for (a LoRA run into a full run, other
  targets or rank) are first merged into that backbone with the earlier run's scale. Adapters and soft
  prompts cannot be carried into another method: an error. Parts shaped differently (a head with another
  number of labels) keep their fresh initialisation; every parameter not carried is named on stdout."""
  from ftjax.peft import lora

  workdir = Path(workdir).expanduser().resolve()
  if not (workdir / "checkpoints" / "best").is_dir():
    raise FileNotFoundError(f"config key init_from: {workdir} holds no finished run (no checkpoints/best)")
  earlier, _, earlier_trainable, earlier_frozen = experiment.restore(workdir)
  saved = trainability.flatten(trainability.combine(earlier_trainable, earlier_frozen))
  template = {**trainability.flatten(frozen), **trainability.flatten(trainable)}
  fits = lambda p: p in template and np.shape(saved[p]) == np.shape(template[p])
  misplaced = {p for p in saved if p.startswith("lora/") and not fits(p)}
  if misplaced:  # folded into the weights they adapt, so the earlier run's function is kept
    backbone = trainability.unflatten(
      {p.removeprefix("backbone/"): v for p, v in saved.items() if p.startswith("backbone/")}
    )
    factors = trainability.unflatten({p.removeprefix("lora/"): saved[p] for p in misplaced})
    merged = lora.merge(backbone, factors, experiment.peft_spec(earlier))
    saved = {p: v for p, v in saved.items() if p not in misplaced}
    saved.update({f"backbone/{p}": v for p, v in trainability.flatten(merged).items()})
    print(f"init_from: merged the {len(misplaced)} LoRA factors of {workdir} into the backbone")
  stranded = sorted({p.split("/")[0] for p in saved if not fits(p)} - {"head", "backbone"})
  if stranded:
    raise InputError(
      f"config key init_from: {workdir} was trained with method {earlier.method!r}; its {stranded} parameters "
      "have no place in this run's method and cannot be merged into the backbone (only LoRA can): start "
      "from a full or LoRA run, or use the same method"
    )
  carried = {p: _like(saved[p], template[p]) for p in saved if fits(p)}
  left = sorted(set(saved) - set(carried))
  if left:
    print(
      f"init_from: {len(left)} parameters of {workdir} are not carried (no place here, or shaped differently), e.g. {left[:3]}"
    )
  fresh = sorted(p for p in template if p not in carried)
  if fresh:
    print(f"init_from: {len(fresh)} parameters keep their fresh initialisation, e.g. {fresh[:3]}")
  split = lambda part: trainability.unflatten({p: carried.get(p, v) for p, v in trainability.flatten(part).items()})
  return split(trainable), split(frozen)


def _like(value, template):
  """`value` (the earlier run's, whole in this process) in the dtype of `template` and, for a jax.Array,
  on its sharding: each of this process's devices receives its slice, so a template that spans other
  processes' devices (multi-host) is filled without gathering it anywhere."""
  dtype = template.dtype
  value = np.asarray(value, dtype)
  if not isinstance(template, jax.Array):
    return value
  return jax.make_array_from_callback(value.shape, template.sharding, lambda index: value[index])


def _summary(
  config, workdir, trainable, frozen, step, total_steps, loop_state, metric_name, final, seconds, cpu_seconds
):
  lines = [
    "=" * 72,
    f"ftjax run  {workdir}",
    f"model {config.model}  task {config.task.source}  method {config.method}  adversarial {config.adversarial.method}",
    trainability.summary(trainable, frozen).splitlines()[0],
    f"steps {step}/{total_steps}  wall time {seconds / 60:.1f} min  CPU time {cpu_seconds / 60:.1f} min"
    + ("  (stopped early)" if loop_state["stopped_early"] else ""),
  ]
  if loop_state["best_step"] is not None:
    lines.append(f"best dev {metric_name} = {loop_state['best_value']:.3f} at step {loop_state['best_step']}")
  for split, values in final.items():
    lines.append(f"{split:5s} " + "  ".join(f"{k} {v:.3f}" for k, v in values.items()))
  lines.append("=" * 72)
  return "\n".join(lines)

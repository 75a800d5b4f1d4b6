"""Fault injection: a short LoRA run of MiniLM on RTE, killed at random moments, must end as if it never was.

  python scripts/chaos.py --workdir=/tmp/chaos --data_dir=/work/shared/data/rte [--kills=20 --terms=5]

First an uninterrupted run (the reference). Then the same command again and again in another workdir:
SIGKILL at `--kills` random moments, each aimed at one phase in turn (start-up, training steps, a checkpoint
being written, an evaluation; the phase seen at the kill is printed), SIGTERM at `--terms` more (the run
must save a checkpoint and exit with status 75), the newest checkpoint corrupted once after a kill (the
next start must walk back to the one before), and finally the command runs to the end. The final trainable
parameters, optimiser state, step, rng, loop state, best checkpoint and metrics.jsonl (examples/second
aside) are compared with the reference, bit for bit; the last line is
`CHAOS kills=N terms=M corruptions=1 identical=yes|no` (exit status 1 on "no").

Each start is a fresh `scripts/train.py` process with the persistent JAX compilation cache (filled by the
reference run) and most XLA optimisations off, as the tests run (both runs alike: the comparison is exact).
"""

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from absl import app, flags, logging

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a clone without installing

flags.DEFINE_string("workdir", None, "folder for the two runs (reference/, chaos/), the TFDS data and the JAX cache")
flags.DEFINE_string("data_dir", None, "RTE's train.tsv and dev.tsv (config key data_dir)")
flags.DEFINE_string("model", "minilm", "config key model")
flags.DEFINE_integer("kills", 20, "SIGKILLs")
flags.DEFINE_integer("terms", 5, "SIGTERMs")
flags.DEFINE_integer("max_steps", 60, "training steps")
flags.DEFINE_integer("checkpoint_every", 10, "[steps]")
flags.DEFINE_integer("eval_every", 20, "[steps]")
flags.DEFINE_integer("max_train_examples", 160, "training rows (160 / batch 8: an epoch boundary every 20 steps)")
flags.DEFINE_integer("seed", 0, "seeds the moments and the order of the faults")
flags.mark_flags_as_required(["workdir"])
FLAGS = flags.FLAGS

PHASES = ("start-up", "steps", "checkpoint write", "evaluation")


def command(workdir: Path) -> list[str]:
  overrides = dict(
    model=FLAGS.model,
    method="lora",
    data_dir=FLAGS.data_dir,
    tfds_dir=Path(FLAGS.workdir) / "tfds",
    parallel="none",
    batch_size=8,
    max_length=64,
    max_train_examples=FLAGS.max_train_examples,
    max_eval_examples=64,
    eval_batch_size=32,
    max_steps=FLAGS.max_steps,
    checkpoint_every=FLAGS.checkpoint_every,
    eval_every=FLAGS.eval_every,
    log_every=5,
    learning_rate=1e-3,
  )
  args = [f"--config.{k}={v}" for k, v in overrides.items() if v is not None]
  return [
    sys.executable,
    str(REPO / "scripts" / "train.py"),
    "--config=configs/glue.py:rte",
    f"--workdir={workdir}",
  ] + args


def environment() -> dict:
  cache = Path(FLAGS.workdir) / "jax_cache"
  return {
    **os.environ,
    "JAX_PLATFORMS": "cpu",
    "JAX_DISABLE_MOST_OPTIMIZATIONS": "1",
    "JAX_COMPILATION_CACHE_DIR": str(cache),
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    "TOKENIZERS_PARALLELISM": "false",
    "TF_CPP_MIN_LOG_LEVEL": "3",
  }


def start(workdir: Path, log: Path) -> subprocess.Popen:
  with open(log, "w") as out:
    return subprocess.Popen(command(workdir), cwd=REPO, env=environment(), stdout=out, stderr=subprocess.STDOUT)


# --- what the run is doing, seen from its folder ------------------------------------------------------


def metric_lines(workdir: Path) -> list[dict]:
  file = workdir / "metrics.jsonl"
  lines = file.read_text().splitlines() if file.exists() else []
  out = []
  for line in lines:
    try:
      out.append(json.loads(line))
    except json.JSONDecodeError:  # a line being written
      pass
  return out


def writing_checkpoint(workdir: Path) -> bool:
  folders = [workdir / "checkpoints" / "latest", workdir / "checkpoints" / "best"]
  return any(".orbax-checkpoint-tmp" in p.name for f in folders if f.is_dir() for p in f.iterdir())


def evaluating(workdir: Path) -> bool:
  """The last line is the train line logged just before a dev evaluation, and no dev line follows yet."""
  lines = metric_lines(workdir)
  if not lines or lines[-1]["split"] != "train":
    return False
  step = lines[-1]["step"]
  return step == FLAGS.max_steps or (FLAGS.eval_every and step % FLAGS.eval_every == 0)


def event_files(workdir: Path) -> int:
  """TensorBoard event files: each start makes one just before its training loop."""
  folder = workdir / "tensorboard"
  return len(list(folder.glob("events.out.tfevents.*"))) if folder.is_dir() else 0


def checkpoint_steps(folder: Path) -> list[int]:
  return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.is_dir() else []


def phase_now(workdir: Path, events_before: int) -> str:
  if writing_checkpoint(workdir):
    return "checkpoint write"
  if event_files(workdir) == events_before:
    return "start-up"
  return "evaluation" if evaluating(workdir) else "steps"


def wait_for(process, condition, timeout: float, poll: float = 0.002) -> bool:
  """Polls `condition` until it holds (True), the process ends or `timeout` seconds pass (False)."""
  deadline = time.time() + timeout
  while time.time() < deadline and process.poll() is None:
    if condition():
      return True
    time.sleep(poll)
  return False


def aim(process, workdir: Path, phase: str, rng: random.Random, startup_seconds: float) -> float | None:
  """Waits for a random moment of `phase` in this start (or gives up, leaving the moment to chance);
  returns the seconds its start-up took, if seen."""
  began, events_before = time.time(), event_files(workdir)
  if phase == "start-up":
    wait_for(process, lambda: False, rng.uniform(0.3, 0.9 * startup_seconds), poll=0.01)
    return None
  if not wait_for(process, lambda: event_files(workdir) > events_before, 600, poll=0.01):
    return None
  startup = time.time() - began
  lines_before = len(metric_lines(workdir))  # the lines after the resumed step are already dropped
  if phase == "steps":
    if wait_for(process, lambda: len(metric_lines(workdir)) > lines_before, 300, poll=0.01):
      wait_for(process, lambda: False, rng.uniform(0.0, 0.5), poll=0.01)
  elif phase == "checkpoint write":
    wait_for(process, lambda: writing_checkpoint(workdir), 300, poll=0.001)
  else:
    wait_for(process, lambda: len(metric_lines(workdir)) > lines_before and evaluating(workdir), 300, poll=0.001)
  return startup


def damage_newest(workdir: Path) -> tuple[int, int]:
  """XORs every 97th byte of the array data files (OCDBT d/ folders) of the newest latest checkpoint;
  (its step, the number of files)."""
  step = max(checkpoint_steps(workdir / "checkpoints" / "latest"))
  files = [p for p in (workdir / "checkpoints" / "latest" / str(step) / "state").rglob("*") if p.parent.name == "d"]
  for data in files:
    damaged = bytearray(data.read_bytes())
    for i in range(100, len(damaged), 97):
      damaged[i] ^= 0x5A
    data.write_bytes(bytes(damaged))
  return step, len(files)


# --- comparison ----------------------------------------------------------------------------------


def saved_trees(workdir: Path):
  """(latest state tree, loop state without times, best tree) as numpy, read as orbax wrote them."""
  import jax
  import orbax.checkpoint as ocp

  from ftjax import checkpoints as ckpt

  manager = ckpt.Checkpoints(workdir)
  restored = manager.latest.restore(
    manager.latest_step(), args=ocp.args.Composite(state=ocp.args.StandardRestore(), loop=ocp.args.JsonRestore())
  )
  best = manager.best.restore(manager.best_step(), args=ocp.args.StandardRestore())
  manager.close()
  loop_state = {k: v for k, v in dict(restored["loop"]).items() if k not in ("wall_seconds", "cpu_seconds")}
  as_numpy = lambda tree: jax.tree_util.tree_flatten_with_path(jax.tree.map(np.asarray, tree))[0]  # noqa: E731
  return as_numpy(dict(restored["state"])), loop_state, as_numpy(best)


def differences(a: Path, b: Path) -> list[str]:
  """What differs between two finished runs (empty: identical)."""
  import jax

  state_a, loop_a, best_a = saved_trees(a)
  state_b, loop_b, best_b = saved_trees(b)
  found = []
  for name, x, y in (("state", state_a, state_b), ("best", best_a, best_b)):
    if [p for p, _ in x] != [p for p, _ in y]:
      found.append(f"{name}: different leaves")
      continue
    found += [f"{name}{jax.tree_util.keystr(p)}" for (p, u), (_, v) in zip(x, y) if not np.array_equal(u, v)]
  if loop_a != loop_b:
    found.append(f"loop state: {loop_a} != {loop_b}")
  untimed = lambda lines: [{k: v for k, v in l.items() if k != "examples_per_second"} for l in lines]  # noqa: E731
  if untimed(metric_lines(a)) != untimed(metric_lines(b)):
    found.append("metrics.jsonl")
  return found


# --- the run ---------------------------------------------------------------------------------------


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax logs every restore at INFO
  root = Path(FLAGS.workdir).expanduser().resolve()
  reference, chaos, logs = root / "reference", root / "chaos", root / "logs"
  for folder in (reference, chaos, logs):
    shutil.rmtree(folder, ignore_errors=True)
  logs.mkdir(parents=True)
  rng = random.Random(FLAGS.seed)

  began = time.time()
  process = start(reference, logs / "reference.log")
  wait_for(process, lambda: event_files(reference) > 0, 1200, poll=0.05)
  startup_seconds = time.time() - began  # imports, data, model (the compile cache is empty here)
  if process.wait() != 0:
    sys.exit(f"the reference run failed: {logs / 'reference.log'}")
  print(f"reference run: {time.time() - began:.0f} s (start-up {startup_seconds:.0f} s)", flush=True)

  faults = ["kill"] * FLAGS.kills + ["term"] * FLAGS.terms
  rng.shuffle(faults)
  phases = [PHASES[i % len(PHASES)] for i in range(FLAGS.kills)]
  rng.shuffle(phases)
  kills = terms = corruptions = 0
  corrupt_after = max(FLAGS.kills // 2, 1)  # after this many kills, once two checkpoints exist
  check_walk_back = None  # the start that must report the corrupt checkpoint and use the one before
  seen_phases: dict[str, int] = {}
  latest = chaos / "checkpoints" / "latest"
  chaos_began = time.time()
  for attempt, fault in enumerate(faults + ["finish"], 1):
    log = logs / f"{attempt:02d}.log"
    process, began = start(chaos, log), time.time()
    if fault == "finish":
      if process.wait() != 0:
        sys.exit(f"the final start failed (status {process.returncode}): {log}")
    elif fault == "kill":
      phase, events_before = phases[kills], event_files(chaos)
      startup = aim(process, chaos, phase, rng, startup_seconds)
      startup_seconds = min(startup_seconds, startup or startup_seconds)
      if process.poll() is not None:
        sys.exit(f"start {attempt} ended (status {process.returncode}) before its kill: {log}")
      seen = phase_now(chaos, events_before)
      os.kill(process.pid, signal.SIGKILL)
      process.wait()
      kills += 1
      seen_phases[seen] = seen_phases.get(seen, 0) + 1
      print(
        f"kill {kills:2d}: aimed at {phase:16s} killed during {seen:16s} {time.time() - began:5.1f} s after the "
        f"start; checkpoints now {checkpoint_steps(latest)}",
        flush=True,
      )
    else:
      aim(process, chaos, "steps", rng, startup_seconds)
      if process.poll() is not None:
        sys.exit(f"start {attempt} ended (status {process.returncode}) before its SIGTERM: {log}")
      os.kill(process.pid, signal.SIGTERM)
      status = process.wait(timeout=300)
      terms += 1
      stopped = re.findall(r"stopped: [^\r\n]*", log.read_text())
      print(f"term {terms:2d}: exit status {status}, {stopped[-1] if stopped else 'no stop line'}", flush=True)
      if status != 75 or not stopped:
        sys.exit(f"SIGTERM did not stop the run with a checkpoint (status {status}): {log}")
    if check_walk_back is not None and check_walk_back <= attempt:  # the first start to reach the restore
      text = log.read_text()
      reported = [line for line in text.splitlines() if "does not restore" in line]
      if reported:
        print(f"  start {attempt} reported it: {reported[0][:150]}...", flush=True)
        check_walk_back = None
      elif "resuming" in text or fault == "finish":
        sys.exit(f"the first start to restore after the corruption did not report it: {log}")
    if fault == "kill" and not corruptions and kills >= corrupt_after and len(checkpoint_steps(latest)) >= 2:
      step, files = damage_newest(chaos)
      corruptions, check_walk_back = 1, attempt + 1
      print(f"corrupted the newest checkpoint, step {step} ({files} data files damaged)", flush=True)

  found = differences(reference, chaos)
  for difference in found[:20]:
    print(f"differs: {difference}")
  print(f"kills by the phase they hit: {seen_phases}; {len(faults) + 1} starts in {time.time() - chaos_began:.0f} s")
  print(f"CHAOS kills={kills} terms={terms} corruptions={corruptions} identical={'no' if found else 'yes'}")
  sys.exit(1 if found else 0)


if __name__ == "__main__":
  app.run(main)

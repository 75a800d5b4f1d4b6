"""Shared fixtures for the loop, CLI and task tests: a tiny random BERT that tokenises real text, small task
folders cut from the real data, and helpers to run the scripts and configs quickly on 2 CPU cores.

The tiny BERT (hidden 32, 2 layers, MiniLM's 30,522-token vocabulary and tokenizer files) makes a run
take seconds; what these tests check is mechanics (resume, early stopping, NaN guard, file formats,
command lines), not accuracy.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # the configs/ package lives beside ftjax/, as the scripts expect
  sys.path.insert(0, str(REPO))

from configs.base import SHARED_DATA  # noqa: E402  (the real datasets beside the clone)

# Subprocesses compile with most XLA optimisations off (about 4x faster on CPU, same results), exactly as
# the in-process runs do under the `fast_compiles` fixture, so the two can be compared bit for bit.
SCRIPT_ENV = {
  "JAX_DISABLE_MOST_OPTIMIZATIONS": "1",
  "JAX_PLATFORMS": "cpu",
  "TOKENIZERS_PARALLELISM": "false",
  "TF_CPP_MIN_LOG_LEVEL": "3",
}


def needs_data(*names):
  missing = [n for n in names if not (SHARED_DATA / n).is_dir()]
  if missing:
    pytest.skip(f"real data {missing} not under {SHARED_DATA}")


@pytest.fixture(scope="module")
def fast_compiles():
  """XLA with most optimisations off for a module's in-process runs (restored afterwards)."""
  old = jax.config.values["jax_disable_most_optimizations"]
  jax.config.update("jax_disable_most_optimizations", True)
  yield
  jax.config.update("jax_disable_most_optimizations", old)


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory):
  """A random 2-layer BERT (hidden 32) in Hugging Face layout, with MiniLM's tokenizer files."""
  import transformers
  from ftjax import models

  folder = tmp_path_factory.mktemp("tiny_bert")
  config = transformers.BertConfig(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    vocab_size=30522,
    max_position_embeddings=128,
  )
  transformers.BertModel(config).save_pretrained(folder)
  minilm = models.resolve("minilm")
  for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
    if (minilm / name).is_file():
      shutil.copy(minilm / name, folder / name)
  return folder


@pytest.fixture(scope="session")
def tfds_dir(tmp_path_factory):
  """Prepared TFDS data of the whole session (kept out of ~/.cache)."""
  return tmp_path_factory.mktemp("tfds")


def head_lines(src: Path, dst: Path, rows: int, header: bool = True) -> Path:
  """The first `rows` data rows of a text file (plus its header line)."""
  dst.parent.mkdir(parents=True, exist_ok=True)
  with open(src, encoding="utf-8", newline="") as f:
    lines = [line for _, line in zip(range(rows + int(header)), f)]
  dst.write_text("".join(lines), encoding="utf-8")
  return dst


def glue_folder(root: Path, task: str, rows: int = 64) -> Path:
  """train.tsv and dev.tsv with the first `rows` rows of a GLUE task."""
  needs_data(task)
  for name in ("train.tsv", "dev.tsv"):
    head_lines(SHARED_DATA / task / name, root / task / name, rows)
  return root / task


@pytest.fixture(scope="session")
def rte_dir(tmp_path_factory):
  return glue_folder(tmp_path_factory.mktemp("data"), "rte")


@pytest.fixture(scope="session")
def stsb_dir(tmp_path_factory):
  return glue_folder(tmp_path_factory.mktemp("data"), "stsb")


def conll_sentences(src: Path, dst: Path, sentences: int) -> Path:
  """The first `sentences` sentences of a CoNLL-2003 file (blank-line separated, -DOCSTART- kept)."""
  out, count = [], 0
  with open(src, encoding="utf-8") as f:
    for line in f:
      out.append(line)
      if not line.strip() and len(out) > 1 and out[-2].strip() and not out[-2].startswith("-DOCSTART-"):
        count += 1
        if count == sentences:
          break
  dst.parent.mkdir(parents=True, exist_ok=True)
  dst.write_text("".join(out), encoding="utf-8")
  return dst


@pytest.fixture(scope="session")
def conll_dir(tmp_path_factory):
  needs_data("conll2003")
  root = tmp_path_factory.mktemp("data") / "conll2003"
  for name in ("eng.train", "eng.testa", "eng.testb"):
    conll_sentences(SHARED_DATA / "conll2003" / name, root / name, 40)
  return root


def tiny_config(config, model, tfds_dir, **overrides):
  """`config` (a configs/*.py result) made fast: the tiny model, one device, few steps, small evals."""
  config.model = str(model)
  config.tfds_dir = str(tfds_dir)
  config.parallel = "none"
  config.batch_size = 8
  config.eval_batch_size = 32
  config.max_eval_examples = 32
  config.max_steps = 6
  config.eval_every = 3
  config.checkpoint_every = 3
  config.log_every = 2
  config.max_length = 64
  config.warmup_steps = 0
  nested = {}
  for key, value in overrides.items():
    if "." in key:
      section, name = key.split(".", 1)
      nested.setdefault(section, {})[name] = value
    else:
      setattr(config, key, value)
  for section, values in nested.items():
    config[section].update(values)
  return config


def tiny_flags(model, tfds_dir, **overrides) -> list[str]:
  """The command-line equivalent of tiny_config."""
  values = dict(
    model=model,
    tfds_dir=tfds_dir,
    parallel="none",
    batch_size=8,
    eval_batch_size=32,
    max_eval_examples=32,
    max_steps=6,
    eval_every=3,
    checkpoint_every=3,
    log_every=2,
    max_length=64,
    warmup_steps=0,
  )
  values.update(overrides)
  return [f"--config.{k}={v}" for k, v in values.items()]


def script(
  name: str, *args, input: str | None = None, timeout: float = 300, check: bool = True, log: Path | None = None
):
  """Runs scripts/<name>.py in a subprocess: the CompletedProcess, or with `log` (a file for its stdout and
  stderr) the Popen of a run started in the background."""
  cmd = [sys.executable, str(REPO / "scripts" / f"{name}.py"), *map(str, args)]
  env = {**os.environ, **SCRIPT_ENV}
  if log is not None:
    with open(log, "w") as out:  # a file, not a pipe: nobody reads a pipe while the test waits
      return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, text=True)
  result = subprocess.run(cmd, cwd=REPO, env=env, input=input, capture_output=True, text=True, timeout=timeout)
  if check and result.returncode != 0:
    raise AssertionError(
      f"{' '.join(cmd)} exited with {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    )
  return result


def metric_lines(workdir) -> list[dict]:
  return [json.loads(l) for l in (Path(workdir) / "metrics.jsonl").read_text().splitlines() if l.strip()]


def checkpoint_steps(folder) -> list[int]:
  """Completed orbax checkpoints in a folder (orbax writes to a temporary name and renames when done)."""
  folder = Path(folder)
  return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.is_dir() else []


def scripts_together(runs: dict, max_workers: int = 4) -> dict:
  """Runs {name: (script name, args, stdin or None)} as concurrent subprocesses (each spends most of its time
  in single-threaded imports and model loading); returns {name: CompletedProcess} without checking them."""
  import concurrent.futures

  with concurrent.futures.ThreadPoolExecutor(max_workers) as pool:
    futures = {
      name: pool.submit(script, script_name, *args, input=stdin, check=False)
      for name, (script_name, args, stdin) in runs.items()
    }
    return {name: f.result() for name, f in futures.items()}


def load_script(name: str):
  """scripts/<name>.py as a module (the scripts are not a package), for tests of its functions."""
  import importlib.util

  spec = importlib.util.spec_from_file_location(f"{name}_script", REPO / "scripts" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def check(result) -> str:
  """stdout of a finished script run, or an AssertionError with its output."""
  if result.returncode != 0:
    raise AssertionError(
      f"{' '.join(result.args)} exited with {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    )
  return result.stdout


def parse_config(*args):
  """A config from command-line arguments, parsed as scripts/train.py parses them (`--config=FILE[:arg]`,
  `--config.key=value`), in this process."""
  from absl import flags
  from ml_collections import config_flags

  argv = ["train.py", *[a.replace("--config=configs/", f"--config={REPO}/configs/") for a in map(str, args)]]
  values = flags.FlagValues()
  config_flags.DEFINE_config_file(
    "config", None, "experiment config file", flag_values=values, lock_config=True, sys_argv=argv
  )  # the overrides it accepts are read from argv
  values(argv)
  return values.config


def greedy_without_cache(model, variables, ids, mask, steps):
  """Reference: re-run the whole sequence through the model (no cache) for every new token. The
  buffer has its final length from the start: causal attention keeps the not-yet-written tail
  invisible, so one compilation serves every step."""
  prompt_len = ids.shape[1]
  ids = jnp.concatenate([jnp.asarray(ids), jnp.zeros((ids.shape[0], steps), jnp.int32)], axis=1)
  mask = jnp.concatenate([jnp.asarray(mask), jnp.ones((ids.shape[0], steps), jnp.int32)], axis=1)
  logits = jax.jit(lambda ids: model.apply(variables, ids, attention_mask=mask).logits)
  for t in range(prompt_len, prompt_len + steps):
    ids = ids.at[:, t].set(jnp.argmax(logits(ids)[:, t - 1], -1))
  return np.asarray(ids)

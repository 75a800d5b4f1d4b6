"""Score a finished run: `python scripts/evaluate.py --workdir=DIR [--split=test] [--data_dir=NEW]`,
or a PEFT LoRA adapter trained elsewhere: `--init_from_peft=ADAPTER --config=configs/glue.py:rte --config.model=BASE`.

Loads the run's config and best checkpoint, scores the split, prints the metrics and appends them to
the run's metrics.jsonl (split as given).
"""

import json
import os
import sys
from pathlib import Path

import jax
from absl import flags
from ml_collections import config_flags

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without installing
from ftjax import cli  # noqa: E402
from ftjax import experiment, parallel, step as steps  # noqa: E402
from ftjax import trainability  # noqa: E402
from ftjax.evaluation import append_metrics, evaluate_generation, evaluate_split  # noqa: E402
from ftjax.tasks import datasets, kinds  # noqa: E402

flags.DEFINE_string("workdir", None, "a finished run folder")
flags.DEFINE_string("split", "dev", "train | dev | test (or any split the data folder has)")
flags.DEFINE_string("data_dir", None, "score another folder of the same task's raw files instead")
flags.DEFINE_integer("max_examples", 0, ">0: score a fixed subset of N examples (as a run with max_eval_examples=N)")
flags.DEFINE_integer(
  "generate",
  0,
  "decoders: also decode the first N examples with the run's generation "
  "settings and score them (BLEU, ROUGE-L; for E2E also NIST, METEOR, CIDEr)",
)
flags.DEFINE_string("init_from_peft", None, "instead of --workdir: a PEFT LoRA adapter folder (--config: base, task)")
config_flags.DEFINE_config_file("config", None, "with --init_from_peft: experiment config file (configs/*.py[:arg])")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  config = FLAGS.config if FLAGS.init_from_peft else FLAGS.workdir and experiment.load_config(FLAGS.workdir)
  parallel.initialize_distributed(bool(config) and config.get("distributed", False))  # several processes: docs/scale.md
  if jax.process_index() != 0:  # every process scores its rows; process 0 alone prints and writes
    sys.stdout = open(os.devnull, "w")
  config, exp, trainable, frozen = experiment.for_inference(FLAGS.workdir, FLAGS.init_from_peft, config)
  if FLAGS.data_dir:
    config = datasets.with_data_dir(config, FLAGS.data_dir, FLAGS.split)
  data = datasets.load(config, exp.tokenizer, FLAGS.split, FLAGS.max_examples)
  par = parallel.for_scoring(config)
  eval_step = par.compile_eval_step(steps.make_eval_step(exp.model, exp.task))
  trainable, frozen = par.put_state((trainable, frozen)) if par.mode == "mesh" else (trainable, frozen)
  values, report = evaluate_split(par, eval_step, trainable, frozen, data, config.eval_batch_size)
  if report:
    print(report)
  if FLAGS.init_from_peft:  # no run folder to append to
    print(json.dumps({"split": FLAGS.split, **{k: round(float(v), 4) for k, v in values.items()}}))
    return
  workdir = Path(FLAGS.workdir).expanduser().resolve()
  if FLAGS.generate and kinds.kind(exp.task.kind).generates:
    config.generation.eval_examples = FLAGS.generate
    values.update(evaluate_generation(config, exp, trainability.combine(trainable, frozen), FLAGS.split, workdir))
  if not values:
    print(f"split {FLAGS.split!r} has no labels: nothing to score")
    return
  append_metrics(workdir, trained_steps(workdir), FLAGS.split, values)
  print(json.dumps({"split": FLAGS.split, **{k: round(float(v), 4) for k, v in values.items()}}))


def trained_steps(workdir: Path) -> int:
  """The step of the run's parameters: its best checkpoint's."""
  best = sorted(int(p.name) for p in (workdir / "checkpoints" / "best").iterdir() if p.name.isdigit())
  return best[-1] if best else 0


if __name__ == "__main__":
  cli.run(main)

"""Score a finished run: `python scripts/evaluate.py --workdir=DIR [--split=test] [--data_dir=NEW]`.

Loads the run's config and best checkpoint, scores the split, prints the metrics and appends them to
the run's metrics.jsonl (split as given).
"""

import json
import sys
from pathlib import Path

from absl import flags

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
flags.mark_flags_as_required(["workdir"])
FLAGS = flags.FLAGS


def main(argv):
  del argv
  config = experiment.load_config(FLAGS.workdir)
  if FLAGS.data_dir:
    config.data_dir = FLAGS.data_dir
  config, exp, trainable, frozen = experiment.restore(FLAGS.workdir, config)
  data = datasets.load(config, exp.tokenizer, FLAGS.split, FLAGS.max_examples)
  par = parallel.make_parallel("none")
  eval_step = par.compile_eval_step(steps.make_eval_step(exp.model, exp.task))
  values, report = evaluate_split(par, eval_step, trainable, frozen, data, config.eval_batch_size)
  if report:
    print(report)
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

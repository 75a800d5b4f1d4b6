"""Score a finished run: `python scripts/evaluate.py --workdir=DIR [--split=test] [--data_dir=NEW]`.

Loads the run's config and best checkpoint, scores the split, prints the metrics and appends them to
the run's metrics.jsonl (split as given).
"""
import json
import sys
from pathlib import Path

from absl import app, flags, logging

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ftjax import experiment, parallel, step as steps  # noqa: E402
from ftjax.loop import append_metrics, evaluate_split  # noqa: E402
from ftjax.tasks import datasets  # noqa: E402

flags.DEFINE_string("workdir", None, "a finished run folder")
flags.DEFINE_string("split", "dev", "train | dev | test (or any split the data folder has)")
flags.DEFINE_string("data_dir", None, "score another folder of the same task's raw files instead")
flags.DEFINE_integer("max_examples", 0, ">0: score a fixed subset of N examples (as a run with max_eval_examples=N)")
flags.mark_flags_as_required(["workdir"])
FLAGS = flags.FLAGS


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
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
  if not values:
    print(f"split {FLAGS.split!r} has no labels: nothing to score")
    return
  workdir = Path(FLAGS.workdir).expanduser().resolve()
  step = max((json.loads(l)["step"] for l in (workdir / "metrics.jsonl").read_text().splitlines() if l.strip()),
             default=0)
  append_metrics(workdir, step, FLAGS.split, values)
  print(json.dumps({"split": FLAGS.split, **{k: round(float(v), 4) for k, v in values.items()}}))


if __name__ == "__main__":
  app.run(main)

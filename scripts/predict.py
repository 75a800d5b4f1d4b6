"""Predict with a finished run — the deployment path. One input per line, from --input or stdin; one
JSON object per line on stdout.

  echo "a gripping, funny film" | python scripts/predict.py --workdir=runs/sst2
  python scripts/predict.py --workdir=runs/rte --input=pairs.tsv     # sentence pairs: text<TAB>text

Inputs and outputs per task:
  classification   text or text<TAB>text   → {"label", "score", "scores"}
  regression       text<TAB>text            → {"score"}
  NER              a sentence (split on whitespace into words) → {"entities": [{"type", "text", "start", "end"}]}
                   (start/end are word indices, end exclusive)
  QA               question<TAB>context     → {"answer"}
  relations        a sentence with <e1>…</e1> and <e2>…</e2> → {"label", "score", "scores"}
  causal LM        a prompt                 → {"generated"} (the config's generation settings; chat sources
                                              put it in the run's chat template as the user's turn)
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
from ftjax import experiment, parallel, step as steps, trainability  # noqa: E402
from ftjax.data import features as feats  # noqa: E402
from ftjax.data import sources  # noqa: E402
from ftjax.data.raw import DataError  # noqa: E402
from ftjax.evaluation import decode, run_eval  # noqa: E402
from ftjax.tasks import datasets, kinds  # noqa: E402

flags.DEFINE_string("workdir", None, "a finished run folder")
flags.DEFINE_string("input", None, "file with one input per line (default: stdin)")
flags.DEFINE_string("init_from_peft", None, "instead of --workdir: a PEFT LoRA adapter folder (--config: base, task)")
config_flags.DEFINE_config_file("config", None, "with --init_from_peft: experiment config file (configs/*.py[:arg])")
FLAGS = flags.FLAGS


def parse(lines, kind, where):
  """Example dicts in the schemas of ftjax.data.raw, from the input lines (the kind's `parse`)."""
  examples = []
  for number, line in enumerate(lines, start=1):
    line = line.rstrip("\n")
    if line.strip():
      examples.append(kind.parse(line.split("\t"), number, where))
  if len({"text_pair" in e for e in examples}) > 1:
    raise DataError(f"{where}: mix of single texts and pairs; the run was trained on one kind")
  return examples


def main(argv):
  del argv
  config = FLAGS.config if FLAGS.init_from_peft else FLAGS.workdir and experiment.load_config(FLAGS.workdir)
  parallel.initialize_distributed(bool(config) and config.get("distributed", False))  # docs/scale.md
  if jax.process_index() != 0:  # every process scores its rows; process 0 alone prints
    sys.stdout = open(os.devnull, "w")
  config, exp, trainable, frozen = experiment.for_inference(FLAGS.workdir, FLAGS.init_from_peft, FLAGS.config)
  kind, names = kinds.kind(exp.task.kind), exp.task.label_names
  source = open(FLAGS.input) if FLAGS.input else sys.stdin
  examples = parse(source.readlines(), kind, FLAGS.input or "<stdin>")
  if not examples:
    return
  tok = exp.tokenizer
  if kind.generates:
    tree = trainability.combine(trainable, frozen)
    chat = sources.source(config.task.source).prompts  # chat sources: the line is the user's turn
    chat_examples = [{"idx": i, "system": "", "turns": [e["mr"]], "refs": [""]} for i, e in enumerate(examples)]
    prompts = chat(chat_examples, tok, config) if chat else feats.generation_prompts(examples, tok, config.max_length)
    for text in decode(config, exp, tree, prompts):
      print(json.dumps({"generated": text}))
    return
  src = datasets.source(config)
  features = (src.featurize or kind.featurize)(examples, tok, config)
  par = parallel.for_scoring(config)
  eval_step = par.compile_eval_step(steps.make_eval_step(exp.model, exp.task))
  trainable, frozen = par.put_state((trainable, frozen)) if par.mode == "mesh" else (trainable, frozen)
  outputs, _, _ = run_eval(par, eval_step, trainable, frozen, features, config.eval_batch_size)
  for prediction in kind.decode(examples, features, outputs, names):
    print(json.dumps(prediction))


if __name__ == "__main__":
  cli.run(main)

"""Export a finished run: `python scripts/export.py --workdir=DIR --out=OUT --format=hf|peft`.

hf:   a merged transformers checkpoint (LoRA folded in) for the task's Auto class
      (AutoModelForSequenceClassification, …ForTokenClassification, …ForQuestionAnswering, …ForCausalLM).
peft: a LoRA run as a PEFT adapter for `peft.PeftModel.from_pretrained(base, OUT)`.
      (GPT-2 sequence classification: load the base with pad_token_id=eos_token_id.)
"""

import sys
from pathlib import Path

from absl import flags

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without installing
from ftjax.errors import InputError  # noqa: E402
from ftjax import cli  # noqa: E402
from ftjax import experiment, export, models, trainability  # noqa: E402
from ftjax.tasks import kinds  # noqa: E402

flags.DEFINE_string("workdir", None, "a finished run folder")
flags.DEFINE_string("out", None, "output folder")
flags.DEFINE_enum("format", "hf", ["hf", "peft"], "merged transformers checkpoint, or PEFT LoRA adapter")
flags.mark_flags_as_required(["workdir", "out"])
FLAGS = flags.FLAGS


def main(argv):
  del argv
  config, exp, trainable, frozen = experiment.restore(FLAGS.workdir)
  tree = trainability.combine(trainable, frozen)
  task = exp.task
  export_task = kinds.kind(task.kind).export_task
  if export_task is None:
    raise InputError(f"task kind {task.kind}: transformers has no class for this head, so there is nothing to export")
  if (
    export_task == "sequence_classification"
    and not exp.model.is_decoder
    and config.get("head_pooling", "pooler") != "pooler"
  ):
    raise InputError(
      f"config key head_pooling={config.head_pooling!r}: transformers' "
      "BertForSequenceClassification reads the pooler, so this run's head has no place there"
    )
  labels = dict(enumerate(task.label_names)) if task.label_names else None
  common = dict(model=exp.model, tree=tree, task=export_task, num_labels=task.num_labels or None, id2label=labels)
  if FLAGS.format == "hf":
    out = export.export_hf(FLAGS.out, source_folder=models.resolve(config.model), **common)
  else:
    out = export.export_peft(FLAGS.out, base_model=str(models.resolve(config.model)), **common)
  print(f"wrote {out}")


if __name__ == "__main__":
  cli.run(main)

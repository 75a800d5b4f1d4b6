"""Any labelled CSV/TSV/JSONL, by configuration alone.

  python scripts/train.py --config=configs/text_classification.py --workdir=runs/mine \
    --config.task.train_file=data/train.csv --config.task.dev_file=data/dev.csv \
    --config.task.text_fields=review --config.task.label_field=stars

text_fields is one column name, or two separated by a comma (sentence pairs). Label ids are the sorted
distinct labels of the train file. A malformed row, an unknown label or an empty text stops the run
with the file and line named. The result depends on your data; tests/test_cli.py runs this config on a
CSV with arbitrary column names built from SST-2 dev.
"""

from configs import base


def get_config():
  c = base.get_config()
  c.task.source = "table"
  c.task.train_file = ""
  c.task.dev_file = ""
  c.task.test_file = ""
  c.task.text_fields = "text"
  c.task.label_field = "label"
  c.num_epochs = 3
  c.eval_every = 200
  c.checkpoint_every = 200
  return c

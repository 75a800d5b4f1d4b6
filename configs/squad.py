"""Extractive QA in the SQuAD v1.1 format: start/end logits, long contexts in windows with a stride.

  python scripts/train.py --config=configs/squad.py --workdir=runs/squad --config.data_dir=/path/to/squad

data_dir holds train-v1.1.json and dev-v1.1.json (not in ../shared/data; with the network, leave data_dir
unset and TFDS's `squad` is used). Recipe (BERT paper): lr 5e-5 (3e-5 for base models), batch 32,
2 epochs, max length 384 with a 128-token stride. Expected dev EM/F1 with MiniLM-L6: about 70 / 80 (the
MiniLM paper reports 79.9 F1 on SQuAD 2.0 for its L6-H384 model; v1.1 is easier). Not measured here
for lack of the data; tests/test_tasks.py runs the whole pipeline on hand-written examples.
"""

from configs import base


def get_config():
  c = base.get_config()
  c.task.source = "squad"
  c.data_dir = None
  c.max_length = 384
  c.task.doc_stride = 128
  c.num_epochs = 2
  c.learning_rate = 5e-5
  c.batch_size = 32
  c.eval_every = 2000
  c.checkpoint_every = 2000
  c.early_stopping.metric = "f1"
  return c

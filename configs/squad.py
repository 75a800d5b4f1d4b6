"""Extractive QA in the SQuAD format: start/end logits, long contexts in windows with a stride.

  python scripts/train.py --config=configs/squad.py --workdir=runs/squad              # ../shared/data/squad
  python scripts/train.py --config=configs/squad.py:official --workdir=runs/squad-official \
      --config.data_dir=/path/to/squad    # train-v1.1.json + dev-v1.1.json (unset: TFDS's `squad`, network)

Default (`articles`): the official SQuAD v1.1 dev set (../shared/data/squad/dev-v1.1.json, 48 articles, 10,570
questions; the train set is not available offline) split by article, by position in the file, so that no
article is on both sides (source `squad_articles`, ftjax.data.raw.article_split): articles 1–34 train
(7,628 questions), 35–38 dev (Doctor_Who … Kenya, 954), 39–48 test (Chloroplast … Force, 1,988). Any one
SQuAD-format file in data_dir works the same way, v2.0 files with unanswerable questions included (the empty
answer then competes with the best span, and is scored as the official v2.0 script does).

Recipe (BERT paper): lr 5e-5 (3e-5 for base models), batch 32, 2 epochs, max length 384 with a 128-token
stride. Measured with MiniLM on the article split (results/extraction.md), cut to 2 shared CPU cores: one
epoch, 662 steps of 16 windows at max length 192 (stride 64), lr 1e-4, 59 min: test EM 49.5 / F1 63.7,
against 0.4 / 7.2 for the untrained head.
"""

from configs import base


def get_config(split="articles"):
  c = base.get_config()
  if split == "articles":
    c.task.source = "squad_articles"
    c.data_dir = base.shared_data("squad")
    c.eval_splits = ("dev", "test")
  elif split == "official":
    c.task.source = "squad"
    c.data_dir = None
  else:
    raise ValueError(f"configs/squad.py:{split}: expected articles or official")
  c.max_length = 384
  c.task.doc_stride = 128
  c.num_epochs = 2
  c.learning_rate = 5e-5
  c.batch_size = 32
  c.eval_every = 2000
  c.checkpoint_every = 2000
  c.early_stopping.metric = "f1"
  return c

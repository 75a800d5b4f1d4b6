"""GLUE with the packaged all-MiniLM-L6-v2, full fine-tuning by default: `configs/glue.py:<task>`.

  python scripts/train.py --config=configs/glue.py:rte --workdir=runs/rte
  python scripts/train.py --config=configs/glue.py:mrpc --workdir=runs/mrpc-lora --config.method=lora --config.learning_rate=5e-4

Tasks: sst2, cola, mrpc, rte, stsb (and qnli, mnli, qqp, wnli given their files). The data folder
defaults to ../shared/data/<task> beside the repo; set --config.data_dir elsewhere, or to None for TFDS.

Recipe: the MiniLM paper's GLUE setting (Wang et al. 2020): AdamW, lr 5e-5 (RTE/MRPC/CoLA/STS-B: 5e-5,
batch 32, up to 10 epochs on the small tasks), linear decay with 10% warm-up, max length 128.
Expected dev results after the full run (published MiniLM-L6-H384 references in brackets):
  sst2 accuracy ≈ 90 (91.5) · mrpc f1 ≈ 88 (88.9) · rte accuracy ≈ 65 (68.8) · cola matthews ≈ 40 (47.5)
  stsb pearson ≈ 87
(all-MiniLM-L6-v2 is a sentence-embedding model distilled from MiniLM-L6-H384, not the GLUE checkpoint
itself; the closing notes of the tasks issue give the numbers measured with these commands.)
"""
from pathlib import Path

from configs import base

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

# task → (epochs, learning rate, eval every [steps], training examples (0 = all)). Sized for 2 CPU cores:
# a few epochs rather than the papers' 10 on the small tasks, and SST-2 on a fixed 20,000-sentence subset
# (ftjax.tasks.datasets.load picks the same subset for every run).
RECIPES = {
    "sst2": (1, 3e-5, 200, 20000),
    "cola": (3, 5e-5, 100, 0),
    "mrpc": (3, 5e-5, 50, 0),
    "rte": (3, 5e-5, 40, 0),
    "stsb": (3, 5e-5, 100, 0),
    "qnli": (2, 3e-5, 1000, 0),
    "mnli": (2, 3e-5, 2000, 0),
    "qqp": (2, 3e-5, 2000, 0),
    "wnli": (5, 2e-5, 20, 0),
}


def get_config(task="rte"):
  if task not in RECIPES:
    raise ValueError(f"configs/glue.py:<task> — unknown task {task!r}; known: {sorted(RECIPES)}")
  c = base.get_config()
  epochs, lr, every, examples = RECIPES[task]
  c.task.source = f"glue/{task}"
  c.data_dir = str(SHARED_DATA / task)
  c.num_epochs = epochs
  c.max_train_examples = examples
  c.learning_rate = lr
  c.eval_every = every
  c.checkpoint_every = every
  c.early_stopping.patience = 0  # keep training; restore_best picks the best dev evaluation
  return c

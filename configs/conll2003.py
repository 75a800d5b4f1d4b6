"""CoNLL-2003 English NER with the packaged all-MiniLM-L6-v2: entity-level F1 (seqeval, IOB2).

  python scripts/train.py --config=configs/conll2003.py --workdir=runs/conll
  python scripts/train.py --config=configs/conll2003.py:lora --workdir=runs/conll-lora

The argument picks the method (full by default; lora, adapter, bitfit, head, prompt, prefix).
Labels go on the first sub-token of each word; tags are converted from the release's IOB1 to IOB2.
Recipe (BERT paper's NER setting, adapted): AdamW, lr 5e-5 (LoRA and adapters: 1e-3), batch 32,
3 epochs, max length 128 sub-tokens. Measured (results/tasks.md), full fine-tuning for 1 epoch
(`--config.num_epochs=1`, 22 min on 2 cores): entity F1 83.5 dev, 80.3 test (BERT-base: 95.1 dev /
92.4 test in the BERT paper, with a 14× larger model and more epochs).
The run ends by scoring dev and test (eng.testa, eng.testb) and writes ner_report_<split>.txt.
"""

from configs import base

PEFT_LEARNING_RATE = 1e-3  # LoRA, adapters, prompt/prefix tuning want a larger rate than full fine-tuning


def get_config(method="full"):
  c = base.get_config()
  c.task.source = "conll2003"
  c.data_dir = base.shared_data("conll2003")
  c.method = method
  c.num_epochs = 3
  c.learning_rate = 5e-5 if method in ("full", "bitfit") else PEFT_LEARNING_RATE
  c.eval_every = 500
  c.checkpoint_every = 500
  c.eval_splits = ("dev", "test")
  return c

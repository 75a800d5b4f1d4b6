"""Language modelling on WikiText-2: perplexity of a decoder before and after a short LoRA fine-tune.

  # perplexity of SmolLM2 as it comes (no training: 0 epochs), on the test split
  python scripts/train.py --config=configs/wikitext2.py --workdir=runs/wt2-base --config.num_epochs=0 --config.max_steps=0
  python scripts/evaluate.py --workdir=runs/wt2-base --split=test
  # a short LoRA fine-tune on the validation text, then the same test perplexity
  python scripts/train.py --config=configs/wikitext2.py --workdir=runs/wt2-lora
  python scripts/evaluate.py --workdir=runs/wt2-lora --split=test

WikiText-2 (tokenised v1, as in ../shared/data/wikitext2) ships valid.txt and test.txt here: the
fine-tune trains on valid (`task.train_split = "dev"`) for `max_steps` with no evaluation during
training (`task.dev_split = ""`), so test stays unseen until evaluate.py scores it. Text is cut into
non-overlapping blocks of `max_length` tokens; perplexity is exp(mean NLL) over every token of test.
"""

from configs import base


def get_config():
  c = base.get_config()
  c.model = "smollm2"
  c.task.source = "wikitext2"
  c.task.train_split = "dev"  # train on valid.txt (there is no train.txt here)
  c.task.dev_split = ""  # nothing to select on: train max_steps, score test afterwards
  c.data_dir = base.shared_data("wikitext2")
  c.max_length = 256
  c.method = "lora"
  c.lora.targets = r"self_attn/(q_proj|v_proj)$"
  c.lora.rank = 8
  c.lora.alpha = 16.0
  c.learning_rate = 3e-4
  c.batch_size = 8
  c.eval_batch_size = 8  # the logits over the 49,152-token vocabulary: 64 rows would need > 24 GB
  c.max_steps = 60
  c.eval_every = 0
  c.checkpoint_every = 30
  c.eval_splits = ()  # score with scripts/evaluate.py --split=test
  c.max_eval_examples = 0
  return c

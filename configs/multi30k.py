"""Multi30k en→de translation with LoRA on SmolLM2-135M-Instruct, prompted through its chat template.

  python scripts/train.py --config=configs/multi30k.py --workdir=runs/multi30k
  python scripts/train.py --config=configs/multi30k.py --workdir=runs/multi30k-zero-shot --config.num_epochs=0

The second command is the zero-shot baseline (no training step; same prompts, subset and decoding). The
prompt is the chat template around "Translate this English sentence into German:\n<sentence>"; the loss
is on the German tokens only. Sized for 2 CPU cores: a fixed subset of `max_train_examples` of the
29,000 training pairs, 1 epoch; cased sacreBLEU on the first `generation.eval_examples` sentences of
test_2016_flickr, greedy decoding. Numbers: results/decoder_tasks.md.
"""

from configs import chat_lora


def get_config():
  c = chat_lora.get_config("multi30k")
  c.max_length = 96  # template (~45) + English + German [tokens]: 14% of the training rows lose the start of
  # their English sentence, and <1% (German alone too long) are skipped; 128 would keep them whole
  c.max_train_examples = 192  # 24 steps of 8 (2 CPU cores shared with other work)
  c.max_eval_examples = 100  # dev perplexity of the German references on a fixed subset of val
  c.checkpoint_every = 12
  c.log_every = 10
  c.generation.max_new_tokens = 48
  return c

"""DailyDialog response generation with LoRA on SmolLM2-135M-Instruct: the next turn from the turns before.

  python scripts/train.py --config=configs/dailydialog.py --workdir=runs/dailydialog
  python scripts/train.py --config=configs/dailydialog.py --workdir=runs/dailydialog-zero-shot --config.num_epochs=0

The second command is the zero-shot baseline (no training step; same prompts, subset and decoding). The
turns before the answer are chat messages, alternating user and assistant so that the last is the
user's; the loss is on the answer's tokens only, and a long history loses its oldest turns first.
Perplexity of the reference answers on a fixed dev subset; BLEU-1/2 and distinct-1/2 of answers to the
first `generation.eval_examples` test contexts (greedy; with `--config.generation.method=sample
--config.generation.top_p=0.9 --config.generation.temperature=0.7`, nucleus sampling). Sized for 2 CPU cores: a fixed subset of
`max_train_examples` of the 76,053 training (context, answer) pairs, 1 epoch. Numbers:
results/decoder_tasks.md.
"""

from configs import chat_lora


def get_config():
  c = chat_lora.get_config("dailydialog")
  c.max_length = 128  # template + history + answer [tokens]; a longer history loses its oldest turns
  c.max_train_examples = 1024  # 128 steps of 8 (2 CPU cores: ~5 s a step when the machine is quiet)
  c.max_eval_examples = 100  # dev perplexity of the answers on a fixed subset of 100 dev pairs
  c.checkpoint_every = 32
  c.log_every = 10
  c.generation.max_new_tokens = 40
  # distinct-n of 100 answers moves by ±4 points between halves of the same answers: 1,000 contexts
  c.generation.eval_examples = 1000
  return c

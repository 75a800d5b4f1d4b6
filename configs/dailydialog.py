"""DailyDialog response generation with LoRA on SmolLM2-135M-Instruct: the next turn from the turns before.

  python scripts/train.py --config=configs/dailydialog.py --workdir=runs/dailydialog
  python scripts/train.py --config=configs/dailydialog.py --workdir=runs/dailydialog-zero-shot --config.num_epochs=0

The second command is the zero-shot baseline (no training step; same prompts, subset and decoding). The
turns before the answer are chat messages, alternating user and assistant so that the last is the
user's; the loss is on the answer's tokens only, and a long history loses its oldest turns first.
Perplexity of the reference answers on a fixed dev subset; BLEU-1/2 and distinct-1/2 of greedy answers
to the first `generation.eval_examples` test contexts. Sized for 2 CPU cores: a fixed subset of
`max_train_examples` of the 76,053 training (context, answer) pairs, 1 epoch. Numbers:
results/decoder_tasks.md.
"""

from configs import base


def get_config():
  c = base.get_config()
  c.model = "smollm2"
  c.task.source = "dailydialog"
  c.data_dir = base.shared_data("dailydialog")
  c.max_length = 128  # template + history + answer [tokens]; a longer history loses its oldest turns
  c.method = "lora"
  c.lora.targets = r"self_attn/(q_proj|k_proj|v_proj|o_proj)$|mlp/(gate_proj|up_proj|down_proj)$"
  c.lora.rank = 8
  c.lora.alpha = 16.0
  c.lora.dropout = 0.0  # no dropout: no random bits to hash, so the step compiles and runs faster on CPU
  c.learning_rate = 1e-3  # few steps: LoRA's larger rates
  c.batch_size = 8
  c.eval_batch_size = 16
  c.num_epochs = 1
  c.max_train_examples = 1024  # 128 steps of 8 (2 CPU cores: ~5 s a step when the machine is quiet)
  c.max_eval_examples = 100  # dev perplexity of the answers on a fixed subset of 100 dev pairs
  c.warmup_steps = 5
  c.eval_every = 0
  c.checkpoint_every = 32
  c.log_every = 10
  c.generation.method = "greedy"
  c.generation.max_new_tokens = 40
  c.generation.no_repeat_ngram_size = 3
  c.generation.eval_examples = 100
  c.generation.eval_split = "test"
  c.generation.batch_size = 25
  return c

"""Multi30k en→de translation with LoRA on SmolLM2-135M-Instruct, prompted through its chat template.

  python scripts/train.py --config=configs/multi30k.py --workdir=runs/multi30k
  python scripts/train.py --config=configs/multi30k.py --workdir=runs/multi30k-zero-shot --config.num_epochs=0

The second command is the zero-shot baseline (no training step; same prompts, subset and decoding). The
prompt is the chat template around "Translate this English sentence into German:\n<sentence>"; the loss
is on the German tokens only. Sized for 2 CPU cores: a fixed subset of `max_train_examples` of the
29,000 training pairs, 1 epoch; cased sacreBLEU on the first `generation.eval_examples` sentences of
test_2016_flickr, greedy decoding. Numbers: results/decoder_tasks.md.
"""

from configs import base


def get_config():
  c = base.get_config()
  c.model = "smollm2"
  c.task.source = "multi30k"
  c.data_dir = base.shared_data("multi30k")
  c.max_length = 96  # template (~45) + English + German [tokens]: 14% of the training rows lose the start of
  # their English sentence, and <1% (German alone too long) are skipped; 128 would keep them whole
  c.method = "lora"
  c.lora.targets = r"self_attn/(q_proj|k_proj|v_proj|o_proj)$|mlp/(gate_proj|up_proj|down_proj)$"
  c.lora.rank = 8
  c.lora.alpha = 16.0
  c.lora.dropout = 0.0  # no dropout: no random bits to hash, so the step compiles and runs faster on CPU
  c.learning_rate = 1e-3  # few steps: LoRA's larger rates
  c.batch_size = 8
  c.eval_batch_size = 16
  c.num_epochs = 1
  c.max_train_examples = 192  # 24 steps of 8 (2 CPU cores shared with other work)
  c.max_eval_examples = 100  # dev perplexity of the German references on a fixed subset of val
  c.warmup_steps = 5
  c.eval_every = 0
  c.checkpoint_every = 12
  c.log_every = 10
  c.generation.method = "greedy"
  c.generation.max_new_tokens = 48
  c.generation.no_repeat_ngram_size = 3
  c.generation.eval_examples = 100
  c.generation.eval_split = "test"
  c.generation.batch_size = 25
  return c

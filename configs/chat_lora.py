"""The recipe the decoder tasks share (configs/samsum.py, multi30k.py, dailydialog.py): SmolLM2-135M-Instruct
through its chat template, LoRA on every attention and MLP projection, 1 epoch on a fixed training subset,
then greedy answers to the first 100 test examples. Each task's file sets its source, lengths and sizes.

Not a run on its own: `python scripts/train.py --config=configs/samsum.py` etc. (numbers:
results/decoder_tasks.md).
"""

from configs import base


def get_config(source: str):
  c = base.get_config()
  c.model = "smollm2"
  c.task.source = source
  c.data_dir = base.shared_data(source)
  c.method = "lora"
  c.lora.targets = r"self_attn/(q_proj|k_proj|v_proj|o_proj)$|mlp/(gate_proj|up_proj|down_proj)$"
  c.lora.rank = 8
  c.lora.alpha = 16.0
  c.lora.dropout = 0.0  # no dropout: no random bits to hash, so the step compiles and runs faster on CPU
  c.learning_rate = 1e-3  # few steps: LoRA's larger rates
  c.batch_size = 8
  c.eval_batch_size = 16
  c.num_epochs = 1
  c.max_eval_examples = 100  # dev perplexity of the references on a fixed subset of 100 dev examples
  c.warmup_steps = 5
  c.eval_every = 0
  c.generation.method = "greedy"
  c.generation.no_repeat_ngram_size = 3
  c.generation.eval_examples = 100
  c.generation.eval_split = "test"
  c.generation.batch_size = 25
  return c

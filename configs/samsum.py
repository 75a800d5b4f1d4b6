"""SAMSum dialogue summarisation with LoRA on SmolLM2-135M-Instruct, prompted through its chat template.

  python scripts/train.py --config=configs/samsum.py --workdir=runs/samsum
  python scripts/train.py --config=configs/samsum.py --workdir=runs/samsum-zero-shot --config.num_epochs=0

The second command is the zero-shot baseline: no training step, the same prompts, subset and decoding.
The prompt is the chat template (the GGUF's own) around "Summarize this dialogue:\n<dialogue>"; the loss
is on the summary tokens only, and a dialogue too long for max_length loses its first lines, never the
summary (ftjax.data.features.fit_prompt). Sized for 2 CPU cores: a fixed subset of `max_train_examples`
of the 14,731 training dialogues, 1 epoch; ROUGE-1/2/L on the first `generation.eval_examples` test
dialogues, greedy decoding. Numbers: results/decoder_tasks.md.
"""

from configs import chat_lora


def get_config():
  c = chat_lora.get_config("samsum")
  c.max_length = 192  # template + dialogue + summary [tokens]: half the rows fit whole (median 189); the
  # others lose their first lines (2 CPU cores: 60 s a step of 8 × 256 tokens on a loaded machine)
  c.eval_batch_size = 8  # logits over the 49,152-token vocabulary: [8, 320, 49152] float32 is 0.5 GB
  c.max_train_examples = 512  # 64 steps of 8 (2 CPU cores: ~9 s a step when the machine is quiet)
  c.max_eval_examples = 100  # dev perplexity of the summaries on a fixed subset of 100 dev dialogues
  c.checkpoint_every = 16
  c.log_every = 8
  c.generation.max_new_tokens = 60  # SAMSum summaries: 20 words on average, ~30 tokens
  c.generation.batch_size = 20
  return c

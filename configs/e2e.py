"""E2E NLG (data-to-text) with LoRA on SmolLM2-135M-Instruct, after the LoRA paper's E2E recipe.

  python scripts/train.py --config=configs/e2e.py --workdir=runs/e2e
  python scripts/evaluate.py --workdir=runs/e2e --split=test     # perplexity on the test references

The LoRA paper (Hu et al. 2021, Table 3 and Appendix D) fine-tunes GPT-2 M with LoRA r=4 on the query
and value projections, alpha 32, dropout 0.1, AdamW lr 2e-4 with linear decay, batch 8, 5 epochs, and
decodes with beam search (10 beams, length penalty 0.9, no-repeat 4-grams). Adapted to 2 CPU cores:
SmolLM2-135M (a Llama-family decoder, from the packaged 4-bit GGUF, dequantised), LoRA on q_proj and
v_proj; training on a fixed subset of `max_train_examples` MR–reference pairs of the 42,061 (the same
subset for every run: ftjax.tasks.datasets.load), 1 epoch; generation scored on the first
`generation.eval_examples` MRs of the test set (testset_w_refs.csv, all references each) with 4 beams.
The run's numbers are in results/e2e.md beside the LoRA paper's GPT-2 M ones (BLEU 70.4, ROUGE-L 71.8).
"""

from configs import base


def get_config():
  c = base.get_config()
  c.model = "smollm2"
  c.task.source = "e2e_nlg"
  c.data_dir = base.shared_data("e2e", "e2e-dataset")
  c.max_length = 96  # MR + " || " + reference + EOS fits in 96 SmolLM2 tokens for >99% of rows
  c.method = "lora"
  c.lora.targets = r"self_attn/(q_proj|v_proj)$"
  c.lora.rank = 4
  c.lora.alpha = 32.0
  c.lora.dropout = 0.1
  c.learning_rate = 2e-4
  c.batch_size = 8
  c.eval_batch_size = 8  # the logits over the 49,152-token vocabulary: 64 rows would need > 24 GB
  c.num_epochs = 1
  c.max_train_examples = 2000
  c.max_eval_examples = 200  # dev perplexity on a fixed subset of dev MRs (all their references)
  c.warmup_steps = 25
  c.weight_decay = 0.01
  c.eval_every = 100
  c.checkpoint_every = 100
  c.generation.method = "beam"
  c.generation.num_beams = 4
  c.generation.length_penalty = 0.9
  c.generation.no_repeat_ngram_size = 4
  c.generation.max_new_tokens = 64
  c.generation.eval_examples = 100
  c.generation.eval_split = "test"
  return c

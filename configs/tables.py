"""The paper tables as grids of runs: `python scripts/reproduce.py --table=NAME` trains and tabulates them.

Each table is a list of cells; a cell is one `scripts/train.py` command (a config file plus
`--config.` overrides, one seed) and lands in `runs/tables/NAME/<cell>/`. A table's rows and columns are
labels; a column also says which split and metric of its cells it shows. Changing a recipe is changing
a line here; the tables in results/ cite the exact command of every cell.

  methods      full, head only, BitFit, Houlsby adapters, LoRA, prompt tuning × SST-2 (fixed 8,000-sentence
               subset), MRPC, RTE, CoLA, STS-B; 3 seeds on RTE, MRPC, CoLA (after LoRA Table 2, BitFit)
  adversarial  none vs FGM (ε 0.03, 0.1, 0.3) vs PGD (ε 0.1) for full fine-tuning and LoRA on the same tasks
               (after Miyato et al. 2017)
  ner          CoNLL-2003 dev and test entity F1 for full fine-tuning, LoRA and Houlsby adapters
  freeze       SST-2 (8,000-sentence subset): train only the top k of the 6 layers (k = 0…6), embeddings
               frozen or trained, and LayerNorm-only; dev accuracy against trainable parameters
  torch        full and LoRA on RTE and MRPC by ftjax and by PyTorch + transformers + PEFT, 3 seeds each
  precision    full fine-tuning on RTE and MRPC with float32 and with bfloat16 compute, 3 seeds each
  pooling      what the sequence head reads (BERT's pooler, the [CLS] state, the mean of the tokens as
               sentence-transformers pools) for head-only and full fine-tuning on SST-2, RTE and STS-B
  learning_rate  full fine-tuning at the recipe's rate, 1e-4 and 2e-4 on SST-2, RTE, CoLA: is the gap to the
               published references the recipe's or the checkpoint's?
  e2e          E2E NLG with LoRA on SmolLM2-135M (BLEU, NIST, METEOR, ROUGE-L, CIDEr on test MRs) beside
               the LoRA paper's GPT-2 M
  extraction   SQuAD v1.1 (dev set split by article) EM/F1 and SemEval-2010 Task 8 macro-F1, full fine-tuning
               against the untrained head
  decoder_tasks  SAMSum, Multi30k en→de and DailyDialog with LoRA on SmolLM2-135M, beside the same model
               zero-shot through its chat template

Measured results and their findings are in results/<table>.md, with the command of every cell and its wall time.
"""

from __future__ import annotations

import dataclasses
import json
import re

from configs.glue import RECIPES

GLUE_TASKS = ("sst2", "mrpc", "rte", "cola", "stsb")
NOISY_TASKS = ("mrpc", "rte", "cola")  # small dev sets: seed noise of several points, so 3 seeds
SEEDS = (0, 1, 2)
SST2_SUBSET = 8000  # SST-2 trains on this fixed subset of its 67k sentences (CPU-sized; the table says so)
# (split, metric) each GLUE task is reported with: the metric its benchmark leads with
GLUE_METRIC = {"sst2": "accuracy", "mrpc": "f1", "rte": "accuracy", "cola": "matthews", "stsb": "pearson"}
GLUE_LABEL = {"sst2": "SST-2 acc", "mrpc": "MRPC F1", "rte": "RTE acc", "cola": "CoLA MCC", "stsb": "STS-B r"}
# Published MiniLM-L6-H384 GLUE dev results (Wang et al. 2020): a different checkpoint from the
# sentence-embedding all-MiniLM-L6-v2 that the registry ships and these tables fine-tune.
MINILM_DEV = {"sst2": 91.5, "mrpc": 88.9, "rte": 68.8, "cola": 47.5}


@dataclasses.dataclass(frozen=True)
class Cell:
  """One run: `python scripts/<script>.py --config=<config> --workdir=<runs>/<table>/<name> <overrides>`."""

  name: str  # folder name of the run, unique in the table
  row: str  # row label it contributes to
  column: str  # column key it contributes to (Column.key)
  seed: int
  config: str  # configs/<file>.py[:arg]
  overrides: tuple[tuple[str, object], ...] = ()  # (config key, value) as --config.<key>=<value>
  script: str = "train"  # scripts/<script>.py: train (ftjax) or torch_reference (PyTorch + PEFT)
  init_from: str = ""  # an earlier cell of the table whose trained parameters this one starts from

  def flags(self) -> list[str]:
    """The command-line flags of this cell after --config and --workdir."""
    return [f"--config.{key}={format_value(value)}" for key, value in self.overrides + (("seed", self.seed),)]


@dataclasses.dataclass(frozen=True)
class Column:
  label: str  # table header
  key: str  # cells with this column key feed it
  split: str  # dev | test: which metrics of the run it shows
  metric: str  # metric name in metrics.jsonl
  reference: float | None = None  # published number for context, shown in a reference row


@dataclasses.dataclass(frozen=True)
class Table:
  name: str
  title: str
  notes: str  # markdown paragraph: recipe, subsets, what the references are
  columns: tuple[Column, ...]
  cells: tuple[Cell, ...]
  reference_label: str = ""  # label of the row of Column.reference values
  row_references: tuple[tuple[str, dict], ...] = ()  # (column header, {row: value}): published numbers per row
  plot: str = "bars"  # bars: grouped bars per column | params: metric against trainable parameters
  params_per_cell: bool = False  # trainable parameters beside each number, not per row (a row's cells differ)
  average: bool = False  # add an average column over the table's columns


def format_value(value) -> str:
  """A value as ml_collections' --config.<key>= flag parser reads it back (tuples as Python literals)."""
  if isinstance(value, bool):
    return str(value)
  if isinstance(value, tuple):  # double quotes inside, so a shell quotes the flag with plain single quotes
    return (
      "("
      + ", ".join(json.dumps(v) if isinstance(v, str) else repr(v) for v in value)
      + ("," if len(value) == 1 else "")
      + ")"
    )
  return str(value)


def slug(text: str) -> str:
  """A row label as an ASCII folder name: 'full + FGM ε=0.3' → 'full-fgm-0-3'."""
  return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def glue_base(task: str) -> tuple[str, tuple]:
  """configs/glue.py:<task> with SST-2 cut to its fixed subset (full passes over 67k sentences do not fit)."""
  overrides = (
    (("max_train_examples", SST2_SUBSET), ("eval_every", 50), ("checkpoint_every", 50)) if task == "sst2" else ()
  )
  return f"configs/glue.py:{task}", overrides


def seeds_for(task: str) -> tuple[int, ...]:
  return SEEDS if task in NOISY_TASKS else SEEDS[:1]


# --- methods -----------------------------------------------------------------------------------------
# method row → (config overrides, learning rate, epochs relative to configs/glue.py's recipe). Rates
# after the papers: LoRA (Hu et al. 2021, RoBERTa-base 4e-4–5e-4), BitFit (Ben Zaken et al. 2022, 1e-3
# range), Houlsby adapters (size 64, best rates 1e-4–1e-3), prompt tuning (Lester et al. 2021: large
# rates; 20 soft tokens); PEFT methods train twice the epochs of full fine-tuning (the papers train
# them longer still: LoRA 30–80 epochs on RoBERTa-base).
METHODS = {
  "full": ((("method", "full"),), None, 1),
  "head only": ((("method", "head"),), 1e-3, 2),
  "BitFit": ((("method", "bitfit"),), 1e-3, 2),
  "adapters (Houlsby, 64)": ((("method", "adapter"), ("adapter.kind", "houlsby"), ("adapter.size", 64)), 1e-3, 2),
  "LoRA (r=8, q,v)": ((("method", "lora"), ("lora.rank", 8), ("lora.alpha", 16.0)), 5e-4, 2),
  "prompt tuning (20)": ((("method", "prompt"), ("prompt_length", 20)), 1e-2, 2),
}
# LoRA paper Table 2, RoBERTa-base (125M), average over its GLUE tasks: the ordering of methods to compare
LORA_PAPER_AVG = {"full": 86.4, "BitFit": 85.2, "adapters (Houlsby, 64)": 84.4, "LoRA (r=8, q,v)": 87.2}


def method_cells(task: str, row: str, method_overrides, learning_rate, epoch_factor, column=None, extra=()):
  config, base_overrides = glue_base(task)
  epochs, recipe_lr, _, _ = RECIPES[task]
  overrides = base_overrides + tuple(method_overrides)
  if learning_rate is not None:
    overrides += (("learning_rate", learning_rate),)
  if epoch_factor != 1:
    overrides += (("num_epochs", epochs * epoch_factor),)
  overrides += tuple(extra)
  return tuple(
    Cell(f"{task}-{slug(row)}-s{seed}", row, column or task, seed, config, overrides) for seed in seeds_for(task)
  )


def methods_table() -> Table:
  cells = tuple(
    c
    for row, (ovr, lr, factor) in METHODS.items()
    for task in GLUE_TASKS
    for c in method_cells(task, row, ovr, lr, factor)
  )
  columns = tuple(Column(GLUE_LABEL[t], t, "dev", GLUE_METRIC[t], MINILM_DEV.get(t)) for t in GLUE_TASKS)
  return Table(
    "methods",
    "Fine-tuning methods on GLUE dev (all-MiniLM-L6-v2, 2 CPU cores)",
    "Recipe: configs/glue.py (AdamW, batch 32, max length 128, 10% warm-up then linear decay, epochs "
    "SST-2 1, MRPC 3, RTE 3, CoLA 3, STS-B 3); PEFT rows train twice the epochs at the rates in "
    "configs/tables.py (head and BitFit 1e-3, adapters 1e-3, LoRA 5e-4, prompt tuning 1e-2). SST-2 trains "
    f"on a fixed {SST2_SUBSET:,}-sentence subset. Dev metric of the best dev evaluation; mean ± sample std "
    "over seeds 0, 1, 2 on MRPC, RTE, CoLA. Reference row: MiniLM-L6-H384 (Wang et al. 2020), a "
    "different checkpoint from the sentence-embedding all-MiniLM-L6-v2 loaded here. Last column: the "
    "LoRA paper's RoBERTa-base GLUE averages, for the ordering of methods only.",
    columns,
    cells,
    reference_label="MiniLM-L6-H384 (published dev)",
    row_references=(("LoRA paper avg (RoBERTa-base)", LORA_PAPER_AVG),),
    average=True,
  )


# --- learning rate ------------------------------------------------------------------------------------
# Full fine-tuning's recipe (configs/glue.py: 5e-5, SST-2 3e-5) is BERT-base's; a 6-layer, 384-wide model
# may want more. This table asks whether the gap to the MiniLM-L6-H384 references is the recipe's or the
# checkpoint's (findings: results/learning_rate.md).
FULL_LEARNING_RATES = (None, 1e-4, 2e-4)  # None: the recipe's own rate (the methods table's runs, linked)
LEARNING_RATE_TASKS = ("sst2", "rte", "cola")  # the three tasks furthest from their references


def learning_rate_table() -> Table:
  ovr, _, factor = METHODS["full"]
  cells = []
  for lr in FULL_LEARNING_RATES:
    row = "recipe (5e-5; SST-2 3e-5)" if lr is None else f"{lr:.0e}".replace("e-0", "e-")  # 1e-4
    for task in LEARNING_RATE_TASKS:
      cells += [
        dataclasses.replace(c, name=f"{task}-full-lr-{'recipe' if lr is None else row}-s{c.seed}")
        for c in method_cells(task, row, ovr, lr, factor)[:1]
      ]  # seed 0 only
  columns = tuple(Column(GLUE_LABEL[t], t, "dev", GLUE_METRIC[t], MINILM_DEV[t]) for t in LEARNING_RATE_TASKS)
  return Table(
    "learning_rate",
    "Full fine-tuning: learning rate against the published references (all-MiniLM-L6-v2, GLUE dev)",
    "The methods table's full recipe (configs/glue.py: AdamW, batch 32, max length 128, 10% warm-up then "
    f"linear decay; SST-2 1 epoch on the fixed {SST2_SUBSET:,}-sentence subset, RTE and CoLA 3 epochs) at "
    "larger peak learning rates; seed 0 only. The recipe row is the methods table's runs. Reference "
    "row: MiniLM-L6-H384 (Wang et al. 2020), a different checkpoint.",
    columns,
    tuple(cells),
    reference_label="MiniLM-L6-H384 (published dev)",
  )


# --- adversarial ---------------------------------------------------------------------------------------
# (row label, overrides): ε is the L2 radius of the perturbation per example over (tokens × hidden), a
# grid from 0.03 up (why that scale: the findings of results/adversarial.md).
ADVERSARIAL = (
  ("none", ()),
  ("FGM ε=0.03", (("adversarial.method", "fgm"), ("adversarial.epsilon", 0.03))),
  ("FGM ε=0.1", (("adversarial.method", "fgm"), ("adversarial.epsilon", 0.1))),
  ("FGM ε=0.3", (("adversarial.method", "fgm"), ("adversarial.epsilon", 0.3))),
  (
    "PGD ε=0.1 (3×0.04)",
    (
      ("adversarial.method", "pgd"),
      ("adversarial.epsilon", 0.1),
      ("adversarial.steps", 3),
      ("adversarial.step_size", 0.04),
    ),
  ),
)


def adversarial_table() -> Table:
  cells = []
  for method in ("full", "LoRA (r=8, q,v)"):
    ovr, lr, factor = METHODS[method]
    for label, adv in ADVERSARIAL:
      row = f"{'full' if method == 'full' else 'LoRA'} + {label}"
      if method != "full" and adv:  # these cells ran with the rolled hash, when the unrolled one did not
        # compile there (before ftjax/models/dropout.py; ftjax/xla_cpu.py): the command keeps naming it
        adv += (("cpu_threefry", "rolled"),)
      for task in GLUE_TASKS:
        cells += method_cells(task, row, ovr, lr, factor, extra=adv)
  columns = tuple(Column(GLUE_LABEL[t], t, "dev", GLUE_METRIC[t]) for t in GLUE_TASKS)
  return Table(
    "adversarial",
    "Adversarial training in embedding space on GLUE dev (all-MiniLM-L6-v2)",
    "FGM (Miyato et al. 2017) and PGD (Madry et al. 2018; 3 ascent steps of 0.04) perturb the word-"
    "embedding output within an L2 ball of radius ε per example, adversarial loss weight 1 beside the "
    "clean loss. Full and LoRA recipes as in the methods table (SST-2 subset, 3 seeds on MRPC, RTE, CoLA); "
    "LoRA + FGM/PGD cells run with cpu_threefry=rolled (ftjax/xla_cpu.py; same numbers). The `none` rows "
    "are the methods table's runs.",
    columns,
    tuple(cells),
    average=True,
  )


# --- ner -------------------------------------------------------------------------------------------------
def ner_table() -> Table:
  rows = {"full": ("full", 5e-5), "LoRA (r=8, q,v)": ("lora", 1e-3), "adapters (Houlsby, 64)": ("adapter", 1e-3)}
  cells = tuple(
    Cell(
      f"conll-{slug(row)}-s0",
      row,
      "conll2003",
      0,
      f"configs/conll2003.py:{method}",
      (("learning_rate", lr), ("num_epochs", 1)),
    )
    for row, (method, lr) in rows.items()
  )
  columns = (Column("dev F1", "conll2003", "dev", "f1", 95.1), Column("test F1", "conll2003", "test", "f1", 92.4))
  return Table(
    "ner",
    "CoNLL-2003 NER, entity F1 (all-MiniLM-L6-v2)",
    "configs/conll2003.py: first sub-token labelling, IOB2, AdamW batch 32, max length 128, one epoch "
    "(CPU-sized; the BERT paper trains 3+), lr 5e-5 full and 1e-3 for LoRA and adapters; the best dev "
    "checkpoint is scored on test (eng.testb). Reference: BERT-base in the BERT paper (110M parameters, "
    "document context), for context only.",
    columns,
    cells,
    reference_label="BERT-base (Devlin et al. 2019)",
  )


# --- freeze ----------------------------------------------------------------------------------------------
NUM_LAYERS = 6


def freeze_rules(top_layers: int, train_embeddings: bool) -> tuple[str, ...]:
  """Train the top k encoder layers (and the pooler above them when k ≥ 1); the head always trains."""
  rules = []
  if top_layers:
    first = NUM_LAYERS - top_layers
    rules += [f"train:^backbone/encoder/layer_[{first}-{NUM_LAYERS - 1}]/", "train:^backbone/pooler/"]
  rules += ["train:^backbone/embeddings/" if train_embeddings else "freeze:^backbone/embeddings/", "freeze:^backbone/"]
  return tuple(rules)


def freeze_table() -> Table:
  config, base_overrides = glue_base("sst2")
  cells = []
  for embeddings, column in ((False, "embeddings frozen"), (True, "embeddings trained")):
    for k in range(NUM_LAYERS + 1):
      lr = 1e-3 if (k == 0 and not embeddings) else 1e-4  # a linear probe wants a probe's rate
      cells.append(
        Cell(
          f"top{k}-{slug(column)}",
          f"top {k} of 6 layers",
          column,
          0,
          config,
          base_overrides + (("trainable", freeze_rules(k, embeddings)), ("learning_rate", lr)),
        )
      )
  cells.append(
    Cell(
      "layernorm-only",
      "LayerNorm only",
      "embeddings frozen",
      0,
      config,
      base_overrides + (("trainable", ("train:^backbone/.*LayerNorm/", "freeze:^backbone/")), ("learning_rate", 1e-3)),
    )
  )
  columns = tuple(Column(f"SST-2 acc, {c}", c, "dev", "accuracy") for c in ("embeddings frozen", "embeddings trained"))
  return Table(
    "freeze",
    "Which layers to train: SST-2 dev accuracy against trainable parameters (all-MiniLM-L6-v2)",
    f"SST-2, fixed {SST2_SUBSET:,}-sentence training subset, 1 epoch (250 steps of 32), full dev set. "
    "Rows train the top k of the 6 encoder layers (k ≥ 1 also trains the pooler; the classifier always "
    "trains), with the embeddings frozen or trained; `LayerNorm only` trains every LayerNorm and the "
    "classifier. lr 1e-4, except 1e-3 for the two probes (top 0 with frozen embeddings, LayerNorm "
    "only). Freezing is `config.trainable` rules (configs/tables.py: freeze_rules).",
    columns,
    tuple(cells),
    plot="params",
    params_per_cell=True,
  )


# --- e2e -------------------------------------------------------------------------------------------------
# LoRA paper (Hu et al. 2021) Table 3, GPT-2 M (355M) + LoRA (0.35M trainable), E2E NLG test set
LORA_PAPER_E2E = {"bleu": 70.4, "nist": 8.85, "meteor": 46.8, "rougeL": 71.8, "cider": 2.53}


def e2e_table() -> Table:
  cells = (Cell("smollm2-lora-s0", "SmolLM2-135M + LoRA (r=4, q,v)", "e2e", 0, "configs/e2e.py"),)
  labels = {"bleu": "BLEU", "nist": "NIST", "meteor": "METEOR", "rougeL": "ROUGE-L", "cider": "CIDEr"}
  columns = tuple(Column(label, "e2e", "test", metric, LORA_PAPER_E2E[metric]) for metric, label in labels.items())
  return Table(
    "e2e",
    "E2E NLG data-to-text with LoRA on SmolLM2-135M-Instruct (2 CPU cores)",
    "configs/e2e.py: the LoRA paper's E2E recipe (LoRA r=4 on the query and value projections, α 32, "
    "dropout 0.1, AdamW 2e-4, batch 8, beam search with length penalty 0.9 and no repeated 4-grams) cut "
    "to 2 CPU cores: 1 epoch on a fixed 2,000-pair subset of the 42,061 training pairs (the paper: 5 "
    "epochs on all), 4 beams (the paper: 10), scored on the first 100 test MRs against all their "
    "references (the paper: all 630). BLEU (sacrebleu), NIST (nltk, 5-grams), METEOR 1.5 and CIDEr "
    "(pycocoevalcap), ROUGE-L (rouge-score), as ftjax.metrics.e2e computes them. Reference row: the LoRA "
    "paper's GPT-2 M + LoRA (355M parameters, full data, the challenge's official scripts), for context.",
    columns,
    cells,
    reference_label="GPT-2 M + LoRA (Hu et al. 2021)",
  )


# --- decoder tasks -----------------------------------------------------------------------------------
# (task column key, config, column labels with their split and metric)
# (task, config, ((column label, metric, published figure or None), ...)). The published figures are
# for context only (other models, data sizes and metric implementations; results/decoder_tasks.md says
# which): SAMSum, the best system of the corpus paper (DynamicConv + GPT-2 embeddings, Gliwa et al.
# 2019, test); DailyDialog, PLATO (Bao et al. 2020, Table 2, test; BLEU and distinct as fractions there).
# Multi30k: none that could be checked from here.
DECODER_TASKS = (
  (
    "samsum",
    "configs/samsum.py",
    (("SAMSum R-1", "rouge1", 45.41), ("R-2", "rouge2", 20.65), ("R-L", "rougeL", 41.45)),
  ),
  ("multi30k", "configs/multi30k.py", (("Multi30k en→de BLEU", "bleu", None),)),
  (
    "dailydialog",
    "configs/dailydialog.py",
    (
      ("DailyDialog ppl (dev)", "perplexity", None),
      ("BLEU-1", "bleu1", 39.7),
      ("BLEU-2", "bleu2", 31.1),
      ("dist-1", "distinct1", 5.3),
      ("dist-2", "distinct2", 29.1),
    ),
  ),
)


NO_STEP = (("num_epochs", 0),)
NUCLEUS = (("generation.method", "sample"), ("generation.top_p", 0.9), ("generation.temperature", 0.7))


def decoder_tasks_table() -> Table:
  cells = []
  for task, config, _ in DECODER_TASKS:
    cells.append(Cell(f"{task}-zero-shot", "zero-shot (chat template)", task, 0, config, NO_STEP))
    cells.append(Cell(f"{task}-lora", "LoRA (r=8, attention + MLP)", task, 0, config))
  # Dialogue is also decoded by nucleus sampling (chosen on dev: results/decoder_tasks.md), the LoRA row
  # from the greedy row's trained adapters (no step, so no second training).
  config, nucleus = "configs/dailydialog.py", "nucleus sampling (p 0.9, τ 0.7)"
  cells.append(
    Cell("dailydialog-zero-shot-nucleus", f"zero-shot, {nucleus}", "dailydialog", 0, config, NO_STEP + NUCLEUS)
  )
  cells.append(
    Cell(
      "dailydialog-lora-nucleus",
      f"LoRA, {nucleus}",
      "dailydialog",
      0,
      config,
      NO_STEP + NUCLEUS,
      init_from="dailydialog-lora",
    )
  )
  columns = tuple(
    Column(label, task, "dev" if metric == "perplexity" else "test", metric, published)
    for task, _, labels in DECODER_TASKS
    for label, metric, published in labels
  )
  return Table(
    "decoder_tasks",
    "Summarisation, translation and dialogue with SmolLM2-135M-Instruct and LoRA (2 CPU cores)",
    "SmolLM2-135M-Instruct (the packaged 4-bit GGUF, dequantised), prompted through the chat template the "
    "GGUF carries; LoRA r=8, α 16, no dropout, on every attention and MLP projection; AdamW, batch 8, 1 "
    "epoch on a fixed training subset, loss on the response tokens only. The zero-shot row is the same "
    "config with `num_epochs=0`: no step, the same prompts, subsets and decoding (greedy, no repeated "
    "3-grams). SAMSum: 512 training dialogues (64 steps, lr 1e-3), max length 192 (longer dialogues lose "
    "their first lines), ROUGE-1/2/L (rouge-score, stemmed) on the first 100 test dialogues. Multi30k: 192 "
    "training pairs (24 steps, lr 1e-3), cased sacreBLEU on the first 100 sentences of test_2016_flickr. "
    "DailyDialog: 1,024 training (history, next turn) pairs (128 steps, lr 1e-3), max length 128, perplexity "
    "of the reference turns on 100 dev pairs, BLEU-1/2 (nltk corpus BLEU) and distinct-1/2 of the answers "
    "to the first 1,000 test contexts, over lower-cased words and punctuation marks (DailyDialog's own "
    "tokenisation: metrics.dialogue_tokens), decoded greedily and, in the nucleus rows, by nucleus sampling "
    "(top-p 0.9, temperature 0.7, no repeated 3-grams, seed 0; the LoRA row decodes the greedy row's "
    "adapters: `init_from` it, no step). Published row, for context only: SAMSum, the corpus paper's best system "
    "(DynamicConv + GPT-2 embeddings, full train set, the whole test set; Gliwa et al. 2019); DailyDialog, "
    "PLATO (Bao et al. 2020, Table 2: a dialogue model pre-trained on large conversation corpora, the whole test "
    "set, distinct over all its responses); Multi30k: no figure that could be checked from here.",
    columns,
    tuple(cells),
    reference_label="published (other models and data; see the notes)",
  )


# --- torch ---------------------------------------------------------------------------------------------
def torch_table() -> Table:
  """The methods table's full and LoRA recipes on RTE and MRPC, run by ftjax and by PyTorch + PEFT."""
  cells = []
  for method, label in (("full", "full"), ("LoRA (r=8, q,v)", "LoRA")):
    ovr, lr, factor = METHODS[method]
    for task in ("rte", "mrpc"):
      for script, who in (("train", "ftjax"), ("torch_reference", "PyTorch + transformers + PEFT")):
        cells += [
          dataclasses.replace(c, name=f"{slug(who.split()[0])}-{c.name}", row=f"{label}: {who}", script=script)
          for c in method_cells(task, label, ovr, lr, factor)
        ]
  columns = tuple(Column(GLUE_LABEL[t], t, "dev", GLUE_METRIC[t]) for t in ("rte", "mrpc"))
  return Table(
    "torch",
    "The same recipe in ftjax and in PyTorch + transformers + PEFT (all-MiniLM-L6-v2, GLUE dev)",
    "scripts/torch_reference.py reads the same config and shares ftjax's data pipeline (same rows, same "
    "batch order), scoring and initial head / LoRA A weights; it has its own model (transformers), LoRA "
    "(peft), AdamW groups, clipping, schedule and dropout. Recipes as in the methods table; seeds 0, 1, 2.",
    columns,
    tuple(cells),
  )


# --- precision -------------------------------------------------------------------------------------------
def precision_table() -> Table:
  """The full recipe with float32 and with bfloat16 compute (the speed issue's accuracy check)."""
  ovr, lr, factor = METHODS["full"]
  cells = []
  for dtype in ("float32", "bfloat16"):
    extra = () if dtype == "float32" else (("dtype", dtype),)  # float32: the methods table's own cells
    for task in ("rte", "mrpc"):
      cells += method_cells(task, dtype, ovr, lr, factor, extra=extra)
  columns = tuple(Column(GLUE_LABEL[t], t, "dev", GLUE_METRIC[t]) for t in ("rte", "mrpc"))
  return Table(
    "precision",
    "float32 vs bfloat16 compute, full fine-tuning (all-MiniLM-L6-v2, GLUE dev)",
    "The methods table's full recipe with `--config.dtype=bfloat16`: parameters, optimiser state, "
    "softmax and normalisation statistics stay float32; every matmul (forward and backward) takes "
    "bfloat16 operands and accumulates in float32. The float32 rows are the methods table's runs. "
    "Seeds 0, 1, 2.",
    columns,
    tuple(cells),
  )


# --- pooling -------------------------------------------------------------------------------------------
# all-MiniLM-L6-v2 was trained (sentence-transformers) on the mean of its token states; its [CLS] state and
# pooler were never trained for anything downstream. The methods table reads the pooler, as transformers'
# BertForSequenceClassification (and the torch reference) does; this table measures what that costs.
POOLINGS = (
  ("pooler (BERT, transformers)", "pooler"),
  ("[CLS] state", "cls"),
  ("mean of tokens (sentence-transformers)", "mean"),
)
POOLING_COLUMNS = (("sst2", "head only"), ("sst2", "full"), ("rte", "full"), ("stsb", "head only"))


def pooling_table() -> Table:
  cells = []
  for label, pooling in POOLINGS:
    extra = () if pooling == "pooler" else (("head_pooling", pooling),)  # pooler: the methods table's runs
    for task, method in POOLING_COLUMNS:
      ovr, lr, factor = METHODS[method]
      cells += [
        dataclasses.replace(c, name=f"{task}-{slug(method)}-{pooling}-s{c.seed}")
        for c in method_cells(task, label, ovr, lr, factor, column=f"{task}-{slug(method)}", extra=extra)
      ]
  columns = tuple(
    Column(f"{GLUE_LABEL[task]}, {method}", f"{task}-{slug(method)}", "dev", GLUE_METRIC[task])
    for task, method in POOLING_COLUMNS
  )
  return Table(
    "pooling",
    "What the sequence head reads: pooler, [CLS] or mean of tokens (all-MiniLM-L6-v2, GLUE dev)",
    "`--config.head_pooling`: `pooler` is BERT's tanh(W·[CLS]) (what transformers' "
    "BertForSequenceClassification reads; the methods table's runs), `cls` the [CLS] hidden state, `mean` "
    "the mean of the real tokens' hidden states, which is what all-MiniLM-L6-v2 was trained to produce "
    "(sentence-transformers mean pooling). Recipes of the methods table (head only: lr 1e-3, twice the "
    "epochs); 3 seeds on RTE.",
    columns,
    tuple(cells),
    params_per_cell=True,
  )


# --- extraction: extractive QA and relation extraction on real data (issue #51, part A) ------------------
# Sized for 2 shared CPU cores; every number says its sizes (the notes). The baseline row is the same
# model before fine-tuning: the pretrained backbone with its freshly initialised head, scored after one
# step at learning rate 0 (AdamW's decoupled decay is scaled by the rate too, so nothing moves).
SQUAD_SIZES = (
  ("max_length", 192),
  ("task.doc_stride", 64),
  ("batch_size", 16),
  ("num_epochs", 1),  # 662 steps of 16 windows
  ("learning_rate", 1e-4),
  ("eval_every", 220),
  ("checkpoint_every", 220),
)
SEMEVAL_SIZES = (
  ("batch_size", 32),
  ("num_epochs", 2),  # 450 steps of 32 sentences
  ("learning_rate", 1e-4),
  ("eval_every", 150),
  ("checkpoint_every", 150),
)
UNTRAINED = (("max_steps", 1), ("learning_rate", 0.0))


def extraction_table() -> Table:
  cells = []
  for row, extra in (("fine-tuned (full)", ()), ("untrained head (baseline)", UNTRAINED)):
    for task, sizes in (("squad", SQUAD_SIZES), ("semeval", SEMEVAL_SIZES)):
      overrides = tuple({**dict(sizes), **dict(extra)}.items())
      cells.append(Cell(f"{task}-{slug(row)}-s0", row, task, 0, f"configs/{task}.py", overrides))
  columns = (
    Column("SQuAD test EM", "squad", "test", "exact_match", 80.8),
    Column("SQuAD test F1", "squad", "test", "f1", 88.5),
    Column("SemEval test macro-F1", "semeval", "test", "f1", 89.2),
  )
  return Table(
    "extraction",
    "Extractive QA (SQuAD v1.1, split by article) and relation extraction (SemEval-2010 Task 8), "
    "all-MiniLM-L6-v2, full fine-tuning, 2 CPU cores",
    "SQuAD: configs/squad.py, the official v1.1 dev set split by article (train 34 articles / 7,628 "
    "questions, dev 4 / 954, test 10 / 1,988; no article on two sides); one epoch, 662 steps of 16 windows, "
    "max length 192 with a 64-token stride, lr 1e-4, dev scored every 220 steps and the best kept; the whole "
    "dev and test sets scored (official normalisation, EM and F1). SemEval: configs/semeval.py, "
    "train = the first 7,200 of TRAIN_FILE.TXT, dev = its last 800, test = TEST_FILE_FULL.TXT (2,717); "
    "entity markers and the entity-start head; two epochs, 450 steps of 32, max length 128, lr 1e-4, dev "
    "scored every 150 steps and the best kept; the official score (macro-F1 over the nine relations, "
    "direction taken into account, Other excluded) on the whole dev and test sets. Baseline row: the same model before fine-tuning (its untrained head). Reference row: "
    "BERT-base on the full SQuAD v1.1 train set (Devlin et al. 2019, Table 2, dev) and, on SemEval, entity "
    "markers with the entity-start head as here on BERT-large (BERT_EM; Baldini Soares et al. 2019, Table 4, "
    "test): 5x and 15x the parameters and far more data and compute, for context only.",
    columns,
    tuple(cells),
    reference_label="published (BERT-base SQuAD; BERT-large BERT_EM SemEval)",
  )


TABLES = {
  "methods": methods_table,
  "adversarial": adversarial_table,
  "ner": ner_table,
  "freeze": freeze_table,
  "e2e": e2e_table,
  "torch": torch_table,
  "precision": precision_table,
  "pooling": pooling_table,
  "learning_rate": learning_rate_table,
  "extraction": extraction_table,
  "decoder_tasks": decoder_tasks_table,
}

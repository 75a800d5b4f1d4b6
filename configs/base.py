"""The base config every experiment builds on. Every field is commented; units in brackets.

Run it (SST-2 dev accuracy with the packaged MiniLM; see configs/glue.py for the per-task recipes):
  python scripts/train.py --config=configs/glue.py:sst2 --workdir=runs/sst2
"""

from pathlib import Path

import ml_collections

# The real datasets the configs default to: ../shared/data beside the clone (one place for this path).
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def shared_data(*parts: str) -> str | None:
  """SHARED_DATA/<parts...> where that folder exists, else None: the source is then read through TFDS by
  name, which downloads it (needs the network). `--config.data_dir=FOLDER` always wins."""
  folder = SHARED_DATA.joinpath(*parts)
  return str(folder) if folder.is_dir() else None


def get_config():
  c = ml_collections.ConfigDict()

  # --- model -------------------------------------------------------------------------------------
  c.model = "minilm"  # local HF folder, Hub id, or "minilm" (the packaged all-MiniLM-L6-v2)
  c.dtype = "float32"  # compute dtype: float32 | bfloat16 (params and optimiser state stay float32)
  c.param_dtype = "float32"  # weights that do not train: float32 | bfloat16 (half the memory; trainable stay float32)
  c.remat = False  # recompute each layer's activations in the backward pass (memory ↓, time ↑ ~30%)
  c.dropout = True  # False turns every dropout off during training (mechanics tests, ablations)
  c.head_dropout = 0.1  # dropout before the task head [probability]
  c.cpu_threefry = "auto"  # CPU lowering of dropout's hash: unrolled (faster steps) | rolled (JAX's; faster
  # compiles) | auto (unrolled); the same masks either way (ftjax/xla_cpu.py).
  # Same numbers either way: ftjax/xla_cpu.py
  c.head_pooling = "pooler"  # encoder sequence heads read: pooler (BERT's, on [CLS]) | cls | mean (sent.-transf.)

  # --- task and data -------------------------------------------------------------------------------
  c.task = ml_collections.ConfigDict()
  # a key of ftjax.data.sources.SOURCES (glue/<task>, conll2003, table, squad, e2e_nlg, wikitext2, samsum,
  # multi30k, dailydialog, instruction)
  c.task.source = "glue/sst2"
  c.task.train_file = ""  # table and instruction sources: labelled CSV/TSV/JSONL for training
  c.task.dev_file = ""  # table and instruction sources: labelled file for validation
  c.task.test_file = ""  # table and instruction sources: file for the final test (labels optional for table)
  c.task.text_fields = "text"  # table source only: one column name, or two separated by a comma
  c.task.label_field = "label"  # table source only: the label column (label ids = sorted label strings)
  c.task.label_names = ()  # table source only: the label set in id order; () → the sorted labels of train_file
  c.task.doc_stride = 128  # squad only: context tokens shared by neighbouring windows [tokens]
  c.task.prompt_field = "prompt"  # instruction source only: the column/key of the prompt
  c.task.response_field = "response"  # instruction source only: the column/key of the response
  c.task.system_field = ""  # instruction source only: a column/key of per-row system prompts; "" → none
  c.task.system_prompt = ""  # chat sources: the system prompt; "" → the row's, else the template's default
  c.task.instruction = ""  # chat sources: wraps the prompt, "{}" marking where it goes; "" → the source's own
  c.task.chat_template = True  # chat sources: prompt through the tokenizer's chat template; False → "prompt || "
  c.task.train_split = "train"  # the split trained on
  c.task.dev_split = "dev"  # the split evaluated during training and selected on; "" → none
  # the task's local raw files; None → TFDS by name (needs network). Configs: shared_data(...) above
  c.data_dir = ml_collections.config_dict.placeholder(str)
  c.tfds_dir = ml_collections.config_dict.placeholder(str)  # where TFDS data is prepared; None → ~/.cache/ftjax/tfds
  c.max_length = 128  # tokens per row after truncation (batches are padded to length buckets ≤ this)
  c.max_train_examples = 0  # >0: train on this fixed prefix of the shuffled train split (CPU-sized runs)
  c.max_eval_examples = 0  # >0: evaluate on this fixed prefix of each eval split

  # --- method: what is added and what trains -----------------------------------------------------
  c.method = "full"  # full | head | bitfit | lora | adapter | prompt | prefix
  c.trainable = ()  # rules "train:<regex>" / "freeze:<regex>" over param paths, before the method's preset
  c.lora = ml_collections.ConfigDict()
  # regex over Dense module paths, or "default": the architecture's LORA_TARGETS (ftjax/models/<arch>.py)
  c.lora.targets = "default"
  c.lora.rank = 8  # r
  c.lora.alpha = 16.0  # scale s = alpha / r (alpha / √r with rslora)
  c.lora.dropout = 0.1  # dropout on the LoRA branch input [probability]
  c.lora.rslora = False  # rank-stabilised scaling
  c.lora.dora = False  # weight-decomposed LoRA
  c.adapter = ml_collections.ConfigDict()
  c.adapter.kind = "houlsby"  # houlsby (after attention and FFN) | pfeiffer (after FFN only)
  c.adapter.size = 64  # bottleneck width [features]
  c.prompt_length = 20  # prompt tuning: soft tokens [tokens]
  c.prefix_length = 20  # prefix tuning: key/value prefix length per layer [positions]

  # --- adversarial training (in embedding space; see ftjax/adversarial.py) ---------------------------
  c.adversarial = ml_collections.ConfigDict()
  c.adversarial.method = "none"  # none | fgm | pgd | freelb
  c.adversarial.epsilon = 1.0  # L2 radius of the perturbation per example, over (tokens × hidden)
  c.adversarial.steps = 3  # pgd / freelb ascent steps
  c.adversarial.step_size = 0.3  # pgd / freelb ascent step length (L2, per example)
  c.adversarial.weight = 1.0  # weight of the adversarial loss beside the clean loss (fgm, pgd)
  c.adversarial.init_magnitude = 0.1  # freelb: L2 norm of the random start

  # --- optimisation ------------------------------------------------------------------------------
  c.batch_size = 32  # global batch [examples per step], split over devices and micro-batches
  c.eval_batch_size = 64  # evaluation batch [examples]
  c.grad_accum_steps = 1  # micro-batches per step (batch_size must be divisible by it)
  c.learning_rate = 5e-5  # peak learning rate
  c.num_epochs = 3  # epochs over the training split (ignored when max_steps > 0)
  c.max_steps = 0  # >0: train exactly this many steps
  c.warmup_steps = -1  # linear warm-up [steps]; -1 → warmup_ratio × total steps
  c.warmup_ratio = 0.1  # warm-up as a fraction of the total steps
  c.schedule = "linear"  # after warm-up: linear | cosine decay to 0, or constant
  c.weight_decay = 0.01  # decoupled (AdamW) decay, never on biases, norms, (embeddings)
  c.decay_embeddings = False  # also decay embedding tables and soft prompts
  c.adam_b1 = 0.9  # Adam β1
  c.adam_b2 = 0.999  # Adam β2
  c.adam_eps = 1e-8  # Adam ε
  c.max_grad_norm = 1.0  # clip the global gradient norm to this; 0 = no clipping
  c.head_lr_multiplier = 1.0  # learning rate of the task head relative to the rest
  c.lora_plus_ratio = 1.0  # LoRA+: learning rate of B relative to A (Hayou et al. suggest 16)
  c.layer_decay = 1.0  # layer-wise learning-rate decay per layer from the top; 1 = off
  c.seed = 0  # seeds head/method init, data order and dropout

  # --- loop: evaluation, checkpoints, early stopping --------------------------------------------
  c.eval_every = 500  # evaluate on dev every this many steps (and at the end) [steps]; 0 = only at the end
  c.checkpoint_every = 500  # save a checkpoint every this many steps (and at the end) [steps]
  c.keep_checkpoints = 2  # latest checkpoints kept for resuming
  c.resume = True  # rerunning on a workdir resumes from its newest checkpoint that restores; False → start
  # afresh at step 0, deleting the workdir's checkpoints (the way out when none of them restores)
  c.log_every = 50  # write train metrics every this many steps (one host sync each) [steps]
  c.early_stopping = ml_collections.ConfigDict()
  c.early_stopping.metric = ""  # dev metric to select on; "" → the task's usual (accuracy, matthews, pearson, f1, …)
  c.early_stopping.patience = 0  # stop after this many evaluations without improvement; 0 = never stop early
  c.early_stopping.restore_best = True  # end the run with the best dev checkpoint's parameters
  c.eval_splits = ("dev",)  # splits scored at the end (add "test" where it has labels)
  c.init_from = ""  # workdir of a finished run to start from (continual fine-tuning on new data)
  # a PEFT LoRA adapter folder (adapter_config.json + adapter_model.safetensors, e.g. trained in PyTorch) to
  # evaluate or continue training; needs method="lora"; its targets/rank/alpha and head replace the config's
  c.init_from_peft = ""

  # --- devices -----------------------------------------------------------------------------------
  c.parallel = "mesh"  # mesh (jit over the mesh below) | pmap (data parallel) | none (one device)
  c.mesh = "data=-1"  # mesh mode: axis sizes over all processes' devices, e.g. "data=2,fsdp=4,tensor=1"; -1 = the rest
  c.sharding = ()  # mesh mode: rules "<regex>:<spec>" over param paths before the architecture's (ftjax/sharding.py),
  # spec = per dimension a mesh axis or "-", e.g. ".*/(query|key|value)/kernel$:fsdp,tensor"; ":" alone replicates
  c.distributed = False  # True: jax.distributed.initialize() (TPU pods, SLURM find the cluster themselves;
  # else set FTJAX_COORDINATOR=host:port, FTJAX_NUM_PROCESSES, FTJAX_PROCESS_ID; docs/scale.md)

  # --- generation (decoder tasks) ----------------------------------------------------------------
  c.generation = ml_collections.ConfigDict()
  c.generation.method = "beam"  # greedy | sample | beam
  c.generation.num_beams = 4  # beam width
  c.generation.max_new_tokens = 64  # [tokens]
  c.generation.length_penalty = 1.0  # beam score = log p / length^penalty
  c.generation.temperature = 1.0  # sample: logits ÷ τ before top-k/top-p (τ < 1 sharpens)
  c.generation.top_k = 0  # sample: keep the k likeliest tokens; 0 = all
  c.generation.top_p = 1.0  # sample: nucleus, the likeliest tokens whose mass reaches p; 1 = all
  c.generation.no_repeat_ngram_size = 0  # block repeated n-grams of this size; 0 = off
  c.generation.eval_examples = 0  # >0: at the end, decode this many examples of eval_split and score them (BLEU…)
  c.generation.eval_split = "dev"  # the split whose examples are decoded
  c.generation.batch_size = 16  # prompts decoded together (× num_beams rows for beam search)
  return c

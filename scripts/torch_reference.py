"""The same fine-tuning recipe in PyTorch + transformers + PEFT, as a reference for ftjax's numbers.

  python scripts/torch_reference.py --config=configs/glue.py:rte --workdir=runs/torch/rte
  python scripts/torch_reference.py --config=configs/glue.py:mrpc --workdir=runs/torch/mrpc-lora \
      --config.method=lora --config.learning_rate=5e-4

It reads the same config as scripts/train.py and writes the same workdir files (config.json, run.json,
metrics.jsonl, summary.txt, command.txt), so scripts/report.py and scripts/reproduce.py tabulate it
beside ftjax's runs. Shared with ftjax, on purpose: the data pipeline (the same tokenised rows and
batches in the same order), the scoring (ftjax.tasks.datasets.TaskData.score) and the task head's
initial weights (ftjax's for the same seed, copied in). Its own: the model (transformers'
BertForSequenceClassification), LoRA (peft), AdamW without decay on biases, LayerNorm and embeddings,
gradient clipping, warm-up + linear decay (transformers' scheduler), dropout (torch's RNG). What differs
between the two runs is then the implementation of the model, the method and the optimiser, plus
dropout masks: their dev numbers should agree within seed noise.

Scope: encoder classification and regression tasks (GLUE), methods full and lora, float32, one process.
Torch is a test/benchmark dependency of ftjax, never the library's.
"""

import json
import math
import re
import shlex
import sys
import time
from pathlib import Path

import numpy as np
from absl import flags
from ml_collections import config_flags

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without installing
from ftjax import cli, experiment, models  # noqa: E402
from ftjax.data import pipeline  # noqa: E402
from ftjax.errors import InputError  # noqa: E402
from ftjax.evaluation import append_metrics, selection  # noqa: E402
from ftjax.peft.lora import lora_layers  # noqa: E402
from ftjax.tasks import datasets  # noqa: E402

config_flags.DEFINE_config_file("config", None, "experiment config file (configs/*.py[:arg])", lock_config=True)
flags.DEFINE_string("workdir", None, "run folder: metrics.jsonl, summary.txt (no checkpoints)")
flags.mark_flags_as_required(["config", "workdir"])

METHODS = ("full", "lora")
NO_DECAY = re.compile(r"(bias|LayerNorm\.weight|embeddings\.)")  # as ftjax.optim: biases, norms, embeddings


def build_torch_model(config, exp, num_labels: int):
  """transformers' BERT with ftjax's initial head, and peft's LoRA on the modules the config targets."""
  import torch
  import transformers

  torch.manual_seed(config.seed)
  model = transformers.BertForSequenceClassification.from_pretrained(
    models.resolve(config.model), num_labels=num_labels, classifier_dropout=config.head_dropout
  )
  head = exp.tree["head"]["classifier"]
  with torch.no_grad():  # Flax kernels are (in, out), torch weights (out, in)
    model.classifier.weight.copy_(torch.from_numpy(np.asarray(head["kernel"]).T.copy()))
    model.classifier.bias.copy_(torch.from_numpy(np.array(head["bias"])))
  if not config.dropout:
    for module in model.modules():
      if isinstance(module, torch.nn.Dropout):
        module.p = 0.0
  if config.method == "lora":
    import peft

    pattern = re.compile(config.lora.targets)
    targets = [
      name
      for name, module in model.named_modules()
      if isinstance(module, torch.nn.Linear) and pattern.search(name.replace(".", "/"))
    ]
    if not targets:
      raise InputError(f"config key lora.targets={config.lora.targets!r} matches no Linear of the torch model")
    model = peft.get_peft_model(
      model,
      peft.LoraConfig(
        r=config.lora.rank,
        lora_alpha=config.lora.alpha,
        lora_dropout=config.lora.dropout if config.dropout else 0.0,
        target_modules=targets,
        modules_to_save=["classifier"],
        use_rslora=config.lora.rslora,
      ),
    )
    with torch.no_grad():  # ftjax's initial A (B starts at zero in both), so only the code differs
      for path, leaves in lora_layers(exp.tree.get("lora", {})).items():
        module = model.base_model.model.get_submodule(torch_module_name("/".join(path)))
        module.lora_A["default"].weight.copy_(torch.from_numpy(np.asarray(leaves["a"]).T.copy()))
        module.lora_B["default"].weight.copy_(torch.from_numpy(np.asarray(leaves["b"]).T.copy()))
  return model


def torch_module_name(path: str) -> str:
  """encoder/layer_0/attention/self/query → bert.encoder.layer.0.attention.self.query"""
  return "bert." + re.sub(r"layer_(\d+)", r"layer.\1", path).replace("/", ".")


def make_optimizer(config, model, total_steps: int):
  import torch
  import transformers

  named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
  decay = [p for n, p in named if config.decay_embeddings or not NO_DECAY.search(n)]
  no_decay = [p for n, p in named if not (config.decay_embeddings or not NO_DECAY.search(n))]
  opt = torch.optim.AdamW(
    [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
    lr=config.learning_rate,
    betas=(config.adam_b1, config.adam_b2),
    eps=config.adam_eps,
  )
  warmup = config.warmup_steps if config.warmup_steps >= 0 else int(config.warmup_ratio * total_steps)
  warmup = min(warmup, max(total_steps - 1, 0))  # as ftjax.optim
  return opt, transformers.get_linear_schedule_with_warmup(opt, warmup, total_steps), [p for _, p in named]


def to_torch(batch, kind):
  import torch

  inputs = {
    k: torch.from_numpy(batch[k].astype(np.int64))
    for k in ("input_ids", "attention_mask", "token_type_ids")
    if k in batch
  }
  labels = torch.from_numpy(batch["labels"].astype(np.float32 if kind == "regression" else np.int64))
  return inputs, labels, torch.from_numpy(batch["weights"])


def loss_sums(logits, labels, weights, kind):
  """(sum of per-example losses over real rows, their count), as ftjax.tasks.losses computes them."""
  import torch

  if kind == "regression":
    per_example = torch.square(logits[:, 0] - labels)
  else:
    per_example = torch.nn.functional.cross_entropy(logits, labels.clamp(min=0), reduction="none")
  return torch.sum(per_example * weights), torch.sum(weights)


def evaluate(model, data, batch_size, kind):
  import torch

  model.eval()
  outputs = np.zeros((data.num_rows, 1 if kind == "regression" else max(len(data.label_names), 2)), np.float32)
  loss_sum = count = 0.0
  with torch.inference_mode():
    for batch in pipeline.eval_batches(data.features, batch_size):
      inputs, labels, weights = to_torch(batch, kind)
      logits = model(**inputs).logits
      s, c = loss_sums(logits, labels, weights, kind)
      loss_sum, count = loss_sum + float(s), count + float(c)
      rows = batch["example_index"]
      outputs[rows[rows >= 0]] = logits.numpy()[rows >= 0]
  model.train()
  values, _ = data.score(outputs, loss_sum, count)
  return values


def main(argv):
  del argv
  import torch

  config = flags.FLAGS.config
  workdir = Path(flags.FLAGS.workdir).expanduser().resolve()
  if config.method not in METHODS:
    raise InputError(f"config key method={config.method!r}: the torch reference implements {METHODS}")
  if config.head_pooling != "pooler":
    raise InputError("config key head_pooling: the torch reference is BertForSequenceClassification (pooler)")
  if config.dtype != "float32" or config.grad_accum_steps != 1 or config.adversarial.method != "none":
    raise InputError("the torch reference runs float32, one micro-batch, no adversarial training")
  started, cpu_started = time.time(), time.process_time()  # CPU: every thread of this process
  exp = experiment.build(config)  # tokenizer, task, label names and ftjax's initial head for this seed
  kind = exp.task.kind
  if kind not in ("classification", "regression"):
    raise InputError(
      f"config key task.source={config.task.source}: the torch reference covers classification and regression"
    )
  workdir.mkdir(parents=True, exist_ok=True)
  if not (workdir / "command.txt").exists():
    (workdir / "command.txt").write_text(" ".join(["python"] + [shlex.quote(a) for a in sys.argv]) + "\n")
  (workdir / "metrics.jsonl").write_text("")  # no resume: a rerun starts over
  (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
  (workdir / "run.json").write_text(
    json.dumps(
      {
        "task": {"kind": kind, "num_labels": exp.task.num_labels, "label_names": list(exp.task.label_names)},
        "backbone": models.backbone_reference(config.model),
        "implementation": f"torch {torch.__version__} + transformers + peft",
      },
      indent=2,
    )
  )
  train = datasets.load(config, exp.tokenizer, config.task.train_split, config.max_train_examples)
  dev = datasets.load(config, exp.tokenizer, config.task.dev_split, config.max_eval_examples)
  steps_per_epoch = pipeline.num_train_batches(train.num_rows, config.batch_size)
  total_steps = config.max_steps if config.max_steps > 0 else config.num_epochs * steps_per_epoch
  model = build_torch_model(config, exp, max(len(exp.task.label_names), 1) if kind == "classification" else 1)
  opt, schedule, params = make_optimizer(config, model, total_steps)
  trainable = sum(p.numel() for p in params)
  total = sum(p.numel() for p in model.parameters())
  print(f"torch reference: {trainable:,} of {total:,} parameters train")
  metric, mode = selection(config, kind)
  best, best_step, step, window = None, None, 0, []
  model.train()
  while step < total_steps:
    epoch = step // steps_per_epoch
    for batch in pipeline.train_batches(train.features, config.batch_size, config.seed, epoch, step % steps_per_epoch):
      inputs, labels, weights = to_torch(batch, kind)
      loss_sum, count = loss_sums(model(**inputs).logits, labels, weights, kind)
      loss = loss_sum / torch.clamp(count, min=1.0)
      opt.zero_grad(set_to_none=True)
      loss.backward()
      grad_norm = float(torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm or math.inf))
      opt.step()
      schedule.step()
      step += 1
      window.append((float(loss_sum), float(count), grad_norm))
      last = step == total_steps
      if step % config.log_every == 0 or last:
        append_metrics(
          workdir,
          step,
          "train",
          {
            "loss": sum(w[0] for w in window) / max(sum(w[1] for w in window), 1),
            "grad_norm": float(np.mean([w[2] for w in window])),
          },
        )
        window = []
      if (config.eval_every and step % config.eval_every == 0) or last:
        values = evaluate(model, dev, config.eval_batch_size, kind)
        append_metrics(workdir, step, dev.split, values)
        value = values.get(metric)
        if value is not None and (best is None or (value > best if mode == "max" else value < best)):
          best, best_step = value, step
        print(f"step {step}/{total_steps}: dev {metric} {value:.3f}", flush=True)
      if last:
        break
  summary = (
    "\n".join(
      [
        "=" * 72,
        f"torch reference run  {workdir}",
        f"model {config.model}  task {config.task.source}  method {config.method}  adversarial none",
        f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.3f}%)",
        f"steps {step}/{total_steps}  wall time {(time.time() - started) / 60:.1f} min  "
        f"CPU time {(time.process_time() - cpu_started) / 60:.1f} min",
        f"best dev {metric} = {best:.3f} at step {best_step}",
        "=" * 72,
      ]
    )
    + "\n"
  )
  (workdir / "summary.txt").write_text(summary)
  print(summary)


if __name__ == "__main__":
  cli.run(main)

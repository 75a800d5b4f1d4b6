"""Step-time benchmark: ftjax against PyTorch + transformers + PEFT on the same model, batch and machine.

  python scripts/bench.py                      # MiniLM-L6, batch 32 × 128, 10 timed steps per mode (~15 min, 2 cores)
  python scripts/bench.py --shapes             # also batch 8 × 64
  python scripts/bench.py --quick --out /tmp/b # a tiny random BERT, 1 step: the smoke test (tests/test_bench.py)

Writes `<out>/bench.md` (table, machine, versions, command, date) and `<out>/bench.png`; the last stdout
line is `RATIOS full=… lora=… bitfit=… head=… fgm=… bf16_full=… lora_vs_full=… head_vs_full=… fgm_vs_plain=…`:
the first six are ftjax ms/step ÷ PyTorch ms/step (bf16_full: ftjax bfloat16 compute ÷ PyTorch float32),
the last three ftjax ÷ ftjax (lora/full, head/full, fgm/full).

Like with like. Both sides load the same checkpoint (the head too: PyTorch's classifier is copied from
ftjax's), see the same synthetic tokens, train with dropout p = 0.1 (LoRA dropout 0, PEFT's default),
float32, AdamW with global-norm clipping at 1.0, and PyTorch runs on 2 threads. FGM is each side's
usual recipe: ftjax perturbs the word-embedding *output* per example (ftjax/adversarial.py); PyTorch
perturbs `word_embeddings.weight` by ε·g/‖g‖ after the clean backward, runs a second forward/backward
and restores the matrix. Both are two forward-backward passes.

Timing. For every mode the contestants (ftjax step, PyTorch step, and for "full" also the ftjax
bfloat16 step) are built and warmed up, then timed ALTERNATELY, one step each per repetition (order
reversed on odd repetitions), so machine load drifts over both. Reported: the median over repetitions.
ftjax compile time is `jit(...).lower(...).compile()` alone; the first PyTorch step is in its warm-up.

MFU = model FLOPs per step ÷ step time ÷ the machine's float32 matmul throughput, measured in this run
(the better of jitted jax and torch.mm on two N × N matrices, probed at the start and the end). Model FLOPs, counted analytically
(matmuls only: embeddings are lookups, norms and softmax are not counted), with L layers, width H, FFN
width I, B sequences of T tokens:
  forward F = 2·B·T·L·(4H² + 2HI) + 4·B·L·T²·H        (the dense layers, plus QKᵀ and PV)
  full: 3F (backward = 2× forward); LoRA and BitFit: 2F (activation gradients only; the rank-8 factors
  and biases are negligible); head: F; full + FGM: 6F (two forward-backward passes); inference: F.
XLA's own count for the compiled ftjax step (`cost_analysis()["flops"]`) is reported beside it.

Memory: the increase of the process's resident set (RSS, /proc/self/status VmRSS) over each
contestant's build + warm-up, which includes its parameters, optimiser state, XLA executable and
PyTorch's autograd buffers retained by the allocator; and the whole process's high-water mark
(`ru_maxrss`) at the end. The two frameworks share one process (they must alternate), so per-framework
peaks are not separable exactly; the deltas are the honest approximation.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without installing
import ftjax  # noqa: E402
from ftjax import optim, step as ftstep, trainability  # noqa: E402
from ftjax.experiment import init_tree  # noqa: E402
from ftjax.models import resolve  # noqa: E402
from ftjax.peft import PeftSpec  # noqa: E402
from ftjax.tasks import make_task  # noqa: E402

MODES = ("full", "lora", "bitfit", "head", "fgm", "infer", "bf16_full")
LR, WEIGHT_DECAY, MAX_GRAD_NORM, FGM_EPSILON = 5e-5, 0.01, 1.0, 1.0
LORA = dict(rank=8, alpha=16, targets_jax=r"attention/self/(query|value)$", targets_torch=["query", "value"])
# FLOPs per step in units of one forward pass (see the module docstring).
FORWARDS = {"full": 3, "lora": 2, "bitfit": 2, "head": 1, "fgm": 6, "infer": 1, "bf16_full": 3}


def mode_list(parser: argparse.ArgumentParser, text: str) -> list[str]:
  """--modes=a,b,c as a list, each one of MODES (else the parser's usage error)."""
  modes = [m for m in text.split(",") if m]
  unknown = set(modes) - set(MODES)
  if unknown:
    parser.error(f"--modes: unknown {sorted(unknown)}; known: {','.join(MODES)}")
  return modes


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--model", default="minilm", help="HF BERT folder or ftjax id (default: the packaged MiniLM-L6)")
  p.add_argument("--reps", type=int, default=10, help="timed steps per mode and framework")
  p.add_argument("--warmup", type=int, default=2, help="untimed steps per contestant before timing")
  p.add_argument("--shapes", action="store_true", help="also time batch 8 × 64 (besides 32 × 128)")
  p.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of " + ",".join(MODES))
  p.add_argument("--quick", action="store_true", help="tiny random BERT, batch 4 × 16, 1 rep, 1 warm-up")
  p.add_argument("--matmul", type=int, default=2048, help="N of the N × N float32 matmul throughput probe")
  p.add_argument("--out", default="results", help="folder for bench.md and bench.png")
  args = p.parse_args(argv)
  args.modes = mode_list(p, args.modes)
  args.shape_list = [(32, 128)] + ([(8, 64)] if args.shapes else [])
  if args.quick:
    args.reps, args.warmup, args.matmul, args.shape_list = 1, 1, 256, [(4, 16)]
  return args


# --- measurement helpers ---------------------------------------------------------------------------


def rss_mb() -> float:
  for line in Path("/proc/self/status").read_text().splitlines():
    if line.startswith("VmRSS:"):
      return int(line.split()[1]) / 1024
  return float("nan")


def peak_rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def matmul_gflops(n: int, reps: int = 5) -> dict[str, float]:
  """float32 N × N @ N × N throughput of jitted jax and torch.mm, alternating; 2N³ FLOPs each."""
  import torch

  a = np.random.default_rng(0).standard_normal((n, n), np.float32)
  ja, ta = jnp.asarray(a), torch.from_numpy(a.copy())
  mm = jax.jit(jnp.matmul)
  mm(ja, ja).block_until_ready()
  torch.mm(ta, ta)
  times = {"jax": [], "torch": []}
  for _ in range(reps):
    t = time.perf_counter()
    mm(ja, ja).block_until_ready()
    times["jax"].append(time.perf_counter() - t)
    t = time.perf_counter()
    torch.mm(ta, ta)
    times["torch"].append(time.perf_counter() - t)
  return {k: 2 * n**3 / statistics.median(v) / 1e9 for k, v in times.items()}


def forward_flops(hf_config: dict, batch: int, length: int) -> float:
  L, H, I = hf_config["num_hidden_layers"], hf_config["hidden_size"], hf_config["intermediate_size"]
  return 2 * batch * length * L * (4 * H * H + 2 * H * I) + 4 * batch * L * length**2 * H


def synthetic_batch(vocab: int, batch: int, length: int, seed: int = 0) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  return {
    "input_ids": rng.integers(min(1000, vocab // 2), vocab, (batch, length)).astype(np.int32),
    "attention_mask": np.ones((batch, length), np.int32),
    "token_type_ids": np.zeros((batch, length), np.int32),
    "labels": rng.integers(0, 2, batch).astype(np.int32),
    "weights": np.ones((batch,), np.float32),
  }


def classifier_params(hf_config: dict):
  """A seed-0 two-class head, shared by every contestant (PyTorch copies it into its classifier)."""
  from ftjax.models.outputs import EncoderOutput

  width = hf_config["hidden_size"]
  dummy = EncoderOutput(last_hidden_state=jnp.zeros((1, 1, width)), pooler_output=jnp.zeros((1, width)))
  return jax.device_get(make_task("classification", 2).head.init(jax.random.key(0), dummy, jnp.ones((1, 1)))["params"])


class Contestant:
  """One framework's step for one mode: `run()` takes one step and waits for it."""

  def __init__(self, name, run, compile_s=float("nan"), xla_flops=float("nan"), compiled=None):
    self.name, self.run, self.compile_s, self.xla_flops = name, run, compile_s, xla_flops
    self.compiled = compiled  # ftjax: the XLA executable (scripts/profile_step.py reads its HLO)
    self.times: list[float] = []
    self.rss_mb = float("nan")

  def timed(self):
    t = time.perf_counter()
    self.run()
    self.times.append(time.perf_counter() - t)


# --- ftjax -----------------------------------------------------------------------------------------


def optimizer_config():
  return ml_collections.ConfigDict(
    dict(
      learning_rate=LR,
      warmup_steps=0,
      warmup_ratio=0.0,
      schedule="constant",
      max_grad_norm=MAX_GRAD_NORM,
      adam_b1=0.9,
      adam_b2=0.999,
      adam_eps=1e-8,
      weight_decay=WEIGHT_DECAY,
      decay_embeddings=False,
      head_lr_multiplier=1.0,
      lora_plus_ratio=1.0,
      layer_decay=1.0,
    )
  )


def xla_flops(compiled) -> float:
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", float("nan"))) if cost else float("nan")


def ftjax_contestant(folder, mode: str, batch: dict, head_params) -> Contestant:
  method = {"full": "full", "fgm": "full", "bf16_full": "full", "infer": "full"}.get(mode, mode)
  dtype = jnp.bfloat16 if mode == "bf16_full" else jnp.float32
  peft = (
    PeftSpec(lora_targets=LORA["targets_jax"], lora_rank=LORA["rank"], lora_alpha=LORA["alpha"])
    if mode == "lora"
    else PeftSpec()
  )
  model, backbone = ftjax.from_pretrained(folder, dtype=dtype, peft=peft)
  task = make_task("classification", 2)
  tree = init_tree(model, task, backbone, seed=0)
  tree["head"] = head_params
  trainable, frozen = trainability.partition(tree, trainability.rules_for(method))
  dev_batch = jax.device_put(batch)
  if mode == "infer":
    fn = jax.jit(ftstep.make_eval_step(model, task))
    t = time.perf_counter()
    compiled = fn.lower(trainable, frozen, dev_batch).compile()
    compile_s = time.perf_counter() - t
    return Contestant(
      "ftjax",
      lambda: jax.block_until_ready(compiled(trainable, frozen, dev_batch)[0]),
      compile_s,
      xla_flops(compiled),
      compiled,
    )
  num_layers = model.config.num_hidden_layers
  tx, _ = optim.make_optimizer(optimizer_config(), trainable, 1000, num_layers)
  adversarial = ml_collections.ConfigDict(
    dict(
      method="fgm" if mode == "fgm" else "none",
      epsilon=FGM_EPSILON,
      steps=1,
      step_size=0.0,
      weight=1.0,
      init_magnitude=0.0,
    )
  )
  fn = jax.jit(ftstep.make_train_step(model, task, tx, adversarial_config=adversarial, dropout=True), donate_argnums=0)
  holder = {"state": ftstep.create_state(trainable, frozen, tx, seed=0)}
  t = time.perf_counter()
  compiled = fn.lower(holder["state"], dev_batch).compile()
  compile_s = time.perf_counter() - t

  def run():
    holder["state"], metrics = compiled(holder["state"], dev_batch)
    metrics["loss_sum"].block_until_ready()

  return Contestant("ftjax", run, compile_s, xla_flops(compiled), compiled)


# --- PyTorch ---------------------------------------------------------------------------------------


def torch_contestant(folder, mode: str, batch: dict, head_params) -> Contestant:
  import peft as hf_peft
  import torch
  from transformers import AutoModelForSequenceClassification

  torch.manual_seed(0)
  model = AutoModelForSequenceClassification.from_pretrained(str(folder), num_labels=2)
  with torch.no_grad():  # the same head as ftjax's (Flax kernels are in × out; torch weights out × in)
    model.classifier.weight.copy_(torch.from_numpy(np.asarray(head_params["classifier"]["kernel"]).T.copy()))
    model.classifier.bias.copy_(torch.from_numpy(np.array(head_params["classifier"]["bias"])))
  inputs = {k: torch.from_numpy(batch[k].astype(np.int64)) for k in ("input_ids", "attention_mask", "token_type_ids")}
  labels = torch.from_numpy(batch["labels"].astype(np.int64))
  if mode == "infer":
    model.eval()

    def run_infer():
      with torch.inference_mode():
        model(**inputs).logits.sum().item()

    return Contestant("torch", run_infer)
  if mode == "lora":
    model = hf_peft.get_peft_model(
      model,
      hf_peft.LoraConfig(
        task_type="SEQ_CLS",
        r=LORA["rank"],
        lora_alpha=LORA["alpha"],
        lora_dropout=0.0,
        target_modules=LORA["targets_torch"],
      ),
    )
  elif mode in ("bitfit", "head"):
    for name, p in model.named_parameters():
      p.requires_grad_(name.startswith("classifier.") or (mode == "bitfit" and name.endswith("bias")))
  model.train()
  params = [p for p in model.parameters() if p.requires_grad]
  opt = torch.optim.AdamW(params, lr=LR, weight_decay=WEIGHT_DECAY, eps=1e-8)
  embedding = model.get_input_embeddings().weight

  def run():
    loss = model(**inputs, labels=labels).loss
    loss.backward()
    if mode == "fgm":  # the usual recipe: perturb the embedding matrix, second pass, restore
      backup = embedding.data.clone()
      norm = torch.linalg.vector_norm(embedding.grad)
      if torch.isfinite(norm) and norm > 0:
        embedding.data.add_(FGM_EPSILON * embedding.grad / norm)
      model(**inputs, labels=labels).loss.backward()
      embedding.data = backup
    torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
    opt.step()
    opt.zero_grad(set_to_none=True)
    loss.item()

  return Contestant("torch", run)


# --- the run -------------------------------------------------------------------------------------


def tiny_bert_folder() -> Path:
  """A random 2-layer BERT saved as an HF folder, for --quick (both frameworks load it)."""
  from transformers import BertConfig, BertModel
  import torch

  torch.manual_seed(0)
  config = BertConfig(
    vocab_size=200,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=64,
  )
  folder = Path(tempfile.mkdtemp(prefix="ftjax-bench-"))
  BertModel(config).save_pretrained(folder)
  return folder


def bench_shape(folder, hf_config, modes, batch_size, length, args) -> dict:
  """{mode: {"ftjax": Contestant, "torch": Contestant}} for one batch shape; modes are timed in turn."""
  batch = synthetic_batch(hf_config["vocab_size"], batch_size, length)
  head_params = classifier_params(hf_config)
  # bf16_full is timed together with full (against the same PyTorch float32 steps).
  groups = [m for m in modes if m != "bf16_full"]
  if "bf16_full" in modes and "full" not in groups:
    groups.insert(0, "full")
  results = {}
  for mode in groups:
    contestants = {}
    names = [("ftjax", mode), ("torch", mode)] + (
      [("ftjax_bf16", "bf16_full")] if mode == "full" and "bf16_full" in modes else []
    )
    for key, m in names:
      gc.collect()
      before = rss_mb()
      make = torch_contestant if key == "torch" else ftjax_contestant
      c = make(folder, m, batch, head_params)
      for _ in range(args.warmup):
        c.run()
      c.rss_mb = rss_mb() - before
      contestants[key] = c
    order = list(contestants.values())
    for rep in range(args.reps):
      for c in order if rep % 2 == 0 else order[::-1]:
        c.timed()
    if mode in modes:
      results[mode] = {"ftjax": contestants["ftjax"], "torch": contestants["torch"]}
    if "ftjax_bf16" in contestants:
      results["bf16_full"] = {"ftjax": contestants["ftjax_bf16"], "torch": contestants["torch"]}
    line = "  ".join(f"{k} {1e3 * statistics.median(c.times):8.1f} ms" for k, c in contestants.items())
    print(f"[{batch_size}x{length}] {mode:7s} {line}", flush=True)
    del contestants, order
  return results


def median_ms(c: Contestant) -> float:
  return 1e3 * statistics.median(c.times)


def machine() -> dict:
  cpu = next(
    (l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("model name")),
    platform.processor() or "unknown",
  )
  import flax, optax, peft, torch, transformers

  versions = {
    "python": platform.python_version(),
    "jax": jax.__version__,
    "jaxlib": jax.lib.__version__,
    "flax": flax.__version__,
    "optax": optax.__version__,
    "torch": torch.__version__,
    "transformers": transformers.__version__,
    "peft": peft.__version__,
  }
  return {
    "cpu": cpu,
    "cores": os.cpu_count(),
    "versions": versions,
    "xla_flags": os.environ.get("XLA_FLAGS", ""),
    "torch_threads": torch.get_num_threads(),
  }


def write_report(out: Path, args, info, throughput, hf_config, all_results, load_before, load_after, elapsed):
  peak = max(throughput.values())
  lines = [
    "# ftjax vs PyTorch step time",
    "",
    f"Generated by `python {' '.join(sys.argv)}` on {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC} "
    f"in {elapsed / 60:.1f} min.",
    "",
    f"- Machine: {info['cpu']}, {info['cores']} cores; load average {load_before} before, {load_after} after "
    "(anything well above 0 means the timings are noisy).",
    "- Versions: " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()) + ".",
    f"- torch threads: {info['torch_threads']}; XLA_FLAGS: `{info['xla_flags'] or '(none)'}`.",
    f"- Model: `{args.model if not args.quick else 'tiny random BERT (--quick)'}` "
    f"(L={hf_config['num_hidden_layers']}, H={hf_config['hidden_size']}, I={hf_config['intermediate_size']}); "
    f"float32 unless noted; dropout 0.1 in training modes; AdamW, clip 1.0.",
    f"- {args.warmup} warm-up + {args.reps} timed steps per contestant, alternating ftjax / PyTorch; medians.",
    f"- float32 matmul throughput ({args.matmul}², best of start and end of the run): jax {throughput['jax']:.1f} GFLOP/s, torch.mm "
    f"{throughput['torch']:.1f} GFLOP/s; MFU below is against the better, {peak:.1f} GFLOP/s.",
    "- Model FLOPs per step: forward F = 2·B·T·L·(4H² + 2HI) + 4·B·L·T²·H; full 3F, LoRA/BitFit 2F, head F, "
    "FGM 6F, inference F. XLA GFLOP: `cost_analysis()` of the compiled ftjax step.",
    "- ΔRSS: resident-set increase over that contestant's build + warm-up (one shared process; see "
    f"scripts/bench.py). Process peak RSS (ru_maxrss) at the end: {peak_rss_mb():.0f} MB.",
    "- bf16_full: ftjax with bfloat16 compute (float32 params) against PyTorch float32 full (the same torch "
    "steps as the full row).",
    "",
  ]
  for (b, t), results in all_results.items():
    fwd = forward_flops(hf_config, b, t)
    lines += [
      f"## batch {b} × {t}",
      "",
      "| mode | ftjax ms/step | PyTorch ms/step | ratio | ftjax MFU | PyTorch MFU | model GFLOP | XLA GFLOP "
      "| compile s | ftjax ΔRSS MB | PyTorch ΔRSS MB |",
      "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for mode in MODES:
      if mode not in results:
        continue
      fj, to = results[mode]["ftjax"], results[mode]["torch"]
      flops = FORWARDS[mode] * fwd
      mfu = lambda c: 100 * flops / (median_ms(c) / 1e3) / (peak * 1e9)
      lines.append(
        f"| {mode} | {median_ms(fj):.1f} | {median_ms(to):.1f} | {median_ms(fj) / median_ms(to):.2f} "
        f"| {mfu(fj):.1f}% | {mfu(to):.1f}% | {flops / 1e9:.1f} | {fj.xla_flops / 1e9:.1f} "
        f"| {fj.compile_s:.1f} | {fj.rss_mb:.0f} | {to.rss_mb:.0f} |"
      )
    lines.append("")
  (out / "bench.md").write_text("\n".join(lines))


def plot(out: Path, all_results):
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, len(all_results), figsize=(6 * len(all_results), 4), squeeze=False)
  for ax, ((b, t), results) in zip(axes[0], all_results.items()):
    modes = [m for m in MODES if m in results]
    x = np.arange(len(modes))
    ax.bar(x - 0.2, [median_ms(results[m]["ftjax"]) for m in modes], 0.4, label="ftjax")
    ax.bar(x + 0.2, [median_ms(results[m]["torch"]) for m in modes], 0.4, label="PyTorch (float32)")
    ax.set_xticks(x, modes, rotation=30)
    ax.set_ylabel("ms / step (median)")
    ax.set_title(f"batch {b} × {t}")
    ax.legend()
  fig.tight_layout()
  fig.savefig(out / "bench.png", dpi=120)


def ratios_line(results) -> str:
  ms = lambda m, k="ftjax": median_ms(results[m][k]) if m in results else float("nan")
  r = {m: ms(m) / ms(m, "torch") for m in ("full", "lora", "bitfit", "head", "fgm")}
  r["bf16_full"] = ms("bf16_full") / ms("full", "torch") if "full" in results else float("nan")
  r["lora_vs_full"], r["head_vs_full"], r["fgm_vs_plain"] = (
    ms("lora") / ms("full"),
    ms("head") / ms("full"),
    ms("fgm") / ms("full"),
  )
  return "RATIOS " + " ".join(f"{k}={v:.3f}" for k, v in r.items())


def main(argv=None):
  args = parse_args(argv)
  import torch
  import transformers

  torch.set_num_threads(2)
  transformers.logging.set_verbosity_error()  # the "classifier newly initialised" load report, every mode
  transformers.logging.disable_progress_bar()
  start = time.perf_counter()
  load_before = Path("/proc/loadavg").read_text().split()[0]
  folder = tiny_bert_folder() if args.quick else resolve(args.model)
  import json

  hf_config = json.loads((Path(folder) / "config.json").read_text())
  throughput = matmul_gflops(args.matmul)
  print(
    f"float32 matmul {args.matmul}²: " + ", ".join(f"{k} {v:.1f} GFLOP/s" for k, v in throughput.items()), flush=True
  )
  all_results = {}
  for b, t in args.shape_list:
    all_results[(b, t)] = bench_shape(folder, hf_config, args.modes, b, t, args)
  # Probed again at the end, the better of the two kept: one probe under a load spike would inflate MFU.
  throughput = {k: max(v, w) for (k, v), w in zip(throughput.items(), matmul_gflops(args.matmul).values())}
  out = Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  load_after = Path("/proc/loadavg").read_text().split()[0]
  write_report(
    out, args, machine(), throughput, hf_config, all_results, load_before, load_after, time.perf_counter() - start
  )
  plot(out, all_results)
  print(f"wrote {out / 'bench.md'} and {out / 'bench.png'}", flush=True)
  print(ratios_line(all_results[args.shape_list[0]]), flush=True)


if __name__ == "__main__":
  main()

"""Step-time benchmark: ftjax against PyTorch + transformers + PEFT on the same model, batch and machine.

  python scripts/bench.py                      # MiniLM-L6, batch 32 × 128, 10 timed steps per mode (~15 min, 2 cores)
  python scripts/bench.py --shapes             # also batch 8 × 64
  python scripts/bench.py --quick --out /tmp/b # a tiny random BERT, 1 step: the smoke test (tests/test_bench.py)

Writes `<out>/bench.md` (below its hand-written findings: table, machine, versions, command, date) and
`<out>/bench.png`; the last stdout line is
`RATIOS full=… lora=… bitfit=… head=… fgm=… bf16_full=… lora_vs_full=… head_vs_full=… fgm_vs_plain=…`:
the first six are ftjax ms/step ÷ PyTorch ms/step (bf16_full: ftjax bfloat16 compute ÷ PyTorch float32),
the last three ftjax ÷ ftjax (lora/full, head/full, fgm/full).

What each step is (like with like on both sides) and how model FLOPs are counted: scripts/bench_steps.py.

Timing. For every mode the contestants (ftjax step, PyTorch step, and for "full" also the ftjax
bfloat16 step) are built and warmed up, then timed ALTERNATELY, one step each per repetition (order
reversed on odd repetitions), so machine load drifts over both. Reported: the median over repetitions.
ftjax compile time is `jit(...).lower(...).compile()` alone; the first PyTorch step is in its warm-up.

MFU = model FLOPs per step (scripts/bench_steps.py counts them) ÷ step time ÷ the machine's float32
matmul throughput, measured in this run (the better of jitted jax and torch.mm on two N × N matrices,
probed at the start and the end). XLA's own count for the compiled ftjax step
(`cost_analysis()["flops"]`) is reported beside it.

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
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without installing
from bench_steps import (  # noqa: E402
  FORWARDS,
  MODES,
  Contestant,
  classifier_params,
  forward_flops,
  ftjax_contestant,
  mode_list,
  synthetic_batch,
  tiny_bert_folder,
  torch_contestant,
)
from ftjax.models import resolve  # noqa: E402
from ftjax.results import write_page  # noqa: E402


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


# --- the run -------------------------------------------------------------------------------------


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
  write_page(out / "bench.md", "ftjax vs PyTorch step time", "\n".join(lines))


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

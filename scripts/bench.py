"""Step-time benchmark: ftjax against PyTorch + transformers + PEFT on the same model, batch and machine.

  python scripts/bench.py                      # MiniLM-L6, batch 32 × 128, 10 timed steps per mode (~15 min, 2 cores)
  python scripts/bench.py --isolate            # also each framework alone in its own process, compared
  python scripts/bench.py --shapes             # also batch 8 × 64
  python scripts/bench.py --quick --out /tmp/b # a tiny random BERT, 1 step: the smoke test (tests/test_bench.py)
  python scripts/bench.py --device             # on a GPU: BERT-base and a 1B Llama in bf16 (scripts/bench_device.py)

Writes `<out>/bench.md` (below its hand-written findings: table, machine, versions, command, date) and
`<out>/bench.png`; the last stdout line is
`RATIOS full=… lora=… bitfit=… head=… fgm=… bf16_full=… bf16_vs_torch_bf16=… lora_vs_full=… head_vs_full=… fgm_vs_plain=…`:
the first seven are ftjax ms/step ÷ PyTorch ms/step (bf16_full: ftjax bfloat16 compute ÷ PyTorch
float32; bf16_vs_torch_bf16: the same ÷ PyTorch under `torch.autocast("cpu", dtype=torch.bfloat16)`),
the last three ftjax ÷ ftjax (lora/full, head/full, fgm/full). With --isolate, the line before it is
`RATIOS_ALONE …`, the same ratios from each framework timed alone.

What each step is (like with like on both sides) and how model FLOPs are counted: scripts/bench_steps.py.

Timing. For every mode the contestants (ftjax step, PyTorch step, and for "full" also the ftjax
bfloat16 step and the PyTorch bf16-autocast step) are built and warmed up, then timed ALTERNATELY, one
step each per repetition (order reversed on odd repetitions), so machine load drifts over both.
Reported: the median over repetitions. ftjax compile time is `jit(...).lower(...).compile()` alone;
the first PyTorch step is in its warm-up. Both runtimes keep thread pools in the one process (XLA's and
PyTorch's OpenMP pool, each of 2 threads here); --isolate then times each framework again in a fresh
process of its own (`--worker`, same shapes, modes, warm-up and repetitions, alternating only among its
own contestants) and reports each side's alternating ÷ alone time, which says whether sharing the
process changes either side's speed.

MFU = model FLOPs per step (scripts/bench_steps.py counts them) ÷ step time ÷ the machine's float32
matmul throughput, measured in this run (the better of jitted jax and torch.mm on two N × N matrices,
probed at the start and the end). XLA's own count for the compiled ftjax step
(`cost_analysis()["flops"]`) is reported beside it.

Memory: the increase of the process's resident set (RSS, /proc/self/status VmRSS) over each
contestant's build + warm-up, which includes its parameters, optimiser state, XLA executable and
PyTorch's autograd buffers retained by the allocator; and the whole process's high-water mark
(`ru_maxrss`) at the end. The two frameworks share one process when they alternate, so per-framework
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
  PACKAGES,
  Contestant,
  classifier_params,
  forward_flops,
  ftjax_contestant,
  median_ms,
  mode_list,
  synthetic_batch,
  tiny_bert_folder,
  torch_contestant,
)
from ftjax import provenance  # noqa: E402
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
  p.add_argument(
    "--isolate",
    action="store_true",
    help="also time each framework alone in a fresh process (same shapes, modes, warm-up, reps) and compare",
  )
  p.add_argument(
    "--device",
    action="store_true",
    help="the accelerator benchmark instead (scripts/bench_device.py, with flags of its own: --device-models, "
    "--device-modes, --reps, --warmup, --quick, --out, --one-at-a-time: see `--device --help`)",
  )
  # --isolate's child processes: one framework, numbers as JSON (not for direct use)
  p.add_argument("--worker", choices=("ftjax", "torch"), help=argparse.SUPPRESS)
  p.add_argument("--worker-out", help=argparse.SUPPRESS)
  p.add_argument("--shape-list", dest="shape_text", help=argparse.SUPPRESS)  # "32x128,8x64"
  args = p.parse_args(argv)
  args.modes = mode_list(p, args.modes)
  args.shape_list = [(32, 128)] + ([(8, 64)] if args.shapes else [])
  if args.quick:
    args.reps, args.warmup, args.matmul, args.shape_list = 1, 1, 256, [(4, 16)]
  if args.shape_text:
    args.shape_list = [tuple(int(n) for n in shape.split("x")) for shape in args.shape_text.split(",")]
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


# Who competes in each mode's group: key → (framework, bench_steps mode, PyTorch bf16 autocast).
# bf16_full is timed in the full group, against both PyTorch float32 and PyTorch bf16 autocast.
def group_members(mode: str, modes) -> dict[str, tuple[str, str, bool]]:
  members = {"ftjax": ("ftjax", mode, False), "torch": ("torch", mode, False)}
  if mode == "full" and "bf16_full" in modes:
    members |= {"ftjax_bf16": ("ftjax", "bf16_full", False), "torch_bf16": ("torch", "full", True)}
  return members


def time_shape(folder, hf_config, modes, batch_size, length, args, frameworks=("ftjax", "torch")) -> dict:
  """{group mode: {key: timed Contestant}} for one batch shape, only the contestants of `frameworks`;
  groups are timed in turn, the contestants of a group alternately (one step each per repetition)."""
  batch = synthetic_batch(hf_config["vocab_size"], batch_size, length)
  head_params = classifier_params(hf_config)
  groups = [m for m in modes if m != "bf16_full"]
  if "bf16_full" in modes and "full" not in groups:
    groups.insert(0, "full")
  timed = {}
  for mode in groups:
    contestants = {}
    for key, (framework, m, autocast) in group_members(mode, modes).items():
      if framework not in frameworks:
        continue
      gc.collect()
      before = rss_mb()
      if framework == "torch":
        c = torch_contestant(folder, m, batch, head_params, autocast=autocast)
      else:
        c = ftjax_contestant(folder, m, batch, head_params)
      for _ in range(args.warmup):
        c.run()
      c.rss_mb = rss_mb() - before
      contestants[key] = c
    order = list(contestants.values())
    for rep in range(args.reps):
      for c in order if rep % 2 == 0 else order[::-1]:
        c.timed()
    line = "  ".join(f"{k} {median_ms(c):8.1f} ms" for k, c in contestants.items())
    print(f"[{batch_size}x{length}] {mode:7s} {line}", flush=True)
    for c in contestants.values():  # keep the numbers, free the model and its executable
      c.run = c.compiled = None
    timed[mode] = contestants
    del contestants, order
    gc.collect()
  return timed


def pair_up(timed: dict, modes) -> dict:
  """{mode: {"ftjax": …, "torch": …}} from time_shape's groups; bf16_full's "torch" is PyTorch float32's
  full step and its "torch_bf16" PyTorch's bf16-autocast one."""
  results = {}
  for mode, c in timed.items():
    if mode in modes:
      results[mode] = {"ftjax": c["ftjax"], "torch": c["torch"]}
    if "ftjax_bf16" in c:
      results["bf16_full"] = {"ftjax": c["ftjax_bf16"], "torch": c["torch"], "torch_bf16": c["torch_bf16"]}
  return results


# --- each framework in its own process (--isolate) --------------------------------------------------


def isolated_runs(folder, args) -> dict:
  """{(b, t): results as pair_up gives them}, each framework timed in a fresh process of this script
  (`--worker`): same model, shapes, modes, warm-up and repetitions, nothing else running in it."""
  import json
  import subprocess
  import tempfile

  timed = {shape: {} for shape in args.shape_list}
  for framework in ("ftjax", "torch"):
    with tempfile.TemporaryDirectory() as tmp:
      out = Path(tmp) / "times.json"
      command = [sys.executable, __file__, "--worker", framework, "--worker-out", str(out), "--model", str(folder)]
      command += [f"--reps={args.reps}", f"--warmup={args.warmup}", "--modes=" + ",".join(args.modes)]
      command += ["--shape-list=" + ",".join(f"{b}x{t}" for b, t in args.shape_list)]
      subprocess.run(command, check=True)
      for shape_key, groups in json.loads(out.read_text()).items():
        shape = tuple(int(n) for n in shape_key.split("x"))
        for mode, members in groups.items():
          for key, fields in members.items():
            c = Contestant(key, None, fields["compile_s"], fields["xla_flops"])
            c.times, c.rss_mb = fields["times"], fields["rss_mb"]
            timed[shape].setdefault(mode, {})[key] = c
  return {shape: pair_up(groups, args.modes) for shape, groups in timed.items()}


def worker(folder, hf_config, args):
  """--worker: time one framework's contestants and write their numbers as JSON (isolated_runs reads it)."""
  import json

  numbers = {}
  for b, t in args.shape_list:
    groups = time_shape(folder, hf_config, args.modes, b, t, args, frameworks=(args.worker,))
    numbers[f"{b}x{t}"] = {
      mode: {
        key: {"times": c.times, "compile_s": c.compile_s, "xla_flops": c.xla_flops, "rss_mb": c.rss_mb}
        for key, c in members.items()
      }
      for mode, members in groups.items()
    }
  Path(args.worker_out).write_text(json.dumps(numbers))


def machine() -> dict:
  cpu = next(
    (l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("model name")),
    platform.processor() or "unknown",
  )
  import torch

  return {
    "cpu": cpu,
    "cores": os.cpu_count(),
    "versions": provenance.versions(PACKAGES),
    "xla_flags": os.environ.get("XLA_FLAGS", ""),
    "torch_threads": torch.get_num_threads(),
  }


def write_report(out: Path, args, info, throughput, hf_config, all_results, isolated, load_before, load_after, elapsed):
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
    "steps as the full row); bf16_vs_torch_bf16: the same ftjax steps against PyTorch full under "
    '`torch.autocast("cpu", dtype=torch.bfloat16)` (MFU of both against the float32 rate above).',
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
      fj = results[mode]["ftjax"]
      flops = FORWARDS[mode] * fwd
      mfu = lambda c: 100 * flops / (median_ms(c) / 1e3) / (peak * 1e9)
      # bf16_full is set against PyTorch float32, then (bf16_vs_torch_bf16) against PyTorch bf16 autocast
      rivals = [(mode, "torch")] + ([("bf16_vs_torch_bf16", "torch_bf16")] if mode == "bf16_full" else [])
      for label, key in rivals:
        to = results[mode][key]
        lines.append(
          f"| {label} | {median_ms(fj):.1f} | {median_ms(to):.1f} | {median_ms(fj) / median_ms(to):.2f} "
          f"| {mfu(fj):.1f}% | {mfu(to):.1f}% | {flops / 1e9:.1f} | {fj.xla_flops / 1e9:.1f} "
          f"| {fj.compile_s:.1f} | {fj.rss_mb:.0f} | {to.rss_mb:.0f} |"
        )
    lines.append("")
    if isolated:
      lines += isolation_table(results, isolated[(b, t)])
  write_page(out / "bench.md", "ftjax vs PyTorch step time", "\n".join(lines))


def isolation_table(alternating: dict, isolated: dict) -> list[str]:
  """Markdown lines: each side's median alternating in one process against alone in its own process."""
  lines = [
    "Each framework alone in its own fresh process (`--isolate`: same shapes, modes, warm-up and reps, run "
    "after the alternating timing above) against the alternating timing; alt/alone > 1: slower when alternating.",
    "",
    "| mode | ftjax alone ms | ftjax alt/alone | PyTorch alone ms | PyTorch alt/alone | ratio alone | ratio alt "
    "| compile s alone |",
    "|---|---:|---:|---:|---:|---:|---:|---:|",
  ]
  for mode, torch_key in [(m, "torch") for m in MODES] + [("bf16_full", "torch_bf16")]:
    if mode not in isolated:
      continue
    fj, to = isolated[mode]["ftjax"], isolated[mode][torch_key]
    fj_alt, to_alt = alternating[mode]["ftjax"], alternating[mode][torch_key]
    label = "bf16_vs_torch_bf16" if torch_key == "torch_bf16" else mode
    lines.append(
      f"| {label} | {median_ms(fj):.1f} | {median_ms(fj_alt) / median_ms(fj):.2f} | {median_ms(to):.1f} "
      f"| {median_ms(to_alt) / median_ms(to):.2f} | {median_ms(fj) / median_ms(to):.2f} "
      f"| {median_ms(fj_alt) / median_ms(to_alt):.2f} | {fj.compile_s:.1f} |"
    )
  return lines + [""]


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


def ratios_line(results, label: str = "RATIOS") -> str:
  ms = lambda m, k="ftjax": median_ms(results[m][k]) if m in results else float("nan")
  r = {m: ms(m) / ms(m, "torch") for m in ("full", "lora", "bitfit", "head", "fgm")}
  r["bf16_full"] = ms("bf16_full") / ms("full", "torch") if "full" in results else float("nan")
  r["bf16_vs_torch_bf16"] = ms("bf16_full") / ms("bf16_full", "torch_bf16")
  r["lora_vs_full"], r["head_vs_full"], r["fgm_vs_plain"] = (
    ms("lora") / ms("full"),
    ms("head") / ms("full"),
    ms("fgm") / ms("full"),
  )
  return label + " " + " ".join(f"{k}={v:.3f}" for k, v in r.items())


def main(argv=None):
  argv = sys.argv[1:] if argv is None else argv
  if "--device" in argv:  # the GPU/TPU benchmark: its own models, modes and report
    import bench_device

    return bench_device.main(argv)
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
  if args.worker:
    worker(folder, hf_config, args)
    return
  throughput = matmul_gflops(args.matmul)
  print(
    f"float32 matmul {args.matmul}²: " + ", ".join(f"{k} {v:.1f} GFLOP/s" for k, v in throughput.items()), flush=True
  )
  all_results = {}
  for b, t in args.shape_list:
    all_results[(b, t)] = pair_up(time_shape(folder, hf_config, args.modes, b, t, args), args.modes)
  isolated = isolated_runs(folder, args) if args.isolate else None
  # Probed again at the end, the better of the two kept: one probe under a load spike would inflate MFU.
  throughput = {k: max(v, w) for (k, v), w in zip(throughput.items(), matmul_gflops(args.matmul).values())}
  out = Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  load_after = Path("/proc/loadavg").read_text().split()[0]
  write_report(
    out,
    args,
    machine(),
    throughput,
    hf_config,
    all_results,
    isolated,
    load_before,
    load_after,
    time.perf_counter() - start,
  )
  plot(out, all_results)
  print(f"wrote {out / 'bench.md'} and {out / 'bench.png'}", flush=True)
  if isolated:
    print(ratios_line(isolated[args.shape_list[0]], "RATIOS_ALONE"), flush=True)
  print(ratios_line(all_results[args.shape_list[0]]), flush=True)


if __name__ == "__main__":
  main()

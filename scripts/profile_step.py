"""Where an ftjax training step spends its time: XLA's own op trace, grouped into kinds of work.

  python scripts/profile_step.py                          # full, bf16_full, lora, head, fgm on MiniLM, 32 × 128
  python scripts/profile_step.py --modes=bf16_full --steps=5
  python scripts/profile_step.py --quick --out /tmp/p     # tiny random BERT: the smoke test (tests/test_bench.py)

The speed issue's targets are read off scripts/bench.py; this script says why a step takes what it takes.
Each mode's step is built exactly as scripts/bench.py times it (scripts/bench_steps.py: same model,
synthetic batch, AdamW, dropout 0.1), warmed up, then traced with `jax.profiler.trace` for `--steps` steps. Every XLA op the
trace records (one thunk of the compiled step: a dot, a fusion, a copy, ...) is put in one kind by
what its HLO computes (the compiled module's text; a fusion by the ops fused inside it, first rule
that matches):

  matmul          a dot or convolution (XLA:CPU runs them as library calls: Eigen, oneDNN, YNNPACK)
  dropout RNG     threefry hashing (uint32 xor / shift / add): drawing dropout masks, with whatever XLA
                  fused beside it (the mask's compare and select)
  scatter         scatter: the word-embedding gradient (rows of a 30,522 × 384 table)
  reduction       reduce: softmax and LayerNorm statistics, the loss, the gradient's global norm
  layout copy     copy / transpose alone: relayouts between the ops above
  convert         convert alone: bfloat16 ↔ float32 casts
  elementwise     everything else fused (GELU, residual adds, the AdamW update, masks)

Caveat: XLA:CPU runs a plain `dot` (Eigen) asynchronously on its thread pool, and the trace event of
such an op can end when the work is queued rather than done; the rest of its time then shows up in
the ops that run next (a float32 (384 × 4096)·(4096 × 384) weight gradient appears as ~0.5 ms for 1.2
GFLOP). YNNPACK fusions (`ynn_fusion`, most matmuls here) are timed whole. So per-kind times are close
but not exact, and the matmul throughput below can read high.

Reported per mode: the step's wall time (median of the traced steps), the ops' summed time per step
(both threads of XLA's pool, so up to 2× the wall time on 2 cores), and per kind its time, share of
op time and op count, and the slowest ops with what they fuse; for `matmul`, the throughput it reaches on the model's matmul FLOPs (as
scripts/bench_steps.py counts them). Writes `<out>/profile.md` (below its hand-written
findings); traces go to a temporary folder.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import glob
import gzip
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import jax

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_steps  # noqa: E402
from ftjax.models import resolve  # noqa: E402
from ftjax.results import write_page  # noqa: E402

# ops that move or name data without computing: they do not decide an op's kind
STRUCTURAL = {
  "parameter",
  "bitcast",
  "tuple",
  "get-tuple-element",
  "constant",
  "broadcast",
  "slice",
  "reshape",
  "concatenate",
  "iota",
}
TOP_OPS = 12  # the slowest ops listed per mode
KINDS = ("matmul", "dropout RNG", "scatter", "reduction", "layout copy", "convert", "elementwise")


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--model", default="minilm", help="HF BERT folder or ftjax id (default: the packaged MiniLM-L6)")
  p.add_argument(
    "--modes", default="full,bf16_full,lora,head,fgm", help="comma-separated subset of " + ",".join(bench_steps.MODES)
  )
  p.add_argument("--batch", type=int, default=32, help="sequences per step")
  p.add_argument("--length", type=int, default=128, help="tokens per sequence")
  p.add_argument("--steps", type=int, default=3, help="traced steps per mode (after 2 untraced warm-up steps)")
  p.add_argument("--quick", action="store_true", help="tiny random BERT, batch 4 × 16, 1 traced step")
  p.add_argument("--out", default="results", help="folder for profile.md")
  args = p.parse_args(argv)
  args.modes = bench_steps.mode_list(p, args.modes)
  if args.quick:
    args.batch, args.length, args.steps = 4, 16, 1
  return args


# --- the compiled module: which kind of work each op is ---------------------------------------------

_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*)$")
_CALLED = re.compile(r"(?:calls|to_apply|body|condition)=%?([\w.\-]+)")


def _opcode(rhs: str) -> str:
  """The opcode of an HLO instruction's right-hand side `TYPE opcode(operands), attributes`."""
  if rhs.startswith("("):  # a tuple type: skip to its closing parenthesis
    depth = 0
    for i, ch in enumerate(rhs):
      depth += ch == "("
      depth -= ch == ")"
      if depth == 0:
        rhs = rhs[i + 1 :]
        break
  else:
    rhs = rhs.split(" ", 1)[1] if " " in rhs else rhs
  match = re.match(r"\s*([a-z][\w\-]*)\(", rhs)
  return match.group(1) if match else ""


class Op(collections.namedtuple("Op", "kind description")):
  """One instruction of the compiled module: its kind and `shape opcode [fused opcodes]`."""


def hlo_ops(hlo_text: str) -> dict[str, Op]:
  """{instruction name: Op} for every instruction of the module, a fusion judged by what it contains."""
  computations: dict[str, list[tuple[str, str, str]]] = {}  # computation → [(name, opcode, rhs)]
  current = None
  for line in hlo_text.splitlines():
    if line[:1].strip() and line.rstrip().endswith("{"):  # an unindented `[ENTRY] %name (...) -> ... {`
      header = _COMPUTATION.match(line)
      current = header.group(1) if header else None
      if current:
        computations[current] = []
    elif current and (instruction := _INSTRUCTION.match(line)):
      name, rhs = instruction.groups()
      computations[current].append((name, _opcode(rhs), rhs))

  def reach(opcode: str, rhs: str, seen: set[str]) -> tuple[set[str], str]:
    """The opcodes (and HLO text, for element types) an instruction runs, through what it calls."""
    opcodes, text = {opcode}, [rhs]
    for called in _CALLED.findall(rhs):
      if called in computations and called not in seen:
        seen.add(called)
        for _, inner_opcode, inner_rhs in computations[called]:
          inner, inner_text = reach(inner_opcode, inner_rhs, seen)
          opcodes |= inner
          text.append(inner_text)
    return opcodes, "\n".join(text)

  ops = {}
  for instructions in computations.values():
    for name, opcode, rhs in instructions:
      opcodes, text = reach(opcode, rhs, set())
      shape = "(tuple)" if rhs.startswith("(") else rhs.split(" ", 1)[0]
      inside = ", ".join(sorted(opcodes - STRUCTURAL - {"fusion"}))
      ops[name] = Op(classify(opcodes, text), f"{shape} {opcode}" + (f" [{inside}]" if opcode == "fusion" else ""))
  return ops


def classify(opcodes: set[str], text: str) -> str:
  """The kind of one op (see the module docstring), from the opcodes it runs and their HLO text."""
  if opcodes & {"dot", "convolution"} or re.search(r'custom_call_target="[^"]*(matmul|MatMul|dot)', text):
    return "matmul"
  if {"xor", "shift-left", "shift-right-logical"} <= opcodes and "u32" in text:
    return "dropout RNG"
  if "scatter" in opcodes:
    return "scatter"
  if opcodes & {"reduce", "reduce-window"}:
    return "reduction"
  if opcodes - STRUCTURAL <= {"copy", "transpose"} and opcodes & {"copy", "transpose"}:
    return "layout copy"
  if opcodes - STRUCTURAL == {"convert"}:
    return "convert"
  return "elementwise"


# --- the trace ---------------------------------------------------------------------------------------


def op_times(trace_dir: str) -> dict[str, float]:
  """{hlo op name: summed duration in ms} over every XLA op event of the perfetto trace in trace_dir."""
  files = glob.glob(f"{trace_dir}/**/perfetto_trace.json.gz", recursive=True)
  if not files:
    raise RuntimeError(f"jax.profiler.trace wrote no perfetto_trace.json.gz under {trace_dir}")
  with gzip.open(files[0]) as f:
    trace = json.load(f)
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  times = collections.defaultdict(float)
  for event in events:
    op = (event.get("args") or {}).get("hlo_op")
    if event.get("ph") == "X" and op:
      times[op] += event.get("dur", 0.0) / 1e3  # perfetto durations are µs
  return times


def profile_mode(folder, hf_config, mode: str, args) -> dict:
  batch = bench_steps.synthetic_batch(hf_config["vocab_size"], args.batch, args.length)
  contestant = bench_steps.ftjax_contestant(folder, mode, batch, bench_steps.classifier_params(hf_config))
  for _ in range(2):
    contestant.run()
  ops = hlo_ops(contestant.compiled.as_text())
  walls = []
  with tempfile.TemporaryDirectory(prefix="ftjax-profile-") as trace_dir:
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
      for _ in range(args.steps):
        start = time.perf_counter()
        contestant.run()
        walls.append(time.perf_counter() - start)
    times = op_times(trace_dir)
  per_kind = {kind: [0.0, 0] for kind in KINDS}
  unknown = 0.0
  for name, ms in times.items():
    if name not in ops:  # an op the module text does not name (runtime bookkeeping): counted apart
      unknown += ms
      continue
    per_kind[ops[name].kind][0] += ms / args.steps
    per_kind[ops[name].kind][1] += 1
  top = sorted(((ms / args.steps, name, *ops[name]) for name, ms in times.items() if name in ops), reverse=True)
  flops = bench_steps.FORWARDS[mode] * bench_steps.forward_flops(hf_config, args.batch, args.length)
  return {
    "wall_ms": 1e3 * statistics.median(walls),
    "kinds": per_kind,
    "unnamed_ms": unknown / args.steps,
    "model_gflop": flops / 1e9,
    "top": top[:TOP_OPS],
  }


def report(args, results: dict, elapsed: float) -> str:
  lines = [
    f"Generated by `python {' '.join(sys.argv)}` on {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC} "
    f"in {elapsed / 60:.1f} min; load average {Path('/proc/loadavg').read_text().split()[0]} at the end "
    "(well above 0 means other work shared the cores).",
    "",
    f"- Model `{args.model if not args.quick else 'tiny random BERT (--quick)'}`, batch {args.batch} × "
    f"{args.length}, each mode's step as scripts/bench.py builds it; {args.steps} traced steps after 2 warm-up steps.",
    "- op time: summed durations of XLA's ops (its thread pool runs independent ops side by side, so op "
    "time can exceed wall time); kinds as the docstring of scripts/profile_step.py defines them.",
    "- matmul GFLOP/s: the model's matmul FLOPs per step (scripts/bench.py's count) ÷ matmul op time.",
    "",
  ]
  for mode, r in results.items():
    total = sum(ms for ms, _ in r["kinds"].values())
    matmul_ms = r["kinds"]["matmul"][0]
    lines += [
      f"## {mode}",
      "",
      f"wall {r['wall_ms']:.0f} ms/step; op time {total:.0f} ms/step; matmul {r['model_gflop']:.1f} GFLOP "
      f"in {matmul_ms:.0f} ms = {r['model_gflop'] / max(matmul_ms, 1e-9) * 1e3:.0f} GFLOP/s"
      + (f"; {r['unnamed_ms']:.1f} ms in ops the module does not name" if r["unnamed_ms"] else ""),
      "",
      "| kind | ms/step | share of op time | ops |",
      "|---|---:|---:|---:|",
    ]
    for kind in KINDS:
      ms, count = r["kinds"][kind]
      lines.append(f"| {kind} | {ms:.1f} | {100 * ms / max(total, 1e-9):.1f}% | {count} |")
    lines += [
      "",
      f"The {TOP_OPS} slowest ops:",
      "",
      "| op | kind | ms/step | what (output, opcode, fused opcodes) |",
      "|---|---|---:|---|",
    ]
    lines += [f"| {name} | {kind} | {ms:.1f} | `{what}` |" for ms, name, kind, what in r["top"]]
    lines.append("")
  return "\n".join(lines)


def main(argv=None):
  args = parse_args(argv)
  start = time.perf_counter()
  folder = bench_steps.tiny_bert_folder() if args.quick else resolve(args.model)
  hf_config = json.loads((Path(folder) / "config.json").read_text())
  results = {}
  for mode in args.modes:
    results[mode] = profile_mode(folder, hf_config, mode, args)
    kinds = results[mode]["kinds"]
    total = sum(ms for ms, _ in kinds.values())
    print(
      f"{mode:9s} wall {results[mode]['wall_ms']:7.0f} ms  "
      + "  ".join(f"{k} {100 * ms / max(total, 1e-9):.0f}%" for k, (ms, _) in kinds.items()),
      flush=True,
    )
  out = Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  write_page(
    out / "profile.md", "Where an ftjax step spends its time", report(args, results, time.perf_counter() - start)
  )
  print(f"wrote {out / 'profile.md'}")


if __name__ == "__main__":
  main()

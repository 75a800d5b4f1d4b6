"""What a number was made with: the code's commit, the machine, and the versions of the packages that
decide it. `train_and_evaluate` records `environment()` in run.json; results tables show it, since a
bit-identical re-run holds only on the same versions and the same kind of machine."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

# Distributions whose version can change a run's numbers (compilation, initialisation, tokenisation,
# checkpoint layout), by their names on PyPI.
PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "transformers", "tokenizers", "numpy")


def versions(packages=PACKAGES) -> dict[str, str]:
  """{"python": "3.11.9", "jax": "0.10.2", ...} for `packages` (PyPI names); one not installed is "absent"."""
  found = {"python": platform.python_version()}
  for name in packages:
    try:
      found[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
      found[name] = "absent"
  return found


def machine() -> str:
  """CPU model and core count: the numbers in results/ are only comparable on the same kind of machine."""
  cpu = "?"
  if Path("/proc/cpuinfo").exists():
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
  return f"{cpu} ({platform.machine()}, {os.cpu_count()} cores)"


def accelerators() -> str:
  """The devices JAX computes on, e.g. '1 × cpu' or '8 × NVIDIA H100 80GB HBM3'."""
  import jax

  kinds = [d.device_kind for d in jax.devices()]
  return ", ".join(f"{kinds.count(k)} × {k}" for k in sorted(set(kinds)))


def commit() -> str:
  """The checkout's commit (short hash), '+dirty' when tracked code differs from it (results/ aside:
  regenerating a table must not mark the table itself dirty); '?' outside a git checkout."""
  root = Path(__file__).resolve().parents[1]
  run = lambda *args: subprocess.run(["git", *args], cwd=root, capture_output=True, text=True).stdout.strip()
  try:
    head = run("rev-parse", "--short", "HEAD") or "?"
    dirty = run("status", "--porcelain", "--untracked-files=no", "--", ".", ":!results")
  except OSError:  # no git on this machine
    return "?"
  return head + ("+dirty" if head != "?" and dirty else "")


def environment() -> dict:
  """What run.json records under "environment"."""
  return {
    "versions": versions(),
    "machine": machine(),
    "devices": accelerators(),
    "platform": f"{platform.system()} {platform.release()}",
    "executable": sys.executable,
    "commit": commit(),
  }


def versions_line(records: list[dict]) -> str:
  """One line for a results page: the package versions its runs recorded ('not recorded' for runs made
  before run.json kept them); several values of a package are all listed."""
  seen: dict[str, set[str]] = {}
  missing = 0
  for r in records:
    v = r.get("versions")
    if not v:
      missing += 1
      continue
    for name, version in v.items():
      seen.setdefault(name, set()).add(version)
  if not seen:
    return "Package versions: not recorded (runs made before run.json kept them)."
  parts = [f"{name} {' / '.join(sorted(vs))}" for name, vs in seen.items()]
  tail = f"; {missing} older run(s) did not record them" if missing else ""
  return f"Package versions: {', '.join(parts)}{tail}."

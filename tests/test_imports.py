"""`import ftjax` (and every module of it) changes nothing global in JAX, and the top-level API is there."""

import subprocess
import sys
import textwrap
from pathlib import Path

import ftjax

REPO = Path(__file__).resolve().parents[1]


def test_importing_every_ftjax_module_leaves_jax_lowering_rules_and_config_as_they_were():
  # In a fresh process: a snapshot of JAX's lowering tables (common and per platform)
  # and of jax.config, then every module of the package imported, then the same snapshot again.
  script = textwrap.dedent(
    """
    import importlib, pkgutil
    import jax
    from jax._src.interpreters import mlir

    def snapshot():
      tables = {"*": dict(mlir._lowerings)}
      tables.update({p: dict(t) for p, t in mlir._platform_specific_lowerings.items()})
      rules = {(p, prim): entry.rule for p, t in tables.items() for prim, entry in t.items()}
      return rules, dict(jax.config.values)

    before = snapshot()
    import ftjax
    names = [m.name for m in pkgutil.walk_packages(ftjax.__path__, "ftjax.")]
    for name in names:
      importlib.import_module(name)
    after = snapshot()
    # A rule that was there must be the same object; new ones may only be JAX's own, registered when one of
    # its modules is first imported (shard_map, multihost_utils, ...).
    changed = sorted(str(k) for k, rule in before[0].items() if after[0].get(k) is not rule)
    changed += sorted(str(k) for k, rule in after[0].items() if k not in before[0] and not rule.__module__.startswith("jax"))
    config = sorted(k for k in set(before[1]) | set(after[1]) if before[1].get(k) != after[1].get(k))
    print(len(names), "modules;", "lowerings changed:", changed, "config changed:", config)
    assert not changed and not config
    """
  )
  done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stdout + done.stderr
  assert "lowerings changed: [] config changed: []" in done.stdout


def test_top_level_api():
  from ftjax import generation, loop, models

  assert ftjax.generate is generation.generate
  assert ftjax.train_and_evaluate is loop.train_and_evaluate
  assert ftjax.from_pretrained is models.from_pretrained and ftjax.load_tokenizer is models.load_tokenizer
  for name in ftjax.__all__:
    assert getattr(ftjax, name).__doc__, f"ftjax.{name} has no docstring"

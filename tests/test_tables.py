"""configs/tables.py: every cell of every paper table is a valid command before hours are spent on it.

Each cell's flags are parsed exactly as scripts/train.py parses them, and the trainability rules of the
freeze and methods tables are applied to the real all-MiniLM-L6-v2 parameter tree: every leaf decided,
and the trainable counts ordered as the tables claim.
"""

import collections

import numpy as np

import pytest

from conftest import needs_data, parse_config
from configs.tables import TABLES, freeze_rules


@pytest.mark.parametrize("name", sorted(TABLES))
def test_every_cell_parses_to_the_config_it_names(name):
  table = TABLES[name]()
  assert len({c.name for c in table.cells}) == len(table.cells), "cell folders must be unique"
  keys = {c.key for c in table.columns}
  placed = collections.Counter((c.row, c.column, c.seed) for c in table.cells)
  assert max(placed.values()) == 1, "two cells in one place of the table"
  for cell in table.cells:
    assert cell.column in keys
    config = parse_config(f"--config={cell.config}", *cell.flags())
    for key, value in cell.overrides + (("seed", cell.seed),):
      node = config
      for part in key.split(".")[:-1]:
        node = node[part]
      got = node[key.split(".")[-1]]
      assert (tuple(got) if isinstance(value, tuple) else got) == value, (cell.name, key)


def test_adversarial_lora_cells_compile_with_the_rolled_dropout_hash():
  """LoRA + FGM/PGD does not finish compiling with the unrolled hash (ftjax/xla_cpu.py): those cells, and
  only those, say cpu_threefry=rolled, so the `none` rows stay the methods table's runs."""
  rolled = {c.name for c in TABLES["adversarial"]().cells if ("cpu_threefry", "rolled") in c.overrides}
  lora_adversarial = {
    c.name for c in TABLES["adversarial"]().cells if c.row.startswith("LoRA + ") and not c.row.endswith("+ none")
  }
  assert rolled == lora_adversarial and len(rolled) == 4 * 11


@pytest.fixture(scope="module")
def minilm_trees():
  """The real MiniLM run trees (backbone + method + head) for each method, built as a run builds them."""
  needs_data("sst2")
  from ftjax import experiment

  trees = {}
  for method in ("full", "lora", "adapter", "prompt"):
    exp = experiment.build(parse_config("--config=configs/glue.py:sst2", f"--config.method={method}"))
    trees[method] = exp.tree
  return trees


def trainable_count(tree, rules):
  import numpy as np
  from ftjax import trainability

  trainable, _ = trainability.partition(tree, rules)
  return sum(int(np.size(v)) for v in trainability.flatten(trainable).values())


def test_freeze_rules_train_more_parameters_with_every_layer(minilm_trees):
  from ftjax.trainability import rules_for

  tree = minilm_trees["full"]
  for embeddings in (False, True):
    counts = [trainable_count(tree, rules_for("full", freeze_rules(k, embeddings))) for k in range(7)]
    assert counts == sorted(counts) and len(set(counts)) == 7
    assert counts[0] == (384 * 30522 + 512 * 384 + 2 * 384 + 2 * 384 if embeddings else 0) + 384 * 2 + 2
  everything = trainable_count(tree, rules_for("full"))
  assert trainable_count(tree, rules_for("full", freeze_rules(6, True))) == everything
  # the whole encoder stack minus the embeddings: what freezing the embeddings saves
  assert (
    everything - trainable_count(tree, rules_for("full", freeze_rules(6, False)))
    == 30522 * 384 + 512 * 384 + 2 * 384 + 2 * 384
  )


def test_methods_table_rows_train_what_their_papers_train(minilm_trees):
  from ftjax.trainability import rules_for

  full = trainable_count(minilm_trees["full"], rules_for("full"))
  counts = {
    "head": trainable_count(minilm_trees["full"], rules_for("head")),
    "bitfit": trainable_count(minilm_trees["full"], rules_for("bitfit")),
    "lora": trainable_count(minilm_trees["lora"], rules_for("lora")),
    "adapter": trainable_count(minilm_trees["adapter"], rules_for("adapter")),
    "prompt": trainable_count(minilm_trees["prompt"], rules_for("prompt")),
  }
  assert counts["head"] == 384 * 2 + 2
  assert counts["prompt"] == counts["head"] + 20 * 384
  assert counts["lora"] == counts["head"] + 6 * 2 * 2 * 8 * 384  # q and v: A (384×8), B (8×384)
  assert counts["head"] < counts["prompt"] < counts["bitfit"] < counts["lora"] < counts["adapter"] < full
  assert counts["adapter"] / full < 0.05 and counts["bitfit"] / full < 0.002


# LoRA runs in the default suite; full fine-tuning (~70 s on 2 cores, the same script path with every
# backbone tensor in the AdamW groups) is `slow`, to keep the default suite under its 10-minute budget.
@pytest.mark.parametrize("method", [pytest.param("full", marks=pytest.mark.slow), "lora"])
def test_torch_reference_follows_the_same_recipe_step_for_step(method, tiny_bert, tfds_dir, rte_dir, tmp_path):
  """scripts/torch_reference.py (transformers + PEFT) against scripts/train.py with dropout off: the same
  initial weights (ftjax's head and LoRA A copied in), batches, AdamW groups, clipping and schedule, so
  their training losses and dev accuracy must agree to float32 rounding, step for step."""
  from conftest import metric_lines, scripts_together, tiny_flags, check

  args = [
    "--config=configs/glue.py:rte",
    *tiny_flags(
      tiny_bert,
      tfds_dir,
      data_dir=rte_dir,
      method=method,
      learning_rate=3e-2 if method == "lora" else 3e-3,
      dropout=False,
      warmup_steps=2,
      log_every=1,
    ),
  ]
  runs = scripts_together(
    {name: (name, [*args, f"--workdir={tmp_path / name}"], None) for name in ("train", "torch_reference")}
  )
  for result in runs.values():
    check(result)
  ftjax_lines, torch_lines = (metric_lines(tmp_path / name) for name in ("train", "torch_reference"))
  loss = lambda lines: np.array([l["loss"] for l in lines if l["split"] == "train"])
  assert len(loss(ftjax_lines)) == 6
  # the losses move (large rates: a weak tiny model), and torch's moves match ftjax's step for step
  moved = loss(ftjax_lines) - loss(ftjax_lines)[0]
  assert np.max(np.abs(moved)) > 0.01
  np.testing.assert_allclose(loss(torch_lines) - loss(torch_lines)[0], moved, rtol=1e-2, atol=2e-5)
  dev = lambda lines: [(l["step"], l["accuracy"]) for l in lines if l["split"] == "dev"]
  assert dev(torch_lines) == dev(ftjax_lines)

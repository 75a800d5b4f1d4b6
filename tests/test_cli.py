"""The scripts as a user runs them (subprocesses), on a tiny random BERT and small cuts of the real data:
train → evaluate → predict for a GLUE task and CoNLL-2003, a CSV with its own column names by configuration
alone, `init_from` continuing a finished run, and one clear message for each kind of bad input.

The scripts spend most of their time importing and loading, so the module starts them together: first
two trainings and two bad-input runs, then evaluation and prediction on the finished runs (and the RTE
run again on a copy none of whose checkpoints restores). The CSV config and the other bad inputs go
through the same command-line parsing and `train_and_evaluate` in this process, which is much cheaper
than a fresh interpreter each.
"""

import csv
import json
import shutil

import jax
import numpy as np
import pytest

from configs import text_classification
from ftjax import experiment, loop
from ftjax.data import raw

from conftest import (
  SHARED_DATA,
  check,
  metric_lines,
  needs_data,
  parse_config,
  script,
  scripts_together,
  tiny_config,
  tiny_flags,
)


# --- inputs ---------------------------------------------------------------------------------------------


def write_reviews(path, rows):
  """SST-2 sentences as a CSV with its own column names: id, review, stars ("1" or "5")."""
  with open(path, "w", newline="", encoding="utf-8") as f:
    writer = csv.writer(f)
    writer.writerow(["id", "review", "stars"])
    for i, (sentence, label) in enumerate(rows):
      writer.writerow([i, sentence, "5" if label == "1" else "1"])
  return path


def make_reviews(folder):
  """train/dev and train2/dev2 CSVs from SST-2 dev (64 + 32 rows each)."""
  with open(SHARED_DATA / "sst2" / "dev.tsv", encoding="utf-8", newline="") as f:
    rows = [r for r in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)][1:193]
  folder.mkdir(parents=True, exist_ok=True)
  cuts = {"train": (0, 64), "dev": (64, 96), "train2": (96, 160), "dev2": (160, 192)}
  return {name: write_reviews(folder / f"{name}.csv", rows[a:b]) for name, (a, b) in cuts.items()}


def _rte_with(root, line, edit):
  """An RTE folder (32 rows) whose train.tsv line `line` is edited."""
  folder = root / "rte"
  folder.mkdir(parents=True)
  rows = (SHARED_DATA / "rte" / "train.tsv").read_text(encoding="utf-8").splitlines(keepends=True)[:33]
  rows[line - 1] = edit(rows[line - 1].rstrip("\n").split("\t")) + "\n"
  (folder / "train.tsv").write_text("".join(rows), encoding="utf-8")
  (folder / "dev.tsv").write_text("".join(rows[:17]), encoding="utf-8")
  return folder


def _reviews_with_empty_text(folder):
  folder.mkdir(parents=True, exist_ok=True)
  return write_reviews(folder / "train.csv", [("fine", "1"), ("great", "0"), ("", "1"), ("bad", "0")])


TAB = "\t"
BAD_INPUTS = {
  # name: (command-line args given the case folder d, the message expected; "{d}" = the case folder)
  "malformed_row": (
    lambda d: ["--config=configs/glue.py:rte", f"--config.data_dir={_rte_with(d, 5, lambda f: TAB.join(f[:-1]))}"],
    "{d}/rte/train.tsv:5: malformed row: 3 columns, expected 4",
  ),
  "unknown_label": (
    lambda d: [
      "--config=configs/glue.py:rte",
      f"--config.data_dir={_rte_with(d, 3, lambda f: TAB.join(f[:-1] + ['maybe']))}",
    ],
    "{d}/rte/train.tsv:3: unknown label 'maybe'",
  ),
  "empty_text": (
    lambda d: [
      "--config=configs/text_classification.py",
      "--config.task.text_fields=review",
      "--config.task.label_field=stars",
      f"--config.task.train_file={_reviews_with_empty_text(d)}",
    ],
    "{d}/train.csv:4: empty text in column 'review'",
  ),
  "unknown_config_key": (lambda d: ["--config=configs/glue.py:rte", "--config.no_such_key=1"], "no_such_key"),
  "missing_data_dir": (
    lambda d: ["--config=configs/glue.py:rte", f"--config.data_dir={d}/no/such/folder"],
    "{d}/no/such/folder: data directory does not exist",
  ),
}
SCRIPT_BAD_INPUTS = ("malformed_row", "unknown_config_key")  # through scripts/train.py; the others in process


@pytest.fixture(scope="module")
def cli(tmp_path_factory, tiny_bert, tfds_dir, rte_dir, conll_dir):
  """Every script run of this module: {name: CompletedProcess}, plus the workdirs and inputs."""
  needs_data("sst2")
  root = tmp_path_factory.mktemp("cli")
  reviews = make_reviews(root / "reviews_data")
  work = {name: root / name for name in ("rte", "conll", "reviews")}
  runs = {
    "train_rte": (
      "train",
      [
        "--config=configs/glue.py:rte",
        f"--workdir={work['rte']}",
        *tiny_flags(tiny_bert, tfds_dir, data_dir=rte_dir, method="lora", learning_rate=1e-3),
      ],
      None,
    ),
    "train_conll": (
      "train",
      [
        "--config=configs/conll2003.py:lora",
        f"--workdir={work['conll']}",
        *tiny_flags(
          tiny_bert, tfds_dir, data_dir=conll_dir, learning_rate=1e-3, max_steps=4, eval_every=4, checkpoint_every=4
        ),
      ],
      None,
    ),
  }
  bad = {}
  for name in SCRIPT_BAD_INPUTS:
    args, message = BAD_INPUTS[name]
    folder = root / f"bad_{name}"
    folder.mkdir()
    runs[f"bad_{name}"] = (
      "train",
      [
        *args(folder),
        f"--workdir={folder / 'run'}",
        f"--config.model={tiny_bert}",
        f"--config.tfds_dir={folder / 'tfds'}",
        "--config.parallel=none",
      ],
      None,
    )
    bad[name] = (folder, message.format(d=folder))
  results = scripts_together(runs)
  pairs = (
    "A man is playing a guitar on stage.\tA person plays music.\n"
    "The company reported record profits.\tThe company lost money.\n"
  )
  after = {
    "predict_rte": ("predict", [f"--workdir={work['rte']}"], pairs),
    "evaluate_conll": ("evaluate", [f"--workdir={work['conll']}", "--split=test", "--max_examples=32"], None),
    "predict_conll": (
      "predict",
      [f"--workdir={work['conll']}"],
      "EU rejects German call to boycott British lamb .\nPeter Blackburn\n",
    ),
  }
  after = {k: v for k, v in after.items() if results["train_" + k.split("_")[1]].returncode == 0}
  if results["train_rte"].returncode == 0:  # the RTE run again on a copy none of whose checkpoints restores
    work["rte_corrupt"] = root / "rte_corrupt"
    shutil.copytree(work["rte"], work["rte_corrupt"])
    for checkpoint in (work["rte_corrupt"] / "checkpoints" / "latest").iterdir():
      (checkpoint / "state" / "_METADATA").unlink()
    args = [f"--workdir={work['rte_corrupt']}" if a.startswith("--workdir=") else a for a in runs["train_rte"][1]]
    after["train_rte_corrupt"] = ("train", args, None)
  before_evaluate = len(metric_lines(work["conll"])) if "evaluate_conll" in after else 0
  results.update(scripts_together(after))
  return {
    "results": results,
    "work": work,
    "reviews": reviews,
    "bad": bad,
    "root": root,
    "conll_lines_before_evaluate": before_evaluate,
  }


def json_rows(output):
  return [json.loads(l) for l in output.splitlines() if l.startswith("{")]


# --- GLUE (RTE format) --------------------------------------------------------------------------------


def test_rte_trains_end_to_end_and_reports_accuracy(cli):
  check(cli["results"]["train_rte"])
  workdir = cli["work"]["rte"]
  dev = [l for l in metric_lines(workdir) if l["split"] == "dev"]
  assert [l["step"] for l in dev] == [3, 6]
  assert all(0 <= l["accuracy"] <= 100 and {"f1", "matthews", "loss"} <= set(l) for l in dev)
  assert "best dev accuracy" in (workdir / "summary.txt").read_text()


def test_predict_classification_from_stdin(cli):
  check(cli["results"]["train_rte"])
  rows = json_rows(check(cli["results"]["predict_rte"]))
  assert len(rows) == 2
  for row in rows:
    assert row["label"] in ("entailment", "not_entailment")
    assert set(row["scores"]) == {"entailment", "not_entailment"}
    assert row["score"] == max(row["scores"].values())
    assert sum(row["scores"].values()) == pytest.approx(1.0, abs=1e-3)


def test_no_checkpoint_that_restores_stops_the_script_with_one_line(cli):
  check(cli["results"]["train_rte"])
  result, latest = cli["results"]["train_rte_corrupt"], cli["work"]["rte_corrupt"] / "checkpoints" / "latest"
  output = result.stdout + result.stderr
  assert result.returncode == 2 and "Traceback" not in output, output[-3000:]
  assert result.stderr.endswith("\n") and result.stderr.count(f"error: no checkpoint under {latest} restores") == 1
  last = result.stderr.rstrip("\n").splitlines()[-1]
  assert (
    last.startswith(f"error: no checkpoint under {latest} restores (steps [3, 6]") and "--config.resume=false" in last
  )
  for step in (6, 3):  # each one named with its cause, on stdout
    assert f"checkpoint of step {step} in {latest / str(step)} does not restore (" in result.stdout


# --- CoNLL-2003 ---------------------------------------------------------------------------------------


def test_conll_trains_end_to_end_and_reports_entity_f1(cli):
  check(cli["results"]["train_conll"])
  workdir = cli["work"]["conll"]
  lines = metric_lines(workdir)[: cli["conll_lines_before_evaluate"]]
  dev = [l for l in lines if l["split"] == "dev"]
  test = [l for l in lines if l["split"] == "test"]  # the config scores dev and test at the end
  assert len(dev) == len(test) == 1
  for l in dev + test:
    assert {"loss", "precision", "recall", "f1"} <= set(l) and 0 <= l["f1"] <= 100
  assert (workdir / "ner_report_dev.txt").is_file() and (workdir / "ner_report_test.txt").is_file()


def test_evaluate_scores_the_test_split(cli):
  check(cli["results"]["train_conll"])
  scores = json.loads(check(cli["results"]["evaluate_conll"]).strip().splitlines()[-1])
  assert scores["split"] == "test" and 0 <= scores["f1"] <= 100 and "loss" in scores
  lines = metric_lines(cli["work"]["conll"])
  assert len(lines) == cli["conll_lines_before_evaluate"] + 1 and lines[-1]["split"] == "test"
  assert lines[-1]["f1"] == pytest.approx(scores["f1"], abs=1e-3)
  # the same parameters and the same 32 examples were scored at the end of training
  trained = [l for l in lines[:-1] if l["split"] == "test"][-1]
  assert lines[-1]["f1"] == pytest.approx(trained["f1"], abs=1e-3)


def test_predict_entities_from_stdin(cli):
  check(cli["results"]["train_conll"])
  rows = json_rows(check(cli["results"]["predict_conll"]))
  assert len(rows) == 2
  for row, words in zip(rows, (9, 2)):
    assert isinstance(row["entities"], list)
    for entity in row["entities"]:
      assert entity["type"] in ("PER", "ORG", "LOC", "MISC")
      assert 0 <= entity["start"] < entity["end"] <= words and entity["text"]


# --- a CSV with arbitrary column names, and init_from --------------------------------------------------


@pytest.fixture(scope="module")
def reviews_run(cli, tiny_bert, tfds_dir, fast_compiles):
  """configs/text_classification.py on the reviews CSV, configured on the command line alone (parsed as
  scripts/train.py parses it, run in this process)."""
  reviews, workdir = cli["reviews"], cli["root"] / "reviews"
  config = parse_config(
    "--config=configs/text_classification.py",
    f"--config.task.train_file={reviews['train']}",
    f"--config.task.dev_file={reviews['dev']}",
    "--config.task.text_fields=review",
    "--config.task.label_field=stars",
    *tiny_flags(tiny_bert, tfds_dir, method="lora", learning_rate=1e-2),
  )
  loop.train_and_evaluate(config, workdir)
  return workdir


def test_csv_with_arbitrary_columns_by_configuration_alone(reviews_run):
  run = json.loads((reviews_run / "run.json").read_text())
  assert run["task"]["kind"] == "classification" and run["task"]["label_names"] == ["1", "5"]
  dev = [l for l in metric_lines(reviews_run) if l["split"] == "dev"]
  assert [l["step"] for l in dev] == [3, 6] and all("accuracy" in l for l in dev)


def test_init_from_continues_a_finished_run_on_new_data(cli, reviews_run, tmp_path, tiny_bert, tfds_dir):
  reviews = cli["reviews"]
  # learning rate 0: the second run's parameters stay where it started, i.e. at the first run's best
  config = tiny_config(
    text_classification.get_config(),
    tiny_bert,
    tfds_dir,
    method="lora",
    learning_rate=0.0,
    init_from=str(reviews_run),
    **{
      "task.train_file": str(reviews["train2"]),
      "task.dev_file": str(reviews["dev2"]),
      "task.text_fields": "review",
      "task.label_field": "stars",
    },
  )
  loop.train_and_evaluate(config, tmp_path / "continued")
  _, exp, first, _ = experiment.restore(reviews_run)
  _, _, second, _ = experiment.restore(tmp_path / "continued")
  for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(first)[0], jax.tree.leaves(second)):
    assert np.array_equal(np.asarray(a), np.asarray(b)), jax.tree_util.keystr(path)
  fresh_head = exp.tree["head"]["classifier"]["kernel"]  # and the first run did move away from a fresh start
  assert not np.array_equal(np.asarray(fresh_head), np.asarray(first["head"]["classifier"]["kernel"]))


def test_run_json_records_versions_and_machine(reviews_run):
  environment = json.loads((reviews_run / "run.json").read_text())["environment"]
  versions = environment["versions"]
  assert versions["jax"] == jax.__version__ and versions["flax"] and versions["transformers"]
  assert {"python", "jaxlib", "optax", "orbax-checkpoint"} <= set(versions)
  assert environment["machine"] and environment["devices"].endswith("cpu") and environment["commit"]


def test_a_table_run_predicts_and_scores_new_data_without_its_training_files(cli, reviews_run, tmp_path):
  """The run folder moved where its CSVs are not: predict.py needs none (the label set is the run's);
  evaluate.py --data_dir scores a folder's dev.csv, a file given directly, and names what is missing."""
  moved = tmp_path / "moved"
  shutil.copytree(reviews_run, moved)
  config = json.loads((moved / "config.json").read_text())
  for split in ("train", "dev"):
    config["task"][f"{split}_file"] = str(tmp_path / "gone" / f"{split}.csv")
  (moved / "config.json").write_text(json.dumps(config))
  new_data = tmp_path / "new_data"
  new_data.mkdir()
  shutil.copy(cli["reviews"]["dev2"], new_data / "dev.csv")
  results = scripts_together(
    {
      "predict": ("predict", [f"--workdir={moved}"], "a gripping, funny film\nawful\n"),
      "folder": ("evaluate", [f"--workdir={moved}", "--split=dev", f"--data_dir={new_data}"], None),
      "file": ("evaluate", [f"--workdir={moved}", "--split=test", f"--data_dir={new_data / 'dev.csv'}"], None),
      "missing": ("evaluate", [f"--workdir={moved}", "--split=test", f"--data_dir={new_data}"], None),
    }
  )
  rows = json_rows(check(results["predict"]))
  assert [set(r["scores"]) for r in rows] == [{"1", "5"}] * 2
  folder, file = (json_rows(check(results[k]))[-1] for k in ("folder", "file"))
  assert folder["split"] == "dev" and file["split"] == "test"
  assert folder["accuracy"] == file["accuracy"]  # the same 32 rows, read from the folder and from the file
  assert results["missing"].returncode != 0
  assert "a table run reads split 'test' from test.csv, test.tsv or test.jsonl" in results["missing"].stderr


# --- bad input: one clear message, a non-zero exit, nothing half-written ------------------------------


def assert_nothing_prepared(tfds):
  leftovers = [p.name for p in tfds.iterdir() if p.name.startswith(".prepare-")] if tfds.is_dir() else []
  assert not leftovers
  assert not (list((tfds / "ftjax_local").glob("*/*/dataset_info.json")) if tfds.is_dir() else [])


@pytest.mark.parametrize("case", SCRIPT_BAD_INPUTS)
def test_bad_input_stops_the_script_with_one_line(cli, case):
  result = cli["results"][f"bad_{case}"]
  folder, message = cli["bad"][case]
  output = result.stdout + result.stderr
  assert result.returncode != 0, output[-3000:]
  assert message in output, output[-3000:]
  if case != "unknown_config_key":  # absl reports flag errors itself
    assert result.returncode == 2 and f"error: {message}" in result.stderr, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
  assert_nothing_prepared(folder / "tfds")


@pytest.mark.parametrize("case", sorted(set(BAD_INPUTS) - set(SCRIPT_BAD_INPUTS)))
def test_bad_input_raises_a_data_error_naming_the_place(case, tmp_path, tiny_bert, fast_compiles):
  # the same path as scripts/train.py, in this process (the script turns a DataError into `error: ...`)
  args, message = BAD_INPUTS[case]
  config = parse_config(
    *args(tmp_path), f"--config.model={tiny_bert}", f"--config.tfds_dir={tmp_path / 'tfds'}", "--config.parallel=none"
  )
  with pytest.raises(raw.DataError) as error:
    loop.train_and_evaluate(config, tmp_path / "run")
  assert message.format(d=tmp_path) in str(error.value)
  assert_nothing_prepared(tmp_path / "tfds")


def test_report_tabulates_finished_runs_with_their_commands(cli, tmp_path):
  check(cli["results"]["train_rte"])
  out = tmp_path / "tasks"
  check(script("report", f"--out={out}", str(cli["work"]["rte"])))
  rows = json.loads(out.with_suffix(".json").read_text())
  assert len(rows) == 1 and rows[0]["task"] == "glue/rte" and rows[0]["selected_on"] == "accuracy"
  best = max((l for l in metric_lines(cli["work"]["rte"]) if l["split"] == "dev"), key=lambda l: l["accuracy"])
  assert rows[0]["dev"]["accuracy"] == pytest.approx(best["accuracy"])
  assert rows[0]["command"].startswith("python ") and "--config=configs/glue.py:rte" in rows[0]["command"]
  assert "| glue/rte | lora |" in out.with_suffix(".md").read_text()

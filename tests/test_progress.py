"""What a run prints (ftjax/progress.py), on a tiny random BERT and a small cut of RTE:

- the bar counts finished steps: with a deliberately slow step it is never ahead of the steps the device
  has finished, and never more than IN_FLIGHT behind the dispatched ones;
- every evaluation prints one line whose values are the ones written to metrics.jsonl;
- evaluation time stays out of the rate and estimate; without a terminal, plain lines replace the bar;
- the next commands name only flags the scripts define.
"""

import importlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import glue
from ftjax import evaluation, loop, parallel, progress
from ftjax.models.loading import build_model
from ftjax.peft.spec import NO_PEFT, PeftSpec

from conftest import REPO, metric_lines, tiny_config

BURN = 60  # 256 × 256 matmuls each train step does on top of its work: a step of ~0.1–0.3 s on 2 cores


@pytest.fixture(scope="module", autouse=True)
def _fast(fast_compiles):
  yield


def slow_steps(monkeypatch):
  """Makes every compiled train step slow (BURN matmuls its metrics wait for; no host callback, which
  would make the dispatch synchronous); returns the list of each dispatched step's device metrics."""
  dispatched = []
  compile_train_step = parallel.Parallel.compile_train_step

  def slow(step_fn):
    def train_step(state, batch):
      state, metrics = step_fn(state, batch)
      m = jnp.full((256, 256), 1e-3) + 0 * metrics["loss_sum"]
      m = jax.lax.fori_loop(0, BURN, lambda i, m: jnp.tanh(m @ m), m)
      return state, {**metrics, "loss_sum": metrics["loss_sum"] + 0 * m[0, 0]}

    return train_step

  def compile_slow(self, make_step, shardings=None):
    compiled = compile_train_step(self, lambda axis_name: slow(make_step(axis_name)), shardings)

    def recorded(state, batch):
      state, metrics = compiled(state, batch)
      dispatched.append(metrics)
      return state, metrics

    return recorded

  monkeypatch.setattr(parallel.Parallel, "compile_train_step", compile_slow)
  return dispatched


def finished(dispatched) -> int:
  """Steps whose metrics the device has produced (steps finish in order), without waiting."""
  return next(
    (i for i, m in enumerate(dispatched) if not all(x.is_ready() for x in jax.tree.leaves(m))), len(dispatched)
  )


@pytest.mark.parametrize("mode", ["none", "pmap"])
def test_bar_follows_finished_steps_and_evaluations_print_their_metrics(
  mode, tmp_path, tiny_bert, tfds_dir, rte_dir, monkeypatch, capsys
):
  dispatched = slow_steps(monkeypatch)
  seen = []  # (bar count, dispatched, finished) after every move of the bar
  update = progress._Bar.update

  def recorded_update(self, n=1):
    result = update(self, n)
    seen.append((self.n, len(dispatched), finished(dispatched)))
    return result

  monkeypatch.setattr(progress, "is_terminal", lambda file: True)  # the bar, as on a terminal
  monkeypatch.setattr(progress._Bar, "update", recorded_update)
  # The dev accuracy is scripted (the tiny model's barely moves): best at step 8, then two evaluations
  # without improvement stop the run at step 16 of 24 and restore step 8's parameters.
  scripted = iter([50.0, 60.0, 55.0, 60.0])
  evaluate_split = evaluation.evaluate_split

  def scripted_accuracy(*args):
    values, report = evaluate_split(*args)
    return {**values, "accuracy": next(scripted)}, report

  monkeypatch.setattr(evaluation, "evaluate_split", scripted_accuracy)
  config = tiny_config(
    glue.get_config("rte"),
    tiny_bert,
    tfds_dir,
    data_dir=str(rte_dir),
    method="full",
    parallel=mode,
    max_steps=24,
    eval_every=4,
    checkpoint_every=24,
    log_every=50,  # no train-metric fetch before step 4: the window alone moves the bar
    **{"early_stopping.patience": 2},
  )
  loop.train_and_evaluate(config, tmp_path / "run")

  assert len(dispatched) == 16
  assert seen and seen[-1][0] == 16
  for count, sent, done in seen:
    assert count <= done, f"the bar shows {count} steps while the device has finished {done}"
    assert sent - count <= progress.IN_FLIGHT, f"the bar shows {count} steps while {sent} were dispatched"
  assert len([s for s in seen if s[0] < 4]) >= 2  # it moved step by step before the first fetch

  out = capsys.readouterr().out
  printed = re.findall(r"^eval dev step (\d+): (.*?)  \((.*)\)$", out, re.M)
  dev = [l for l in metric_lines(tmp_path / "run") if l["split"] == "dev"]
  assert [int(step) for step, _, _ in printed] == [l["step"] for l in dev] == [4, 8, 12, 16]
  for (_, numbers, _), line in zip(printed, dev):
    values = dict(pair.split(" ") for pair in numbers.split("  "))
    assert set(values) == set(line) - {"step", "split"}
    for key, text in values.items():
      assert float(text) == pytest.approx(line[key], abs=5e-5), key
  assert [verdict for _, _, verdict in printed] == ["best accuracy so far"] * 2 + [
    "best accuracy 60.0000 at step 8"
  ] * 2
  after = out[out.index("eval dev step 16") :]
  assert after.index("early stopping at step 16: accuracy has not improved for 2 evaluations") < after.index(
    "restored the best checkpoint (step 8, accuracy = 60.000)"
  )
  assert "next:\n  python scripts/evaluate.py --workdir=" in out


def test_estimate_leaves_out_compilation_and_evaluation_and_prints_plain_lines(monkeypatch, capsys):
  now = [0.0]
  monkeypatch.setattr(progress, "PLAIN_EVERY", 0.0)  # a line at every completion
  monkeypatch.setattr(progress, "is_terminal", lambda file: False)  # CI, nohup, a pipe
  bar = progress.TrainProgress(10, eval_every=4, in_flight=0, clock=lambda: now[0])  # evaluates at 4, 8, 10
  ready = {"loss_sum": np.zeros(())}

  def step(s, at):
    now[0] = at
    bar.dispatched(s, ready)

  step(1, 40.0)  # the first step: compilation
  step(2, 43.0)
  step(3, 46.0)
  step(4, 49.0)
  assert bar.evaluations_left() == 2  # at 8 and 10 (the one at 4 starts now: its time is unknown yet)
  with bar.paused():  # a 60-second evaluation
    now[0] = 109.0
  step(5, 112.0)
  assert bar.seconds_per_step() == pytest.approx(3.0)  # (112 − 40 − 60) / 4
  assert bar.seconds_left() == pytest.approx(5 * 3.0 + 2 * 60.0)
  bar.set_postfix(loss="0.6931")
  step(6, 115.0)
  bar.close()
  out = capsys.readouterr().out
  assert "\r" not in out
  assert out.splitlines() == [
    "train step 1/10 (10%)  elapsed 00:40  left ?  ?s/step",
    "train step 2/10 (20%)  elapsed 00:43  left 00:24  3.00s/step",
    "train step 3/10 (30%)  elapsed 00:46  left 00:21  3.00s/step",
    "train step 4/10 (40%)  elapsed 00:49  left 00:18  3.00s/step",
    "train step 5/10 (50%)  elapsed 01:52  left 02:15  3.00s/step",
    "train step 6/10 (60%)  elapsed 01:55  left 02:12  3.00s/step  loss 0.6931",
    "train step 6/10 (60%)  elapsed 01:55  left 02:12  3.00s/step  loss 0.6931",  # close()
  ]


def test_the_bar_draws_the_step_time_of_the_steps_it_counts(monkeypatch, capsys):
  now = [0.0]
  monkeypatch.setattr(progress, "is_terminal", lambda file: True)
  bar = progress.TrainProgress(10, in_flight=0, clock=lambda: now[0])
  bar.bar.mininterval, bar.bar.miniters = 0, 1  # draw at every update
  for s, at in [(1, 40.0), (2, 43.0), (3, 46.0)]:
    now[0] = at
    bar.dispatched(s, {"loss_sum": np.zeros(())})
  drawn = capsys.readouterr().err.split("\r")[-1]
  assert re.search(r"3/10 \[\S+<00:21, 3\.00s/step\]", drawn), drawn
  bar.close()


def test_evaluation_line_of_a_language_model():
  values = {"loss": 3.21, "perplexity": 24.7791}
  assert (
    progress.evaluation_line(200, "dev", values, "perplexity", True, 200, 24.7791)
    == "eval dev step 200: loss 3.2100  perplexity 24.7791  (best perplexity so far)"
  )
  assert (
    progress.evaluation_line(300, "dev", {**values, "perplexity": 25.0}, "perplexity", False, 200, 24.7791)
    == "eval dev step 300: loss 3.2100  perplexity 25.0000  (best perplexity 24.7791 at step 200)"
  )


GPT2 = dict(model_type="gpt2", vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_positions=64)
BERT = dict(model_type="bert", vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4)


@pytest.mark.parametrize(
  "config_module, model, kind, split, formats",
  [
    ("glue", build_model(BERT, peft=PeftSpec(lora_targets="query")), "classification", "train", ("hf", "peft")),
    ("glue", build_model(BERT, peft=PeftSpec(adapter="houlsby")), "classification", "train", ()),
    ("conll2003", build_model(BERT, peft=NO_PEFT), "token_classification", "train", ("hf",)),  # test: scored
    ("wikitext2", build_model(GPT2, peft=PeftSpec(lora_targets="c_attn")), "causal_lm", "test", ("hf", "peft")),
  ],
)
def test_next_commands_use_flags_the_scripts_define(tmp_path, config_module, model, kind, split, formats):
  config = importlib.import_module(f"configs.{config_module}").get_config()  # glue: RTE
  text = progress.next_commands(tmp_path / "run dir", config, model, kind)
  assert f"--split={split} " in text
  assert re.findall(r"--format=(\w+)", text) == list(formats)
  assert f"tensorboard --logdir '{tmp_path / 'run dir' / 'tensorboard'}'" in text
  for script, flags in re.findall(r"python scripts/(\w+)\.py (.*?)   #", text):
    source = (REPO / "scripts" / f"{script}.py").read_text()
    for flag in re.findall(r"--(\w+)=", flags):
      assert re.search(rf'flags\.DEFINE_\w+\(\s*"{flag}"', source), f"scripts/{script}.py has no --{flag}"

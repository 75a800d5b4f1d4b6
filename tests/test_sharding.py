"""Parameters sharded by rules (ftjax/sharding.py): the mesh and rule language, every default rule set on
every architecture and method, the errors before any compile, and, on 8 simulated CPU devices
(tests/shard_check.py in a subprocess: the device count is fixed at jax import), sharded training equal
to one device with 1/(fsdp × tensor) of the parameter and optimiser bytes on each device, and a
checkpoint saved with fsdp=8 restored onto data=4,fsdp=2.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from ftjax import parallel, sharding, trainability
from ftjax.errors import InputError
from ftjax.models import build_model
from ftjax.peft.spec import NO_PEFT, PeftSpec
from ftjax.tasks import make_task

HERE = Path(__file__).parent
TINY = {
  "bert": dict(
    model_type="bert",
    vocab_size=96,
    hidden_size=32,
    num_hidden_layers=1,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=64,
  ),
  "gpt2": dict(model_type="gpt2", vocab_size=96, n_embd=32, n_layer=1, n_head=4, n_positions=64),
  "llama": dict(
    model_type="llama",
    vocab_size=96,
    hidden_size=32,
    num_hidden_layers=1,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=64,
    max_position_embeddings=64,
  ),
  "roberta": dict(
    model_type="roberta",
    vocab_size=96,
    hidden_size=32,
    num_hidden_layers=1,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=66,
    pad_token_id=1,
  ),
  "electra": dict(
    model_type="electra",
    vocab_size=96,
    embedding_size=16,
    hidden_size=32,
    num_hidden_layers=1,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=64,
  ),
  "distilbert": dict(model_type="distilbert", vocab_size=96, dim=32, n_layers=1, n_heads=4, hidden_dim=64),
  "deberta-v2": dict(
    model_type="deberta-v2",
    vocab_size=96,
    hidden_size=32,
    num_hidden_layers=1,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=64,
    relative_attention=True,
    pos_att_type=["c2p", "p2c"],
    position_biased_input=False,
    position_buckets=8,
    norm_rel_ebd="layer_norm",
    share_att_key=True,
  ),
  "qwen3": dict(
    model_type="qwen3",
    vocab_size=96,
    hidden_size=32,
    num_hidden_layers=1,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=8,
    intermediate_size=64,
    max_position_embeddings=64,
  ),
  "gemma3_text": dict(
    model_type="gemma3_text",
    vocab_size=96,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=8,
    intermediate_size=64,
    max_position_embeddings=64,
  ),
}
METHODS = {
  "full": NO_PEFT,
  "lora": PeftSpec(lora_targets=".*", lora_rank=4),
  "dora": PeftSpec(lora_targets=".*", lora_rank=4, lora_dora=True),
  "adapter": PeftSpec(adapter="houlsby", adapter_size=8),
  "prompt": PeftSpec(prompt_length=4),
  "prefix": PeftSpec(prefix_length=4),
}
MESH = {"data": 1, "fsdp": 8, "tensor": 2}


def abstract_tree(arch, peft, kind="classification"):
  """(model, shapes of {"backbone", method collections, "head"}) without allocating anything."""
  model = build_model(TINY[arch], peft=peft)
  # DeBERTa has no pooler: its sequence heads read [CLS]
  task = make_task(
    kind if not model.is_decoder else "causal_lm", 2, pooling="cls" if arch == "deberta-v2" else "pooler"
  )

  def init():
    ids = jnp.ones((2, 8), jnp.int32)
    variables = model.init(jax.random.key(0), ids)
    tree = {"backbone": variables["params"], **{k: v for k, v in variables.items() if k != "params"}}
    if task.head is not None:
      tree["head"] = task.head.init(jax.random.key(1), model.apply(variables, ids), jnp.ones((2, 8)))["params"]
    return tree

  return model, jax.eval_shape(init)


@pytest.mark.parametrize("arch", sorted(TINY))
@pytest.mark.parametrize("method", sorted(METHODS))
def test_default_rules_decide_every_parameter(arch, method):
  if arch == "deberta-v2" and method in ("prompt", "prefix"):
    pytest.skip("DeBERTa refuses soft prompts and prefixes (tests/test_encoders.py)")
  model, tree = abstract_tree(arch, METHODS[method])
  specs = sharding.param_specs(tree, sharding.rules_for(model), MESH)
  assert set(specs) == set(trainability.flatten(tree))
  # the big matrices are split, over fsdp at least; vectors are whole
  for path, leaf in trainability.flatten(tree).items():
    if leaf.ndim == 2 and path.startswith("backbone/") and min(leaf.shape) >= 32:
      assert "fsdp" in specs[path], (path, specs[path])
    if leaf.ndim == 1:
      assert specs[path] == P(), path


def test_column_row_and_vocabulary_parallel_llama():
  model, tree = abstract_tree("llama", NO_PEFT)
  specs = sharding.param_specs(tree, sharding.rules_for(model), MESH)
  assert specs["backbone/layers_0/self_attn/q_proj/kernel"] == P("fsdp", "tensor")
  assert specs["backbone/layers_0/self_attn/k_proj/kernel"] == P("fsdp", "tensor")
  assert specs["backbone/layers_0/mlp/down_proj/kernel"] == P("tensor", "fsdp")
  assert specs["backbone/embed_tokens/embedding"] == P("tensor", "fsdp")
  # what trains under LoRA is split over fsdp and tensor together
  model, tree = abstract_tree("llama", METHODS["lora"])
  specs = sharding.param_specs(tree, sharding.rules_for(model), MESH)
  assert specs["lora/layers_0/self_attn/q_proj/a"] == P(("fsdp", "tensor"), None)
  assert specs["lora/layers_0/self_attn/q_proj/b"] == P(None, ("fsdp", "tensor"))


def test_config_rules_come_first():
  model, tree = abstract_tree("bert", NO_PEFT)
  rules = sharding.rules_for(model, (r"query/kernel$:-,fsdp", ".*:"))
  specs = sharding.param_specs(tree, rules, MESH)
  assert specs["backbone/encoder/layer_0/attention/self/query/kernel"] == P(None, "fsdp")
  assert specs["backbone/encoder/layer_0/attention/self/key/kernel"] == P()  # ".*:" replicates the rest


def test_optimiser_state_is_laid_out_as_its_parameter():
  params = {"backbone": {"w": jnp.zeros((16, 8)), "b": jnp.zeros((8,))}}
  specs = {"backbone/w": P("fsdp", None), "backbone/b": P()}
  shapes = {"backbone/w": (16, 8), "backbone/b": (8,)}
  opt_state = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3)).init(params)
  laid = sharding.opt_state_specs(opt_state, specs, shapes)
  adam = laid[1][0]
  assert adam.mu["backbone"]["w"] == P("fsdp", None) and adam.nu["backbone"]["w"] == P("fsdp", None)
  assert adam.count == P()


def test_mesh_sizes():
  assert sharding.parse_mesh("data=-1,fsdp=4", 8) == {"data": 2, "fsdp": 4, "tensor": 1}
  assert sharding.parse_mesh("fsdp=4,tensor=2", 8) == {"data": 1, "fsdp": 4, "tensor": 2}
  assert sharding.parse_mesh("data=-1", 1) == {"data": 1, "fsdp": 1, "tensor": 1}


@pytest.mark.parametrize(
  "text, message",
  [
    ("data=2,fsdp=2", "config key mesh: the sizes of 'data=2,fsdp=2' multiply to 4, but there are 8 devices"),
    ("fsdp=3,data=-1", "does not divide the 8 devices"),
    ("model=8", "config key mesh: 'model=8' must read <axis>=<size> with axis one of"),
    ("data=-1,fsdp=-1", "only one axis may be -1"),
    ("fsdp=x", "is not an integer"),
  ],
)
def test_bad_mesh_is_one_line_naming_the_key(text, message):
  with pytest.raises(sharding.ShardingError, match=message.replace("(", r"\(").replace(")", r"\)")) as e:
    sharding.parse_mesh(text, 8)
  assert "\n" not in str(e.value)


def test_bad_rules_name_the_rule_parameter_and_shape():
  model, tree = abstract_tree("bert", NO_PEFT)
  rules = sharding.rules_for(model)
  with pytest.raises(sharding.ShardingError, match=r"unknown mesh axis 'model'"):
    sharding.parse_rules(["query/kernel$:fsdp,model"])
  with pytest.raises(sharding.ShardingError, match=r"splits two dimensions over the same axis"):
    sharding.parse_rules(["query/kernel$:fsdp,fsdp"])
  with pytest.raises(
    sharding.ShardingError, match=r"config key sharding: rule 'nothing/here:fsdp' matches no parameter"
  ):
    sharding.param_specs(tree, ("nothing/here:fsdp",) + rules, MESH, checked=("nothing/here:fsdp",))
  with pytest.raises(sharding.ShardingError, match=r"match no sharding rule, e.g. \['head/classifier/bias \(2,\)'"):
    sharding.param_specs(tree, [r for r in rules if not r.startswith("^head/.*/bias")], MESH)
  # 96 vocabulary rows split over tensor=5: the error names the parameter, its shape and the rule
  with pytest.raises(
    sharding.ShardingError,
    match=r"parameter backbone/embeddings/word_embeddings/embedding of shape \(96, 32\): dimension 0 \(96\) "
    r"is not divisible by mesh axis tensor=5 \(rule '\^backbone/embeddings/word_embeddings/embedding\$:tensor,fsdp'\)",
  ):
    sharding.param_specs(tree, rules, {"data": 1, "fsdp": 1, "tensor": 5})
  with pytest.raises(sharding.ShardingError, match=r"gives 1 dimensions for parameter backbone/pooler/kernel of shape"):
    sharding.param_specs(tree, ("pooler/kernel$:fsdp",) + rules, MESH)


def test_single_device_mesh_keeps_the_step():
  """On one device the default layout compiles to the same program as the replicated state did."""
  import tiny_run as tiny
  from ftjax import step

  model, task, tx, state = tiny.tiny_run(method="full")
  par = parallel.make_parallel("mesh")
  shardings = par.state_shardings(state, sharding.rules_for(model))
  make = lambda axis_name: step.make_train_step(  # noqa: E731
    model, task, tx, adversarial_config=tiny.adversarial_config(), axis_name=axis_name
  )
  batch = par.put_batch(tiny.random_batch(0))
  texts = []
  for s in (None, shardings):
    placed = par.put_state(tiny.host(state), s)
    texts.append(par.compile_train_step(make, s).lower(placed, batch).compile().as_text())
  assert texts[0] == texts[1]


@pytest.mark.parametrize(
  "env, message",
  [
    ({"FTJAX_COORDINATOR": "127.0.0.1:1234"}, "environment variable FTJAX_NUM_PROCESSES is not set"),
    (
      {"FTJAX_COORDINATOR": "127.0.0.1:1234", "FTJAX_NUM_PROCESSES": "2", "FTJAX_PROCESS_ID": "2"},
      r"FTJAX_PROCESS_ID=2 is outside \[0, FTJAX_NUM_PROCESSES=2\)",
    ),
    (
      {"FTJAX_COORDINATOR": "localhost", "FTJAX_NUM_PROCESSES": "2", "FTJAX_PROCESS_ID": "0"},
      "FTJAX_COORDINATOR='localhost' must read host:port",
    ),
  ],
)
def test_half_configured_distributed_is_one_line(env, message):
  with pytest.raises(InputError, match=message):
    parallel.initialize_distributed(False, env)


def test_distributed_off_without_request_or_environment():
  assert parallel.initialize_distributed(False, {}) is False


def run_check(which: str, timeout: int):
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
  done = subprocess.run(
    [sys.executable, str(HERE / "shard_check.py"), which], env=env, capture_output=True, text=True, timeout=timeout
  )
  assert done.returncode == 0, done.stderr[-4000:]
  print("\n".join(l for l in done.stderr.splitlines() if " max bytes per device " in l))
  return json.loads(next(l for l in done.stdout.splitlines() if l.startswith("REPORT "))[len("REPORT ") :])


def assert_matches_single_device(run):
  assert run["moved"] > 1e-5  # the parameters moved
  for mesh in ("fsdp=8", "fsdp=4,tensor=2", "data=2,fsdp=4"):
    r = run[mesh]
    assert r["loss_diff"] < 1e-5 and r["param_diff"] < 1e-5 and r["frozen_diff"] == 0.0, (mesh, r)
    # parameters and optimiser state: 1/8 on fsdp=8 and fsdp=4,tensor=2; data=2 replicates, so 1/4 there
    assert r["fraction"] <= 1.05 / r["model_shards"], (mesh, r)


@pytest.fixture(scope="module")
def llama_report():
  return run_check("llama", 600)


def test_small_llama_sharded_equals_one_device(llama_report):
  assert llama_report["devices"] == 8
  assert_matches_single_device(llama_report["full"])


def test_checkpoint_restores_onto_another_mesh(llama_report):
  assert llama_report["checkpoint"] == {
    "identical": True,
    "restored_spec": "P('fsdp', None)",  # up_proj's "fsdp,tensor" with tensor=1
    "restored_mesh": {"data": 4, "fsdp": 2, "tensor": 1},
    "loop_state": {"note": "fsdp=8"},
  }


def test_plan_matches_what_the_devices_hold(llama_report):
  """memory.plan of the small Llama on fsdp=8: parameter and optimiser bytes within 5% of what each device
  holds, the total within 25% of the compiled step's memory analysis (arguments + outputs - aliased + temporaries)."""
  r = llama_report["plan"]
  assert abs(r["planned_state"] - r["held_state"]) <= 0.05 * r["held_state"], r
  assert abs(r["planned_total"] - r["compiled_total"]) <= 0.25 * r["compiled_total"], r


@pytest.mark.slow
def test_minilm_lora_fgm_and_full_sharded_equal_one_device():
  report = run_check("minilm", 900)
  assert_matches_single_device(report["lora_fgm"])
  assert_matches_single_device(report["full"])


def test_train_script_stops_on_a_bad_layout_in_one_line(tmp_path, tiny_bert, tfds_dir, rte_dir):
  """Before any compilation: exit status 2 and one line naming the key."""
  from conftest import scripts_together, tiny_flags

  flags = tiny_flags(tiny_bert, tfds_dir, data_dir=rte_dir, parallel="mesh")
  runs = {
    "mesh": ["--config.mesh=data=2,fsdp=2"],
    "rule": ["--config.sharding=('nothing/matches/this:fsdp',)"],
  }
  done = scripts_together(
    {
      name: ("train", ["--config=configs/glue.py:rte", f"--workdir={tmp_path / name}", *flags, *extra], None)
      for name, extra in runs.items()
    }
  )
  expected = {
    "mesh": "error: config key mesh: the sizes of 'data=2,fsdp=2' multiply to 4, but there are 1 devices",
    "rule": "error: config key sharding: rule 'nothing/matches/this:fsdp' matches no parameter",
  }
  for name, line in expected.items():
    assert done[name].returncode == 2, done[name].stderr[-2000:]
    assert line in done[name].stderr and "Traceback" not in done[name].stderr
    assert not (tmp_path / name / "checkpoints" / "latest").exists() or not any(
      (tmp_path / name / "checkpoints" / "latest").iterdir()
    )


def test_param_dtype_bfloat16_stores_frozen_weights_in_half():
  import tiny_run as tiny
  from ftjax import experiment, step

  model, task, tx, state = tiny.tiny_run(peft=PeftSpec(lora_targets="query|value", lora_rank=4), method="lora")
  frozen = experiment.frozen_weights(state.frozen, "bfloat16")
  assert {x.dtype for x in jax.tree.leaves(frozen)} == {jnp.dtype(jnp.bfloat16)}
  train_step = jax.jit(step.make_train_step(model, task, tx, adversarial_config=tiny.adversarial_config()))
  new, metrics = train_step(state.replace(frozen=frozen), tiny.random_batch(0))
  assert {x.dtype for x in jax.tree.leaves(new.trainable)} == {jnp.dtype(jnp.float32)}  # what trains stays float32
  assert {x.dtype for x in jax.tree.leaves(new.frozen)} == {jnp.dtype(jnp.bfloat16)}
  assert np.isfinite(float(metrics["loss_sum"]))
  with pytest.raises(InputError, match="config key param_dtype: 'float16' is not one of"):
    experiment.frozen_weights(state.frozen, "float16")

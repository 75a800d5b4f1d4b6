"""Export to transformers / PEFT and import of PEFT adapters: logits must match the torch reference.

MiniLM (the real packaged checkpoint) for sequence classification; tiny random BERT and GPT-2 written
by transformers' `save_pretrained` for the other tasks. LoRA B (and DoRA's magnitude) are set randomly:
at initialisation B = 0 and any export would trivially match.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from ftjax import export
from ftjax.models import from_pretrained, resolve
from ftjax.peft.spec import PeftSpec
from ftjax.tasks import heads

QV = PeftSpec(lora_targets=r"attention/self/(query|value)$", lora_rank=8, lora_alpha=16)


def randomize(tree, key, scale=0.05):
  """Every leaf + noise (LoRA B ≠ 0, DoRA magnitude ≠ ‖W‖)."""
  leaves, treedef = jax.tree.flatten(tree)
  keys = jax.random.split(key, len(leaves))
  return treedef.unflatten([x + scale * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])


def make_run(path, spec, head, seed=0, length=8):
  """(model, tree, head module, ids, mask): backbone + random LoRA + random head, ftjax's parts."""
  model, backbone = from_pretrained(path, peft=spec)
  rng = np.random.default_rng(seed)
  vocab = model.config.vocab_size
  ids = jnp.asarray(rng.integers(1, min(vocab, 1000), (2, length)), jnp.int32)
  mask = jnp.ones_like(ids).at[1, length - 3 :].set(0)  # right padding in the second row
  tree = {"backbone": backbone}
  key = jax.random.key(seed)
  if spec.lora_targets:
    _, variables = model.apply({"params": backbone}, ids, mutable=["lora"], rngs={"params": key})
    tree["lora"] = randomize(variables["lora"], jax.random.fold_in(key, 1))
  if head is not None:
    outputs = model.apply(
      {"params": backbone, **({"lora": tree["lora"]} if "lora" in tree else {})}, ids, attention_mask=mask
    )
    tree["head"] = randomize(
      head.init(jax.random.fold_in(key, 2), outputs, mask)["params"], jax.random.fold_in(key, 3), 0.1
    )
  return model, tree, head, ids, mask


def ftjax_outputs(model, tree, head, ids, mask, lora=None):
  variables = {"params": tree["backbone"]}
  if (lora if lora is not None else tree.get("lora")) is not None:
    variables["lora"] = lora if lora is not None else tree["lora"]
  outputs = model.apply(variables, ids, attention_mask=mask)
  if head is None:
    return outputs.logits
  return head.apply({"params": tree["head"]}, outputs, mask)


def torch_inputs(ids, mask):
  return dict(
    input_ids=torch.tensor(np.asarray(ids), dtype=torch.long),
    attention_mask=torch.tensor(np.asarray(mask), dtype=torch.long),
  )


def assert_close(ours, theirs, rows=None):
  ours, theirs = np.asarray(ours), theirs.detach().numpy()
  if rows is not None:  # per-token outputs: compare real tokens only
    ours, theirs = ours[rows], theirs[rows]
  np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)


@pytest.fixture(scope="module")
def minilm():
  return make_run("minilm", QV, heads.SequenceClassificationHead(3))


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
  folder = tmp_path_factory.mktemp("tiny_bert")
  config = transformers.BertConfig(
    vocab_size=120,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=32,
  )
  torch.manual_seed(0)
  transformers.BertModel(config).save_pretrained(folder)
  return folder


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory):
  folder = tmp_path_factory.mktemp("tiny_gpt2")
  config = transformers.GPT2Config(
    vocab_size=120, n_positions=32, n_embd=32, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0
  )
  torch.manual_seed(0)
  transformers.GPT2LMHeadModel(config).save_pretrained(folder)
  return folder


def test_hf_export_minilm_sequence_classification(minilm, tmp_path):
  model, tree, head, ids, mask = minilm
  export.export_hf(
    tmp_path,
    model=model,
    tree=tree,
    task="sequence_classification",
    id2label={0: "neg", 1: "neu", 2: "pos"},
    source_folder=resolve("minilm"),
  )
  config = json.loads((tmp_path / "config.json").read_text())
  assert config["architectures"] == ["BertForSequenceClassification"]
  assert config["label2id"] == {"neg": 0, "neu": 1, "pos": 2} and "problem_type" not in config
  assert (tmp_path / "vocab.txt").is_file() and (tmp_path / "tokenizer.json").is_file()
  reference = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
  assert reference.config.num_labels == 3
  with torch.no_grad():
    assert_close(ftjax_outputs(*minilm), reference(**torch_inputs(ids, mask)).logits)
  # Not trivially true: the LoRA update moves the logits well beyond the tolerance.
  no_update = jax.tree_util.tree_map_with_path(lambda path, x: x * (path[-1].key != "b"), tree["lora"])
  assert np.abs(ftjax_outputs(*minilm) - ftjax_outputs(*minilm, lora=no_update)).max() > 1e-2


def test_hf_export_token_classification(tiny_bert, tmp_path):
  model, tree, head, ids, mask = run = make_run(
    tiny_bert, PeftSpec(lora_targets="dense$", lora_rank=4), heads.TokenClassificationHead(5)
  )
  export.export_hf(tmp_path, model=model, tree=tree, task="token_classification", source_folder=tiny_bert)
  reference = transformers.AutoModelForTokenClassification.from_pretrained(tmp_path).eval()
  assert reference.config.num_labels == 5
  with torch.no_grad():
    assert_close(ftjax_outputs(*run), reference(**torch_inputs(ids, mask)).logits, rows=np.asarray(mask) > 0)


def test_hf_export_dora_regression(tiny_bert, tmp_path):
  spec = PeftSpec(lora_targets="attention", lora_rank=4, lora_alpha=8, lora_dora=True, lora_rslora=True)
  model, tree, head, ids, mask = run = make_run(tiny_bert, spec, heads.SequenceClassificationHead(1))
  assert "magnitude" in tree["lora"]["encoder"]["layer_0"]["attention"]["self"]["query"]
  export.export_hf(tmp_path, model=model, tree=tree, task="sequence_classification", source_folder=tiny_bert)
  assert json.loads((tmp_path / "config.json").read_text())["problem_type"] == "regression"
  reference = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
  with torch.no_grad():
    assert_close(ftjax_outputs(*run), reference(**torch_inputs(ids, mask)).logits)


def test_hf_export_causal_lm(tiny_gpt2, tmp_path):
  model, tree, head, ids, mask = run = make_run(
    tiny_gpt2, PeftSpec(lora_targets="c_attn|mlp/c_proj", lora_rank=4), None
  )
  export.export_hf(tmp_path, model=model, tree=tree, task="causal_lm", source_folder=tiny_gpt2)
  reference = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
  assert type(reference).__name__ == "GPT2LMHeadModel"
  with torch.no_grad():
    assert_close(ftjax_outputs(*run), reference(**torch_inputs(ids, mask)).logits, rows=np.asarray(mask) > 0)


def test_hf_export_gpt2_sequence_classification(tiny_gpt2, tmp_path):
  model, tree, head, ids, mask = make_run(
    tiny_gpt2, PeftSpec(lora_targets="c_attn", lora_rank=4), heads.SequenceClassificationHead(2)
  )
  ids = ids.at[1, -3:].set(0)  # GPT2ForSequenceClassification finds the last token by pad_token_id (= eos = 0)
  export.export_hf(tmp_path, model=model, tree=tree, task="sequence_classification", source_folder=tiny_gpt2)
  reference = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
  assert reference.config.pad_token_id == 0
  with torch.no_grad():
    assert_close(ftjax_outputs(model, tree, head, ids, mask), reference(**torch_inputs(ids, mask)).logits)


def test_hf_export_rejects_adapters(tiny_bert, tmp_path):
  model, tree, *_ = make_run(tiny_bert, PeftSpec(adapter="houlsby", adapter_size=4), None)
  tree["adapter"] = {"encoder": {}}
  with pytest.raises(ValueError, match=r"no vanilla-transformers form.*format=\"peft\""):
    export.export_hf(tmp_path, model=model, tree=tree, task="encoder", source_folder=tiny_bert)
  with pytest.raises(ValueError, match="LoRA adapters only"):
    export.export_peft(tmp_path, model=model, tree=tree, task="encoder", base_model=str(tiny_bert))
  assert not (tmp_path / "model.safetensors").exists()


@pytest.fixture(scope="module")
def minilm_peft(minilm, tmp_path_factory):
  model, tree, *_ = minilm
  out = tmp_path_factory.mktemp("minilm_peft")
  export.export_peft(out, model=model, tree=tree, task="sequence_classification", base_model=str(resolve("minilm")))
  return out


def test_peft_export_minilm(minilm, minilm_peft):
  model, tree, head, ids, mask = minilm
  config = json.loads((minilm_peft / "adapter_config.json").read_text())
  assert config["target_modules"] == ["query", "value"] and config["modules_to_save"] == ["classifier"]
  assert (minilm_peft / "adapter_model.safetensors").stat().st_size < 1_000_000  # ~0.3 MB vs 90 MB backbone
  base = transformers.AutoModelForSequenceClassification.from_pretrained(resolve("minilm"), num_labels=3)
  reference = peft.PeftModel.from_pretrained(base, minilm_peft).eval()
  with torch.no_grad():
    assert_close(ftjax_outputs(*minilm), reference(**torch_inputs(ids, mask)).logits)


def test_peft_round_trip(minilm, minilm_peft):
  model, tree, *_ = minilm
  spec, lora_tree, head_tree = export.import_peft_adapter(minilm_peft, model)
  assert (spec.lora_rank, spec.lora_alpha, spec.lora_dora) == (8, 16.0, False)
  assert jax.tree.structure(lora_tree) == jax.tree.structure(tree["lora"])
  assert jax.tree.structure(head_tree) == jax.tree.structure(tree["head"])
  for ours, back in zip(jax.tree.leaves((tree["lora"], tree["head"])), jax.tree.leaves((lora_tree, head_tree))):
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(back))
  # The regex selects exactly the layers that were adapted.
  assert spec.lora_applies_to(("encoder", "layer_3", "attention", "self", "value"))
  assert not spec.lora_applies_to(("encoder", "layer_3", "attention", "self", "key"))


def test_peft_round_trip_gpt2_dora(tiny_gpt2, tmp_path):
  spec = PeftSpec(lora_targets="h_1/attn/c_proj|c_fc", lora_rank=2, lora_alpha=4, lora_dora=True)
  model, tree, head, ids, mask = run = make_run(tiny_gpt2, spec, None)
  export.export_peft(tmp_path, model=model, tree=tree, task="causal_lm", base_model=str(tiny_gpt2))
  config = json.loads((tmp_path / "adapter_config.json").read_text())
  assert config["target_modules"] == ["c_fc", "h.1.attn.c_proj"] and config["fan_in_fan_out"]
  imported, lora_tree, head_tree = export.import_peft_adapter(tmp_path, model)
  assert head_tree is None and imported.lora_dora
  for ours, back in zip(jax.tree.leaves(tree["lora"]), jax.tree.leaves(lora_tree)):
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(back))
  reference = peft.PeftModel.from_pretrained(transformers.AutoModelForCausalLM.from_pretrained(tiny_gpt2), tmp_path)
  with torch.no_grad():
    assert_close(ftjax_outputs(*run), reference.eval()(**torch_inputs(ids, mask)).logits, rows=np.asarray(mask) > 0)


def test_import_adapter_written_by_peft(tmp_path):
  folder = resolve("minilm")
  torch.manual_seed(0)
  base = transformers.AutoModelForSequenceClassification.from_pretrained(folder, num_labels=2)
  config = peft.LoraConfig(
    task_type="SEQ_CLS", r=4, lora_alpha=8, target_modules=["key", "attention.output.dense"], init_lora_weights=False
  )  # random B: a non-trivial adapter
  reference = peft.get_peft_model(base, config)
  reference.save_pretrained(tmp_path)
  model, backbone = from_pretrained(folder)
  spec, lora_tree, head_tree = export.import_peft_adapter(tmp_path, model)
  assert spec.lora_applies_to(("encoder", "layer_0", "attention", "output", "dense"))
  assert not spec.lora_applies_to(("encoder", "layer_0", "output", "dense"))
  model, _ = from_pretrained(folder, peft=spec)
  ids = jnp.asarray(np.random.default_rng(1).integers(1, 1000, (2, 8)), jnp.int32)
  mask = jnp.ones_like(ids).at[0, 6:].set(0)
  tree = {"backbone": backbone, "head": head_tree, "lora": lora_tree}
  with torch.no_grad():
    assert_close(
      ftjax_outputs(model, tree, heads.SequenceClassificationHead(2), ids, mask),
      reference.eval()(**torch_inputs(ids, mask)).logits,
    )


def test_import_names_the_bad_tensor(minilm, minilm_peft, tmp_path):
  from safetensors.numpy import load_file, save_file

  tensors = load_file(str(minilm_peft / "adapter_model.safetensors"))
  name = "base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.weight"
  tensors[name] = tensors[name][:, :10]
  save_file(tensors, str(tmp_path / "adapter_model.safetensors"))
  (tmp_path / "adapter_config.json").write_text((minilm_peft / "adapter_config.json").read_text())
  with pytest.raises(ValueError, match=r"adapter_model\.safetensors.*layer\.0\.attention\.self\.query.*shape"):
    export.import_peft_adapter(tmp_path, minilm[0])

"""PEFT adapters across frameworks on RoBERTa: an ftjax LoRA run exported to PEFT and loaded by `peft`,
and an adapter trained with `peft` in PyTorch imported through config key init_from_peft. Logits of the
two frameworks must agree within 1e-4. The tiny random RoBERTa uses MiniLM's WordPiece files as its
tokenizer (pad id 0, so transformers' pad-derived positions equal ours)."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from conftest import parse_config, script, tiny_config, tiny_flags  # noqa: E402
from ftjax import experiment, export, models, trainability  # noqa: E402
from ftjax.peft.spec import PeftSpec  # noqa: E402
from ftjax.tasks import heads  # noqa: E402

TOL = 1e-4


@pytest.fixture(scope="module")
def tiny_roberta(tmp_path_factory):
  folder = tmp_path_factory.mktemp("tiny_roberta")
  config = transformers.RobertaConfig(
    vocab_size=30522,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    max_position_embeddings=130,
    type_vocab_size=1,
    pad_token_id=0,
  )
  torch.manual_seed(0)
  transformers.RobertaModel(config).save_pretrained(folder)  # with a pooler: it becomes classifier.dense
  minilm = models.resolve("minilm")
  for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
    if (minilm / name).is_file():
      shutil.copy(minilm / name, folder / name)
  return folder


def batch(seed=0):
  rng = np.random.default_rng(seed)
  ids = rng.integers(1000, 5000, (3, 10))
  mask = (np.arange(10)[None] < np.array([[10], [6], [3]])).astype(np.int64)
  return ids * mask, mask


def report(what, theirs, ours) -> float:
  """max |Δ logits|, printed (pytest -s) for the record."""
  diff = float(np.abs(np.asarray(theirs) - np.asarray(ours)).max())
  print(f"\n{what}: max |Δ logits| = {diff:.1e}")
  return diff


def torch_logits(model, ids, mask):
  with torch.no_grad():
    return model.eval()(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()


def ftjax_logits(model, tree, head, ids, mask):
  variables = {"params": tree["backbone"], **({"lora": tree["lora"]} if tree.get("lora") else {})}
  outputs = model.apply(variables, jnp.asarray(ids), attention_mask=jnp.asarray(mask))
  return np.asarray(head.apply({"params": tree["head"]}, outputs, jnp.asarray(mask)))


def test_ftjax_lora_on_roberta_exports_to_peft_and_transformers(tiny_roberta, tmp_path):
  spec = PeftSpec(lora_targets=r"attention/self/(query|value)$|output/dense$", lora_rank=4, lora_alpha=8)
  model, backbone = models.from_pretrained(tiny_roberta, peft=spec)
  ids, mask = batch()
  key = jax.random.key(0)
  _, variables = model.apply({"params": backbone}, jnp.asarray(ids), mutable=["lora"], rngs={"params": key})
  noisy = lambda tree, k: jax.tree.map(lambda x: x + 0.1 * jax.random.normal(k, x.shape), tree)  # B ≠ 0
  head = heads.SequenceClassificationHead(3)
  outputs = model.apply({"params": backbone, **variables}, jnp.asarray(ids), attention_mask=jnp.asarray(mask))
  tree = {
    "backbone": backbone,
    "lora": noisy(variables["lora"], jax.random.fold_in(key, 1)),
    "head": noisy(head.init(key, outputs, jnp.asarray(mask))["params"], jax.random.fold_in(key, 2)),
  }
  ours = ftjax_logits(model, tree, head, ids, mask)

  peft_dir = export.export_peft(
    tmp_path / "peft", model=model, tree=tree, task="sequence_classification", base_model=str(tiny_roberta)
  )
  config = json.loads((peft_dir / "adapter_config.json").read_text())
  assert config["modules_to_save"] == ["classifier"]
  base = transformers.AutoModelForSequenceClassification.from_pretrained(tiny_roberta, num_labels=3)
  loaded = peft.PeftModel.from_pretrained(base, peft_dir)
  assert report("ftjax LoRA on RoBERTa → PEFT, loaded by peft", torch_logits(loaded, ids, mask), ours) < TOL

  hf_dir = export.export_hf(
    tmp_path / "hf", model=model, tree=tree, task="sequence_classification", source_folder=tiny_roberta
  )
  merged = transformers.AutoModelForSequenceClassification.from_pretrained(hf_dir)
  assert type(merged).__name__ == "RobertaForSequenceClassification"
  assert report("ftjax LoRA on RoBERTa → merged transformers checkpoint", torch_logits(merged, ids, mask), ours) < TOL


@pytest.fixture(scope="module")
def torch_adapter(tiny_roberta, tmp_path_factory):
  """A LoRA adapter and head trained 3 steps with peft in PyTorch; (folder, the trained PeftModel)."""
  torch.manual_seed(0)
  base = transformers.AutoModelForSequenceClassification.from_pretrained(tiny_roberta, num_labels=2)
  lora = peft.LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["query", "value"])
  model = peft.get_peft_model(base, lora).train()
  optimiser = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
  ids, mask = batch(1)
  for _ in range(3):
    loss = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), labels=torch.tensor([0, 1, 1])).loss
    loss.backward()
    optimiser.step()
    optimiser.zero_grad()
  folder = tmp_path_factory.mktemp("torch_adapter")
  model.save_pretrained(folder)
  return folder, model


def test_init_from_peft_imports_an_adapter_trained_in_pytorch(tiny_roberta, torch_adapter, rte_dir, tfds_dir):
  folder, reference = torch_adapter
  config = tiny_config(parse_config("--config=configs/glue.py:rte"), tiny_roberta, tfds_dir, data_dir=str(rte_dir))
  config.method, config.init_from_peft = "lora", str(folder)
  exp = experiment.build(config)
  assert exp.model.peft.lora_rank == 4 and exp.model.peft.lora_applies_to(
    ("encoder", "layer_1", "attention", "self", "value")
  )
  assert exp.rules[0] == "train:^backbone/pooler/"  # classifier.dense: trained in PEFT, so here too
  ids, mask = batch(2)
  theirs = torch_logits(reference, ids, mask)
  ours = ftjax_logits(exp.model, exp.tree, exp.task.head, ids, mask)
  assert report("peft adapter trained 3 steps in PyTorch → init_from_peft", theirs, ours) < TOL
  untrained = torch_logits(
    transformers.AutoModelForSequenceClassification.from_pretrained(tiny_roberta, num_labels=2), ids, mask
  )
  assert np.abs(untrained - theirs).max() > 1e-2  # the imported adapter and head matter


def test_init_from_peft_refusals(tiny_roberta, torch_adapter, rte_dir, stsb_dir, tfds_dir):
  folder, _ = torch_adapter
  config = tiny_config(parse_config("--config=configs/glue.py:rte"), tiny_roberta, tfds_dir, data_dir=str(rte_dir))
  config.init_from_peft = str(folder)
  with pytest.raises(experiment.InputError, match="init_from_peft.*method='lora', not 'full'"):
    experiment.build(config)
  config.method, config.init_from_peft = "lora", str(rte_dir)
  with pytest.raises(experiment.InputError, match="init_from_peft.*adapter_config.json is missing"):
    experiment.build(config)
  config = tiny_config(parse_config("--config=configs/glue.py:stsb"), tiny_roberta, tfds_dir, data_dir=str(stsb_dir))
  config.method, config.init_from_peft = "lora", str(folder)
  with pytest.raises(experiment.InputError, match=r"head in .*\(32, 2\).* does not fit this task's head .*\(32, 1\)"):
    experiment.build(config)


def test_evaluate_and_predict_accept_init_from_peft(tiny_roberta, torch_adapter, rte_dir, tfds_dir):
  folder, _ = torch_adapter
  flags = ["--config=configs/glue.py:rte", *tiny_flags(tiny_roberta, tfds_dir, data_dir=rte_dir, method="lora")]
  out = script("evaluate", f"--init_from_peft={folder}", *flags).stdout
  assert json.loads(out.strip().splitlines()[-1])["split"] == "dev"
  out = script("predict", f"--init_from_peft={folder}", *flags, input="A man sleeps.\tA man is awake.\n").stdout
  assert set(json.loads(out.strip().splitlines()[-1])) == {"label", "score", "scores"}
  neither = script("evaluate", check=False)
  assert neither.returncode == 2 and "error: give --workdir (a finished run), or --init_from_peft" in neither.stderr


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory):
  folder = tmp_path_factory.mktemp("tiny_gpt2")
  config = transformers.GPT2Config(
    vocab_size=120, n_positions=32, n_embd=32, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0
  )
  torch.manual_seed(0)
  transformers.GPT2LMHeadModel(config).save_pretrained(folder)
  return folder


def soft_run(folder, spec, ids):
  model, backbone = models.from_pretrained(folder, peft=spec)
  _, variables = model.apply(
    {"params": backbone}, ids, mutable=["prompt", "prefix"], rngs={"params": jax.random.key(1)}
  )
  return model, {"backbone": backbone, **variables}


def test_prompt_tuning_exports_to_peft(tiny_gpt2, tmp_path):
  ids, mask = batch()
  ids, mask = jnp.asarray(ids % 120), jnp.asarray(mask)
  model, tree = soft_run(tiny_gpt2, PeftSpec(prompt_length=3), ids)
  ours = np.asarray(
    model.apply({"params": tree["backbone"], "prompt": tree["prompt"]}, ids, attention_mask=mask).logits
  )
  out = export.export_peft(tmp_path, model=model, tree=tree, task="causal_lm", base_model=str(tiny_gpt2))
  config = json.loads((out / "adapter_config.json").read_text())
  assert (config["peft_type"], config["num_virtual_tokens"], config["token_dim"]) == ("PROMPT_TUNING", 3, 32)
  loaded = peft.PeftModel.from_pretrained(transformers.AutoModelForCausalLM.from_pretrained(tiny_gpt2), out).eval()
  with torch.no_grad():
    theirs = loaded(
      input_ids=torch.tensor(np.asarray(ids)), attention_mask=torch.tensor(np.asarray(mask))
    ).logits.numpy()
  real = np.asarray(mask) > 0
  assert theirs.shape[1] == 3 + ids.shape[1]  # PEFT returns the soft positions too
  assert report("GPT-2 prompt tuning → PEFT PROMPT_TUNING, loaded by peft", theirs[:, 3:][real], ours[real]) < TOL


def test_soft_prompts_without_an_exact_peft_form_are_refused(tiny_gpt2, tiny_roberta, tmp_path):
  ids = jnp.ones((1, 6), jnp.int32)
  model, tree = soft_run(tiny_gpt2, PeftSpec(prefix_length=2), ids)
  with pytest.raises(ValueError, match="prefix tuning has no exact PEFT form.*positions"):
    export.export_peft(tmp_path, model=model, tree=tree, task="causal_lm", base_model=str(tiny_gpt2))
  model, tree = soft_run(tiny_roberta, PeftSpec(prompt_length=2), ids)
  tree["head"] = {"classifier": {"kernel": jnp.zeros((32, 2)), "bias": jnp.zeros(2)}}
  with pytest.raises(ValueError, match=r"prompt tuning prepends the soft tokens before everything, \[CLS\] included"):
    export.export_peft(tmp_path, model=model, tree=tree, task="sequence_classification", base_model=str(tiny_roberta))
  assert not (tmp_path / "adapter_config.json").exists()


def test_training_continues_from_a_peft_adapter(tiny_roberta, torch_adapter, rte_dir, tfds_dir, tmp_path):
  folder, _ = torch_adapter
  flags = tiny_flags(tiny_roberta, tfds_dir, data_dir=rte_dir, method="lora", max_steps=2, eval_every=2)
  script("train", "--config=configs/glue.py:rte", f"--config.init_from_peft={folder}", f"--workdir={tmp_path}", *flags)
  config, exp, trainable, frozen = experiment.restore(tmp_path)  # rebuilds from the adapter, then the checkpoint
  assert config.init_from_peft == str(folder)
  start = experiment.build(config).tree
  for part in ("lora", "head", "backbone/pooler"):  # all three trained on (PEFT trained the pooler as classifier.dense)
    section, *rest = part.split("/")
    before, after = start[section], trainable[section]
    for key in rest:
      before, after = before[key], after[key]
    moved = max(
      float(np.abs(np.asarray(a) - np.asarray(b)).max())
      for a, b in zip(jax.tree.leaves(after), jax.tree.leaves(before))
    )
    assert moved > 0, part
  assert "encoder" not in trainable["backbone"]  # the rest of the backbone stays frozen
  # …and back to PyTorch: scripts/export.py writes the continued run as a PEFT adapter that peft loads.
  script("export", f"--workdir={tmp_path}", f"--out={tmp_path / 'peft'}", "--format=peft")
  base = transformers.AutoModelForSequenceClassification.from_pretrained(tiny_roberta, num_labels=2)
  loaded = peft.PeftModel.from_pretrained(base, tmp_path / "peft")
  ids, mask = batch(3)
  ours = ftjax_logits(exp.model, trainability.combine(trainable, frozen), exp.task.head, ids, mask)
  assert report("peft adapter → ftjax training → scripts/export.py → peft", torch_logits(loaded, ids, mask), ours) < TOL

"""RoBERTa, XLM-R, ELECTRA, DistilBERT and DeBERTa-v2/v3: parity with transformers' PyTorch models on tiny random
checkpoints that transformers writes (padded sentence pairs), and load errors that name the tensor."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
import torch
import transformers

from ftjax.models import CheckpointError, from_pretrained

TOL = 1e-4
COMMON = dict(
  vocab_size=101,
  hidden_size=32,
  num_hidden_layers=2,
  num_attention_heads=4,
  intermediate_size=37,
  max_position_embeddings=40,
)
# name → (transformers model class, its config, pad token id)
ENCODERS = {
  "roberta": (transformers.RobertaModel, transformers.RobertaConfig(**COMMON, type_vocab_size=1), 1),
  "xlm-roberta": (transformers.XLMRobertaModel, transformers.XLMRobertaConfig(**COMMON, type_vocab_size=1), 1),
  "electra": (transformers.ElectraModel, transformers.ElectraConfig(**COMMON, embedding_size=16), 0),
  "distilbert": (
    transformers.DistilBertModel,
    transformers.DistilBertConfig(
      vocab_size=101, dim=32, n_layers=2, n_heads=4, hidden_dim=37, max_position_embeddings=40, activation="gelu"
    ),
    0,
  ),
  # v3's layout (shared keys, log buckets, no absolute positions); 8 buckets make a 9-token batch reach
  # the logarithmic range (|δ| > 4)
  "deberta-v3": (
    transformers.DebertaV2Model,
    transformers.DebertaV2Config(
      **COMMON,
      relative_attention=True,
      pos_att_type=["p2c", "c2p"],
      position_buckets=8,
      norm_rel_ebd="layer_norm",
      share_att_key=True,
      position_biased_input=False,
      type_vocab_size=0,
      layer_norm_eps=1e-7,
    ),
    0,
  ),
  # v2's: own position projections, clipped relative distances, absolute positions, two token types
  "deberta-v2": (
    transformers.DebertaV2Model,
    transformers.DebertaV2Config(
      **COMMON,
      relative_attention=True,
      pos_att_type="p2c|c2p",
      max_relative_positions=6,
      type_vocab_size=2,
      embedding_size=16,
    ),
    0,
  ),
}


def save(folder, name, cls=None):
  model_cls, config, _ = ENCODERS[name]
  torch.manual_seed(0)
  model = (cls or model_cls)(config).eval()
  model.save_pretrained(folder)
  return model


def padded_pairs(name, seed=0):
  """input_ids / attention_mask (/ token_type_ids where the model has two types) of 3 rows of lengths 9, 5
  and 2, right-padded with the pad token; the second segment starts at position 4."""
  _, config, pad = ENCODERS[name]
  rng = np.random.default_rng(seed)
  ids = rng.integers(3, config.vocab_size, (3, 9))
  mask = (np.arange(9)[None] < np.array([[9], [5], [2]])).astype(np.int64)
  batch = {"input_ids": np.where(mask > 0, ids, pad), "attention_mask": mask}
  if getattr(config, "type_vocab_size", 0) > 1:
    batch["token_type_ids"] = (np.arange(9)[None] >= 4).astype(np.int64) * mask
  return batch


def assert_matches(folder, name, torch_model):
  batch = padded_pairs(name)
  with torch.no_grad():
    theirs = torch_model(**{k: torch.tensor(v) for k, v in batch.items()})
  model, params = from_pretrained(folder)
  ours = model.apply({"params": params}, **{k: jnp.asarray(v) for k, v in batch.items()})
  real = batch["attention_mask"] > 0
  diff = np.abs(np.asarray(ours.last_hidden_state)[real] - theirs.last_hidden_state.numpy()[real]).max()
  assert diff < TOL, diff
  if getattr(theirs, "pooler_output", None) is not None:
    assert np.abs(np.asarray(ours.pooler_output) - theirs.pooler_output.numpy()).max() < TOL
  else:
    assert ours.pooler_output is None


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_random_encoder_matches_transformers(name, tmp_path):
  assert_matches(tmp_path, name, save(tmp_path, name))


def test_roberta_task_checkpoint_loads(tmp_path):
  """RobertaForSequenceClassification's names carry the `roberta.` prefix and the backbone no pooler."""
  classifier = save(tmp_path, "roberta", transformers.RobertaForSequenceClassification)
  assert_matches(tmp_path, "roberta", classifier.roberta)


def test_roberta_positions_leave_room_for_the_offset(tmp_path):
  save(tmp_path, "roberta")
  model, params = from_pretrained(tmp_path)
  model.apply({"params": params}, jnp.ones((1, 38), jnp.int32) * 5)  # positions 2..39 of 40
  with pytest.raises(ValueError, match="length 39.*max_position_embeddings=40 less its position offset 2"):
    model.apply({"params": params}, jnp.ones((1, 39), jnp.int32) * 5)


def rewrite_weights(folder, edit):
  file = folder / "model.safetensors"
  tensors = safetensors.numpy.load_file(str(file))
  edit(tensors)
  safetensors.numpy.save_file(tensors, str(file), metadata={"format": "pt"})
  return file


@pytest.mark.parametrize(
  "name, tensor, ours",
  [
    ("roberta", "encoder.layer.1.attention.self.value.weight", "encoder/layer_1/attention/self/value/kernel"),
    ("electra", "embeddings_project.weight", "embeddings_project/kernel"),
    ("distilbert", "transformer.layer.0.ffn.lin1.weight", "encoder/layer_0/intermediate/dense/kernel"),
    ("deberta-v3", "encoder.rel_embeddings.weight", "encoder/rel_embeddings/embedding"),
    ("deberta-v2", "encoder.layer.1.attention.self.pos_key_proj.weight", "layer_1/attention/self/pos_key_proj/kernel"),
  ],
)
def test_missing_and_misshapen_tensors_are_named(name, tensor, ours, tmp_path):
  save(tmp_path, name)
  file = rewrite_weights(tmp_path, lambda t: t.update({tensor: t[tensor][:, 1:]}))
  with pytest.raises(CheckpointError, match=rf"{file}.*{tensor}.*shape.*{ours}"):
    from_pretrained(tmp_path)
  rewrite_weights(tmp_path, lambda t: t.pop(tensor))
  with pytest.raises(CheckpointError, match=rf"{file}.*no tensor '{tensor}'.*{ours}"):
    from_pretrained(tmp_path)


def test_unknown_model_type_lists_the_encoders(tmp_path):
  save(tmp_path, "roberta")
  config = json.loads((tmp_path / "config.json").read_text())
  (tmp_path / "config.json").write_text(json.dumps({**config, "model_type": "mpnet"}))
  with pytest.raises(
    CheckpointError, match=r"'mpnet'.*\['bert', 'deberta-v2', 'distilbert', 'electra', .*'roberta', 'xlm-roberta'\]"
  ):
    from_pretrained(tmp_path)


# --- export: merged transformers checkpoints and PEFT adapters ---------------------------------------


def lora_run(folder, spec, head, batch):
  """(model, tree) of a random LoRA (B ≠ 0) and head on the checkpoint in `folder`."""
  import jax

  model, backbone = from_pretrained(folder, peft=spec)
  ids, mask = jnp.asarray(batch["input_ids"]), jnp.asarray(batch["attention_mask"])
  types = jnp.asarray(batch.get("token_type_ids", np.zeros_like(batch["input_ids"])))
  key = jax.random.key(0)
  _, variables = model.apply({"params": backbone}, ids, mutable=["lora"], rngs={"params": key})
  lora = jax.tree.map(lambda x: x + 0.1 * jax.random.normal(key, x.shape), variables["lora"])
  outputs = model.apply({"params": backbone, "lora": lora}, ids, attention_mask=mask, token_type_ids=types)
  head_params = jax.tree.map(lambda x: x + 0.1, head.init(key, outputs, mask)["params"])
  return (
    model,
    {"backbone": backbone, "lora": lora, "head": head_params},
    head.apply({"params": head_params}, outputs, mask),
  )


@pytest.mark.parametrize("name", ["electra", "distilbert", "deberta-v3"])
def test_token_classification_exports_to_transformers_and_peft(name, tmp_path):
  import peft

  from ftjax import export
  from ftjax.peft.spec import PeftSpec
  from ftjax.tasks import heads

  save(tmp_path / "base", name)
  batch = padded_pairs(name)
  spec = PeftSpec(
    lora_targets=r"attention/self/(query|value)(_proj)?$|layer_1/output/dense$", lora_rank=4, lora_alpha=8
  )
  model, tree, ours = lora_run(tmp_path / "base", spec, heads.TokenClassificationHead(5), batch)
  real = batch["attention_mask"] > 0
  inputs = {k: torch.tensor(v) for k, v in batch.items()}
  export.export_hf(
    tmp_path / "hf", model=model, tree=tree, task="token_classification", source_folder=tmp_path / "base"
  )
  merged = transformers.AutoModelForTokenClassification.from_pretrained(tmp_path / "hf").eval()
  with torch.no_grad():
    assert np.abs(merged(**inputs).logits.numpy()[real] - np.asarray(ours)[real]).max() < TOL
  out = export.export_peft(
    tmp_path / "peft", model=model, tree=tree, task="token_classification", base_model=str(tmp_path / "base")
  )
  targets = json.loads((out / "adapter_config.json").read_text())["target_modules"]
  last = {"distilbert": "layer.1.ffn.lin2"}.get(name, "layer.1.output.dense")
  qv = {"electra": ("query", "value"), "distilbert": ("q_lin", "v_lin"), "deberta-v3": ("query_proj", "value_proj")}
  assert set(targets) == {last, *qv[name]}
  base = transformers.AutoModelForTokenClassification.from_pretrained(tmp_path / "base", num_labels=5)
  loaded = peft.PeftModel.from_pretrained(base, out).eval()
  with torch.no_grad():
    assert np.abs(loaded(**inputs).logits.numpy()[real] - np.asarray(ours)[real]).max() < TOL


@pytest.mark.parametrize("name", ["electra", "distilbert", "deberta-v3"])
def test_sequence_classification_export_is_refused_with_the_reason(name, tmp_path):
  from ftjax import export
  from ftjax.peft.spec import PeftSpec
  from ftjax.tasks import heads

  save(tmp_path, name)
  spec = PeftSpec(lora_targets=r"attention/self/(query|value)(_proj)?$", lora_rank=2)
  model, tree, _ = lora_run(tmp_path, spec, heads.SequenceClassificationHead(2, pooling="cls"), padded_pairs(name))
  model_type = {"deberta-v3": "deberta-v2"}.get(name, name)
  with pytest.raises(
    ValueError, match=rf"cannot export a {model_type} sequence_classification run: .*(GELU|ReLU|Pooler)"
  ):
    export.export_hf(tmp_path / "hf", model=model, tree=tree, task="sequence_classification", source_folder=tmp_path)


def test_random_checkpoint_script_writes_a_loadable_roberta_with_a_bpe_tokenizer(rte_dir, tmp_path):
  from conftest import script

  from ftjax.models import load_tokenizer

  out = script(
    "random_checkpoint",
    "--arch=roberta",
    f"--out={tmp_path}",
    f"--corpus={rte_dir / 'train.tsv'}",
    "--hidden=32",
    "--layers=1",
    "--heads=2",
    "--bpe_vocab=400",
  ).stdout
  assert "random roberta (1 layers, hidden 32, vocab 400)" in out
  tokenizer = load_tokenizer(tmp_path)
  batch = tokenizer(["No weapons found."], ["Weapons found in Iraq."], return_tensors="np")
  assert tokenizer.pad_token_id == 1 and batch["input_ids"][0, 0] == tokenizer.cls_token_id
  model, params = from_pretrained(tmp_path)
  out = model.apply(
    {"params": params}, jnp.asarray(batch["input_ids"]), attention_mask=jnp.asarray(batch["attention_mask"])
  )
  assert out.last_hidden_state.shape == batch["input_ids"].shape + (32,)


def test_pooler_head_on_a_checkpoint_without_a_pooler_is_one_line_naming_the_key():
  from ftjax.errors import InputError
  from ftjax.models.outputs import EncoderOutput
  from ftjax.tasks.heads import pool

  hidden = jnp.ones((2, 3, 8))
  with pytest.raises(InputError, match="config key head_pooling: 'pooler' reads the backbone's pooler"):
    pool(EncoderOutput(last_hidden_state=hidden, pooler_output=None), jnp.ones((2, 3)), "pooler")
  assert pool(EncoderOutput(last_hidden_state=hidden, pooler_output=None), jnp.ones((2, 3)), "cls").shape == (2, 8)

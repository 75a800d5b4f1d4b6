"""Parity of the Flax backbones with transformers' PyTorch models, checkpoint formats, and load errors.

The real all-MiniLM-L6-v2 (packaged) checks the BERT path on trained weights; tiny random checkpoints
that transformers writes check GPT-2, the file formats and the error messages in milliseconds.
"""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
import torch
import transformers

from ftjax.models import CheckpointError, from_pretrained, resolve

TOL = 1e-4


def torch_outputs(model, **inputs):
  with torch.no_grad():
    return model(**{k: torch.tensor(np.asarray(v), dtype=torch.long) for k, v in inputs.items()})


def max_abs_diff(ours, theirs, mask=None):
  """Largest |ours - theirs|, over positions where mask (B, T) is 1 (padded positions are free)."""
  ours, theirs = np.asarray(ours, np.float32), np.asarray(theirs, np.float32)
  if mask is not None:
    ours, theirs = ours[np.asarray(mask) > 0], theirs[np.asarray(mask) > 0]
  return float(np.abs(ours - theirs).max())


# --- the real MiniLM -----------------------------------------------------------------------------------

PAIRS = (
  ["A man is playing a guitar.", "The weather is lovely today, isn't it?", "Short."],
  ["Someone plays an instrument.", "It is raining.", "A much longer second segment that makes padding."],
)


@pytest.fixture(scope="module")
def minilm_batch():
  """A padded batch of sentence pairs: two segments, so token_type_ids has ones."""
  tokenizer = transformers.AutoTokenizer.from_pretrained(str(resolve("minilm")))
  batch = dict(tokenizer(*PAIRS, padding=True, return_tensors="np"))
  assert (batch["attention_mask"] == 0).any() and (batch["token_type_ids"] == 1).any()
  return batch


@pytest.fixture(scope="module")
def minilm_torch(minilm_batch):
  model = transformers.AutoModel.from_pretrained(str(resolve("minilm"))).eval()
  return torch_outputs(model, **minilm_batch)


@pytest.fixture(scope="module")
def minilm_f32(minilm_batch):
  model, params = from_pretrained("minilm")
  return model.apply({"params": params}, **{k: jnp.asarray(v) for k, v in minilm_batch.items()})


def test_minilm_matches_transformers(minilm_batch, minilm_torch, minilm_f32):
  mask = minilm_batch["attention_mask"]
  assert max_abs_diff(minilm_f32.last_hidden_state, minilm_torch.last_hidden_state, mask) < TOL
  assert max_abs_diff(minilm_f32.pooler_output, minilm_torch.pooler_output) < TOL


def test_minilm_bfloat16_compute_stays_close(minilm_batch, minilm_f32):
  model, params = from_pretrained("minilm", dtype=jnp.bfloat16)
  out = model.apply({"params": params}, **{k: jnp.asarray(v) for k, v in minilm_batch.items()})
  assert out.last_hidden_state.dtype == jnp.bfloat16
  mask = minilm_batch["attention_mask"]
  deviation = max_abs_diff(out.last_hidden_state, minilm_f32.last_hidden_state, mask)
  scale = float(np.abs(np.asarray(minilm_f32.last_hidden_state)[mask > 0]).max())
  print(
    f"\nMiniLM bf16 vs f32: max |Δ last_hidden_state| = {deviation:.4f} (max |h| = {scale:.2f}); "
    f"pooler {max_abs_diff(out.pooler_output, minilm_f32.pooler_output):.4f}"
  )
  assert deviation < 5e-2


def dot_generals(jaxpr):
  """Every dot_general of a jaxpr, nested jaxprs (jit, custom_vjp, scan) included."""
  import jax

  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      yield eqn
    for value in eqn.params.values():
      for inner in value if isinstance(value, (tuple, list)) else (value,):
        if isinstance(inner, jax.extend.core.ClosedJaxpr):
          yield from dot_generals(inner.jaxpr)
        elif isinstance(inner, jax.extend.core.Jaxpr):
          yield from dot_generals(inner)


def test_minilm_bfloat16_training_gradients_run_bf16_matmuls_and_match_float32(minilm_batch):
  """With bf16 compute every matmul of the training gradient — the backward ones too — takes bf16
  operands and accumulates in float32 (a float32 × bf16 product runs in float32 on CPU, at ~1/5 of
  the AMX bf16 rate), and the weight gradients stay within bf16 rounding of the float32 ones."""
  import jax

  batch = {k: jnp.asarray(v) for k, v in minilm_batch.items()}
  grads = {}
  for dtype in (jnp.float32, jnp.bfloat16):
    model, params = from_pretrained("minilm", dtype=dtype)
    loss = lambda p: jnp.sum(jnp.square(model.apply({"params": p}, **batch).pooler_output.astype(jnp.float32)))
    if dtype == jnp.bfloat16:
      dots = list(dot_generals(jax.make_jaxpr(jax.grad(loss))(params).jaxpr))
      assert len(dots) == 6 * 8 * 3 + 3  # per layer 6 dense + 2 attention products, × (forward + 2 backward); pooler
      for eqn in dots:
        assert [v.aval.dtype for v in eqn.invars] == [jnp.bfloat16] * 2, eqn
        assert eqn.params["preferred_element_type"] == jnp.float32, eqn
    grads[dtype] = jax.grad(loss)(params)
  flat32 = jax.tree_util.tree_leaves_with_path(grads[jnp.float32])
  flat16 = jax.tree_util.tree_leaves(grads[jnp.bfloat16])
  for (path, g32), g16 in zip(flat32, flat16):
    assert g16.dtype == jnp.float32
    g32, g16 = np.asarray(g32).ravel(), np.asarray(g16).ravel()
    if np.linalg.norm(g32) > 1e-6:
      cosine = g32 @ g16 / (np.linalg.norm(g32) * np.linalg.norm(g16))
      assert cosine > 0.99, (jax.tree_util.keystr(path), cosine)


def test_bfloat16_weight_gradient_compiles_to_a_bf16_matmul():
  """XLA:CPU upcasts a bf16 matmul whose operands contract their major dimension (the weight gradient
  Σ_N aᵀ g) to float32, at ~1/4 of the bf16 rate here; layers.low_precision_matmul hands it a transposed
  copy of the narrower operand instead. Checked on the compiled HLO of the gradient, for a narrow and a
  wide input of a dense layer and of an attention product: every matmul takes bf16 operands."""
  import re
  import jax
  from ftjax.models.layers import batched_matmul, matmul

  cases = {
    "dense 32 → 48": (matmul, jnp.ones((2, 128, 32)), jnp.ones((32, 48))),
    "dense 48 → 32": (matmul, jnp.ones((2, 128, 48)), jnp.ones((48, 32))),
    "attention q·kᵀ": (batched_matmul, jnp.ones((4, 3, 16, 8)), jnp.ones((4, 3, 8, 16))),
    "attention p·v": (batched_matmul, jnp.ones((4, 3, 16, 16)), jnp.ones((4, 3, 16, 8))),
  }
  for case, (product, x, w) in cases.items():
    hlo = jax.jit(jax.grad(lambda x, w: product(x, w, jnp.bfloat16).sum(), (0, 1))).lower(x, w).compile().as_text()
    types = dict(re.findall(r"%([\w.\-]+) = (\w+)\[", hlo))
    products = [
      m
      for m in re.finditer(r"= f32\[[\d,]*\]\S* (?:fusion|dot)\(([^)]*)\)(.*)", hlo)
      if m.group(0).split("(")[0].endswith(" dot")
      or "ynn" in m.group(2)
      or "xnn" in m.group(2)
      or "onednn" in m.group(2)
    ]
    assert len(products) >= 3, (case, hlo)  # forward, input gradient, weight gradient
    for m in products:
      operands = [name.strip().lstrip("%") for name in m.group(1).split(",")]
      assert [types.get(name) for name in operands] == ["bf16", "bf16"], (case, m.group(0))


# --- tiny random checkpoints written by transformers ---------------------------------------------------

BERT = dict(
  vocab_size=101,
  hidden_size=32,
  num_hidden_layers=2,
  num_attention_heads=4,
  intermediate_size=37,
  max_position_embeddings=24,
  type_vocab_size=2,
)
GPT2 = dict(vocab_size=99, n_positions=24, n_embd=32, n_layer=2, n_head=4, bos_token_id=98, eos_token_id=98)


def padded_batch(vocab, left_pad=False, seed=0):
  """(ids, mask, token types) for 3 sequences of lengths 9, 5 and 2, padded to 9."""
  rng = np.random.default_rng(seed)
  ids = rng.integers(1, vocab, (3, 9))
  mask = np.zeros_like(ids)
  for row, n in enumerate((9, 5, 2)):
    mask[row, 9 - n :] = 1 if left_pad else 0
    mask[row, :n] = 0 if left_pad else 1
  types = (np.arange(9)[None] >= 4).astype(np.int64) * mask
  return ids * mask, mask, types


def save_bert(folder, cls=transformers.BertModel, **save):
  torch.manual_seed(0)
  model = cls(transformers.BertConfig(**BERT)).eval()
  model.save_pretrained(folder, **save)
  return model


def assert_bert_matches(folder, torch_bert):
  ids, mask, types = padded_batch(BERT["vocab_size"])
  model, params = from_pretrained(folder)
  ours = model.apply(
    {"params": params}, jnp.asarray(ids), attention_mask=jnp.asarray(mask), token_type_ids=jnp.asarray(types)
  )
  theirs = torch_outputs(torch_bert, input_ids=ids, attention_mask=mask, token_type_ids=types)
  assert max_abs_diff(ours.last_hidden_state, theirs.last_hidden_state, mask) < TOL
  assert max_abs_diff(ours.pooler_output, theirs.pooler_output) < TOL


def test_random_bert_matches_transformers(tmp_path):
  assert_bert_matches(tmp_path, save_bert(tmp_path))


def test_random_gpt2_matches_transformers(tmp_path):
  torch.manual_seed(0)
  hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(**GPT2)).eval()
  hf.save_pretrained(tmp_path)
  ids, mask, _ = padded_batch(GPT2["vocab_size"], left_pad=True)
  # transformers' generate() positions for left padding: real tokens count from 0.
  positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
  theirs = torch_outputs(hf, input_ids=ids, attention_mask=mask, position_ids=positions)
  model, params = from_pretrained(tmp_path)
  ours = model.apply({"params": params}, jnp.asarray(ids), attention_mask=jnp.asarray(mask))
  assert ours.logits.shape == (3, 9, GPT2["vocab_size"])
  assert max_abs_diff(ours.logits, theirs.logits, mask) < TOL


def test_sequence_classification_checkpoint_loads(tmp_path):
  classifier = save_bert(tmp_path, transformers.BertForSequenceClassification)
  names = safetensors.numpy.load_file(str(tmp_path / "model.safetensors"))
  assert all(k.startswith(("bert.", "classifier.")) for k in names)  # the prefixed layout
  assert_bert_matches(tmp_path, classifier.bert)


def test_sharded_checkpoint_loads(tmp_path):
  torch_bert = save_bert(tmp_path, max_shard_size="20KB")
  assert (tmp_path / "model.safetensors.index.json").is_file() and not (tmp_path / "model.safetensors").exists()
  assert len(list(tmp_path.glob("model-*.safetensors"))) > 1
  assert_bert_matches(tmp_path, torch_bert)


def test_pytorch_bin_checkpoint_loads(tmp_path):
  # transformers 5 only writes safetensors; a .bin is what older checkpoints ship: its pickled state dict.
  torch_bert = save_bert(tmp_path)
  (tmp_path / "model.safetensors").unlink()
  torch.save(torch_bert.state_dict(), tmp_path / "pytorch_model.bin")
  assert_bert_matches(tmp_path, torch_bert)


# --- errors say what is wrong and where ----------------------------------------------------------------


@pytest.fixture
def bert_folder(tmp_path):
  save_bert(tmp_path)
  return tmp_path


def test_missing_config_is_named(bert_folder):
  (bert_folder / "config.json").unlink()
  with pytest.raises(CheckpointError, match=f"{bert_folder}.*config.json"):
    from_pretrained(bert_folder)


def test_unknown_model_type_is_named(bert_folder):
  config = json.loads((bert_folder / "config.json").read_text())
  (bert_folder / "config.json").write_text(json.dumps({**config, "model_type": "mamba"}))
  with pytest.raises(CheckpointError, match=r"config.json.*'mamba'.*\['bert', "):
    from_pretrained(bert_folder)


def rewrite_weights(folder, edit):
  file = folder / "model.safetensors"
  tensors = safetensors.numpy.load_file(str(file))
  edit(tensors)
  safetensors.numpy.save_file(tensors, str(file), metadata={"format": "pt"})
  return file


def test_missing_tensor_is_named(bert_folder):
  name = "encoder.layer.1.attention.self.value.weight"
  file = rewrite_weights(bert_folder, lambda t: t.pop(name))
  with pytest.raises(CheckpointError, match=rf"{file}.*{name}.*encoder/layer_1/attention/self/value/kernel"):
    from_pretrained(bert_folder)


def test_misshaped_tensor_is_named(bert_folder):
  name = "encoder.layer.0.intermediate.dense.bias"
  file = rewrite_weights(bert_folder, lambda t: t.update({name: np.zeros(36, np.float32)}))
  with pytest.raises(CheckpointError, match=rf"{file}.*{name}.*\(36,\).*\(37,\)"):
    from_pretrained(bert_folder)


def test_too_long_sequences_are_refused(bert_folder, tmp_path_factory):
  model, params = from_pretrained(bert_folder)
  too_long = jnp.ones((1, BERT["max_position_embeddings"] + 1), jnp.int32)
  with pytest.raises(ValueError, match="length 25.*max_position_embeddings=24"):
    model.apply({"params": params}, too_long)
  gpt2_folder = tmp_path_factory.mktemp("gpt2")
  transformers.GPT2LMHeadModel(transformers.GPT2Config(**GPT2)).save_pretrained(gpt2_folder)
  model, params = from_pretrained(gpt2_folder)
  with pytest.raises(ValueError, match="length 25.*n_positions=24"):
    model.apply({"params": params}, jnp.ones((1, GPT2["n_positions"] + 1), jnp.int32))

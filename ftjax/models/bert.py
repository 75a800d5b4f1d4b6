"""BERT (Devlin et al. 2019) as Hugging Face's `BertModel` computes it: post-LayerNorm encoder + pooler.

RoBERTa/XLM-R, ELECTRA and DistilBERT are the same encoder with three config switches (see
roberta.py, electra.py, distilbert.py): `position_offset` (RoBERTa counts positions from padding_idx + 1,
over the real tokens only), `embedding_size` (ELECTRA's narrower embeddings, projected up to the
hidden size) and `type_vocab_size = 0` (DistilBERT has no token-type embeddings).

Module paths mirror Hugging Face's names (`encoder/layer_0/attention/self/query`), so LoRA target
regexes and freeze rules read like PEFT's. `params_from_hf` is the explicit name-by-name mapping from a
Hugging Face state dict: torch `Linear` weights are (out, in) and are transposed to Flax's (in, out).
"""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax.numpy as jnp

from ftjax.models.dropout import Dropout
from ftjax.models.layers import ACTIVATIONS, Dense, Embed, LayerNorm, adapter, attention, mask_bias, prepend_prefix
from ftjax.models.outputs import EncoderOutput
from ftjax.peft import prompts
from ftjax.peft.spec import NO_PEFT, PeftSpec


@dataclasses.dataclass(frozen=True)
class BertConfig:
  vocab_size: int = 30522
  hidden_size: int = 768
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  intermediate_size: int = 3072
  hidden_act: str = "gelu"
  hidden_dropout_prob: float = 0.1
  attention_probs_dropout_prob: float = 0.1
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  pad_token_id: int = 0
  # >0: position of the first real token (RoBERTa: padding_idx + 1); padding then sits at offset - 1.
  position_offset: int = 0
  embedding_size: int = 0  # width of the embeddings; 0 → hidden_size (ELECTRA: smaller, projected up)

  @classmethod
  def from_hf(cls, hf: dict) -> "BertConfig":
    if hf.get("position_embedding_type", "absolute") != "absolute":
      raise ValueError(
        f"BERT position_embedding_type {hf['position_embedding_type']!r} is not supported (only 'absolute')"
      )
    if hf.get("hidden_act", "gelu") not in ACTIVATIONS:
      raise ValueError(f"unknown hidden_act {hf['hidden_act']!r}; known: {sorted(ACTIVATIONS)}")
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in hf.items() if k in names})

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_attention_heads

  @property
  def embedding_width(self) -> int:
    return self.embedding_size or self.hidden_size


class BertEmbeddings(nn.Module):
  config: BertConfig
  peft: PeftSpec = NO_PEFT
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, input_ids, token_type_ids, attention_mask, perturbation, deterministic):
    c = self.config
    word = Embed(c.vocab_size, c.embedding_width, self.dtype, name="word_embeddings")
    embeds = word(input_ids)
    if perturbation is not None:  # adversarial training perturbs the word-embedding output
      embeds = embeds + perturbation.astype(embeds.dtype)
    if self.peft.prompt_length:  # soft prompt right after [CLS], so the pooler still reads [CLS]
      batch, n = input_ids.shape[0], self.peft.prompt_length
      prompt = prompts.soft_prompt(self, word.embedding, self.peft).astype(embeds.dtype)
      embeds = jnp.concatenate(
        [embeds[:, :1], jnp.broadcast_to(prompt, (batch, n, embeds.shape[-1])), embeds[:, 1:]], axis=1
      )
      token_type_ids = jnp.concatenate(
        [token_type_ids[:, :1], jnp.zeros((batch, n), token_type_ids.dtype), token_type_ids[:, 1:]], axis=1
      )
      attention_mask = jnp.concatenate(
        [attention_mask[:, :1], jnp.ones((batch, n), attention_mask.dtype), attention_mask[:, 1:]], axis=1
      )
    length = embeds.shape[1]
    if length + c.position_offset > c.max_position_embeddings:
      raise ValueError(
        f"sequence length {length} (soft prompt included) exceeds the model's "
        f"max_position_embeddings={c.max_position_embeddings}"
        + (f" less its position offset {c.position_offset}" if c.position_offset else "")
      )
    if c.position_offset:  # RoBERTa: real tokens count from the offset, padding sits at offset - 1
      positions = jnp.cumsum(attention_mask, axis=1) * (attention_mask > 0) + c.position_offset - 1
    else:
      positions = jnp.arange(length)[None]
    embeds = embeds + Embed(c.max_position_embeddings, c.embedding_width, self.dtype, name="position_embeddings")(
      positions
    )
    if c.type_vocab_size == 1:  # RoBERTa: one type; a BERT tokenizer's second-segment ones would index past it
      token_type_ids = jnp.zeros_like(token_type_ids)
    if c.type_vocab_size:  # DistilBERT has none
      embeds = embeds + Embed(c.type_vocab_size, c.embedding_width, self.dtype, name="token_type_embeddings")(
        token_type_ids
      )
    embeds = LayerNorm(c.layer_norm_eps, self.dtype, name="LayerNorm")(embeds)
    return Dropout(c.hidden_dropout_prob)(embeds, deterministic=deterministic), attention_mask


class BertSelfAttention(nn.Module):
  config: BertConfig
  peft: PeftSpec = NO_PEFT
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, hidden, bias, deterministic):
    c = self.config
    dense = functools.partial(Dense, c.hidden_size, peft=self.peft, dtype=self.dtype)
    split = lambda x: x.reshape(x.shape[:2] + (c.num_attention_heads, c.head_dim))
    q = split(dense(name="query")(hidden, deterministic))
    k = split(dense(name="key")(hidden, deterministic))
    v = split(dense(name="value")(hidden, deterministic))
    if self.peft.prefix_length:
      pk, pv = prompts.key_value_prefix(self, c.num_attention_heads, c.head_dim, self.peft)
      k, v, bias = prepend_prefix(k, v, bias, pk, pv)
    dropout = Dropout(c.attention_probs_dropout_prob)
    out = attention(q, k, v, bias, dropout, deterministic, self.dtype)
    return out.reshape(out.shape[:2] + (c.hidden_size,))


class BertSublayerOutput(nn.Module):
  """dense → dropout → adapter → LayerNorm(· + residual): HF's BertSelfOutput and BertOutput."""

  config: BertConfig
  site: str  # "attention" or "ffn": where an adapter sits
  peft: PeftSpec = NO_PEFT
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, hidden, residual, deterministic):
    c = self.config
    h = Dense(c.hidden_size, peft=self.peft, dtype=self.dtype, name="dense")(hidden, deterministic)
    h = Dropout(c.hidden_dropout_prob)(h, deterministic=deterministic)
    h = adapter(self, h, self.peft, self.site, self.dtype)
    return LayerNorm(c.layer_norm_eps, self.dtype, name="LayerNorm")(h + residual)


class BertAttention(nn.Module):
  config: BertConfig
  peft: PeftSpec = NO_PEFT
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, hidden, bias, deterministic):
    a = BertSelfAttention(self.config, self.peft, self.dtype, name="self")(hidden, bias, deterministic)
    return BertSublayerOutput(self.config, "attention", self.peft, self.dtype, name="output")(a, hidden, deterministic)


class BertIntermediate(nn.Module):
  config: BertConfig
  peft: PeftSpec = NO_PEFT
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, hidden, deterministic):
    c = self.config
    h = Dense(c.intermediate_size, peft=self.peft, dtype=self.dtype, name="dense")(hidden, deterministic)
    return ACTIVATIONS[c.hidden_act](h)


class BertLayer(nn.Module):
  config: BertConfig
  peft: PeftSpec = NO_PEFT
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, hidden, bias, deterministic):
    h = BertAttention(self.config, self.peft, self.dtype, name="attention")(hidden, bias, deterministic)
    ffn = BertIntermediate(self.config, self.peft, self.dtype, name="intermediate")(h, deterministic)
    return BertSublayerOutput(self.config, "ffn", self.peft, self.dtype, name="output")(ffn, h, deterministic)


class BertEncoder(nn.Module):
  config: BertConfig
  peft: PeftSpec = NO_PEFT
  dtype: jnp.dtype = jnp.float32
  remat: bool = False

  @nn.compact
  def __call__(self, hidden, bias, deterministic):
    # Rematerialisation recomputes each layer's activations in the backward pass: memory ∝ layers → 1.
    layer_cls = nn.remat(BertLayer, static_argnums=(3,)) if self.remat else BertLayer
    for i in range(self.config.num_hidden_layers):
      hidden = layer_cls(self.config, self.peft, self.dtype, name=f"layer_{i}")(hidden, bias, deterministic)
    return hidden


class BertModel(nn.Module):
  """`apply({"params": ...}, input_ids, attention_mask=..., token_type_ids=..., deterministic=True)`."""

  config: BertConfig
  peft: PeftSpec = NO_PEFT
  dtype: jnp.dtype = jnp.float32  # compute dtype; parameters stay float32
  remat: bool = False
  add_pooling_layer: bool = True
  is_decoder = False  # class constant (no annotation: not a module field)

  @nn.compact
  def __call__(
    self, input_ids, attention_mask=None, token_type_ids=None, deterministic: bool = True, embedding_perturbation=None
  ) -> EncoderOutput:
    if attention_mask is None:
      attention_mask = jnp.ones_like(input_ids)
    if token_type_ids is None:
      token_type_ids = jnp.zeros_like(input_ids)
    hidden, mask = BertEmbeddings(self.config, self.peft, self.dtype, name="embeddings")(
      input_ids, token_type_ids, attention_mask, embedding_perturbation, deterministic
    )
    if self.config.embedding_width != self.config.hidden_size:  # ELECTRA's projection up to the hidden size
      hidden = Dense(self.config.hidden_size, peft=self.peft, dtype=self.dtype, name="embeddings_project")(
        hidden, deterministic
      )
    # Every query may attend every unmasked key (padding keys are masked; padded queries are ignored).
    bias = mask_bias(jnp.broadcast_to(mask[:, None, :] > 0, (mask.shape[0], mask.shape[1], mask.shape[1])))
    hidden = BertEncoder(self.config, self.peft, self.dtype, self.remat, name="encoder")(hidden, bias, deterministic)
    if self.peft.prompt_length:  # drop the soft-prompt positions: outputs align with input_ids again
      hidden = jnp.concatenate([hidden[:, :1], hidden[:, 1 + self.peft.prompt_length :]], axis=1)
    pooled = None
    if self.add_pooling_layer:
      pooled = jnp.tanh(Dense(self.config.hidden_size, dtype=self.dtype, name="pooler")(hidden[:, 0]))
    return EncoderOutput(last_hidden_state=hidden, pooler_output=pooled)


# ---------------------------------------------------------------------------------------------------
# Hugging Face checkpoint mapping. Each entry: (our path, HF name, transpose?).


def _hf_names(config: BertConfig, with_pooler: bool):
  names = [
    ("embeddings/word_embeddings/embedding", "embeddings.word_embeddings.weight", False),
    ("embeddings/position_embeddings/embedding", "embeddings.position_embeddings.weight", False),
    ("embeddings/LayerNorm/scale", "embeddings.LayerNorm.weight", False),
    ("embeddings/LayerNorm/bias", "embeddings.LayerNorm.bias", False),
  ]
  if config.type_vocab_size:
    names += [("embeddings/token_type_embeddings/embedding", "embeddings.token_type_embeddings.weight", False)]
  if config.embedding_width != config.hidden_size:
    names += [
      ("embeddings_project/kernel", "embeddings_project.weight", True),
      ("embeddings_project/bias", "embeddings_project.bias", False),
    ]
  for i in range(config.num_hidden_layers):
    ours, theirs = f"encoder/layer_{i}", f"encoder.layer.{i}"
    for dense in (
      "attention/self/query",
      "attention/self/key",
      "attention/self/value",
      "attention/output/dense",
      "intermediate/dense",
      "output/dense",
    ):
      hf = f"{theirs}.{dense.replace('/', '.')}"
      names += [(f"{ours}/{dense}/kernel", f"{hf}.weight", True), (f"{ours}/{dense}/bias", f"{hf}.bias", False)]
    for norm in ("attention/output/LayerNorm", "output/LayerNorm"):
      hf = f"{theirs}.{norm.replace('/', '.')}"
      names += [(f"{ours}/{norm}/scale", f"{hf}.weight", False), (f"{ours}/{norm}/bias", f"{hf}.bias", False)]
  if with_pooler:
    names += [("pooler/kernel", "pooler.dense.weight", True), ("pooler/bias", "pooler.dense.bias", False)]
  return names


# Prefixes that task-specific HF classes put before the backbone names (BertForSequenceClassification…).
HF_PREFIXES = ("bert.",)

# LoRA's default targets (config lora.targets="default"): query and value, as Hu et al. and PEFT.
LORA_TARGETS = r"attention/self/(query|value)$"


def hf_names(config: BertConfig, hf_keys) -> list[tuple[str, str, bool]]:
  """(our path, HF name, transpose) for every backbone tensor; the pooler only if the checkpoint has one
  (sentence-embedding checkpoints sometimes ship without it)."""
  return _hf_names(config, with_pooler="pooler.dense.weight" in hf_keys)


# Where each parameter lives on the (data, fsdp, tensor) mesh (ftjax/sharding.py): column-parallel q/k/v
# and intermediate kernels, row-parallel output kernels, vocabulary-parallel word embeddings, FSDP over the
# other dimension; biases and LayerNorms (hidden-sized vectors) replicated.
SHARDING = (
  r"^backbone/.*/(query|key|value)/kernel$:fsdp,tensor",
  r"^backbone/.*/intermediate/dense/kernel$:fsdp,tensor",
  r"^backbone/.*/output/dense/kernel$:tensor,fsdp",
  r"^backbone/embeddings/word_embeddings/embedding$:tensor,fsdp",
  r"^backbone/embeddings/(position|token_type)_embeddings/embedding$:-,fsdp",
  r"^backbone/pooler/kernel$:fsdp,tensor",
  r"^backbone/embeddings_project/kernel$:fsdp,-",  # ELECTRA: embedding width → hidden size
  r"^backbone/.*/(bias|scale)$:",
)

Config, Model = BertConfig, BertModel  # what `ftjax.models.loading` looks up per architecture

"""DeBERTa-v2/v3 (He et al. 2021, arXiv:2006.03654) as transformers' `DebertaV2Model` computes it.

Disentangled attention: besides content·content, each query attends to keys through their relative
position, with two extra terms per head,
  c2p(i, j) = q_i · k_r(δ(i, j))   content → position,  k_r = key projection of relative embedding r
  p2c(i, j) = k_j · q_r(δ(j, i))   position → content,  q_r = query projection of relative embedding r
where δ(i, j) = i − j, clipped to ±`att_span` and, with `position_buckets` > 0 (v3: 256), bucketed
logarithmically beyond half the bucket count (`relative_positions`). The scores are divided by
√(head_dim · (1 + number of extra terms)). With `share_att_key` (v3) the relative embeddings go
through the content query/key projections, else through their own `pos_key_proj`/`pos_query_proj`.
The relative embedding table is LayerNorm-ed once (`norm_rel_ebd="layer_norm"`) and shared by all
layers. v3 adds no absolute positions to the input (`position_biased_input=False`).

The sub-layers after attention (dense → dropout → LayerNorm(· + residual), the feed-forward block) are
BERT's, reused from bert.py, so adapters and LoRA target paths read as BERT's do.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from ftjax.models.bert import BertConfig, BertIntermediate, BertSublayerOutput
from ftjax.models.dropout import Dropout
from ftjax.models.layers import Dense, Embed, LayerNorm, attention, mask_bias
from ftjax.models.outputs import EncoderOutput
from ftjax.peft.spec import NO_PEFT, PeftSpec


@dataclasses.dataclass(frozen=True)
class DebertaV2Config(BertConfig):
  """BERT's fields (embedding_size: projected up by embed_proj, without bias) and DeBERTa's own."""

  vocab_size: int = 128100
  type_vocab_size: int = 0
  layer_norm_eps: float = 1e-7
  position_biased_input: bool = True  # add absolute position embeddings to the input (v3: False)
  relative_attention: bool = False
  max_relative_positions: int = -1  # < 1 → max_position_embeddings
  position_buckets: int = -1  # > 0: log-bucketed relative positions (v3: 256)
  pos_att_type: tuple[str, ...] = ()  # "c2p", "p2c"
  share_att_key: bool = False
  norm_rel_ebd: str = "none"  # "layer_norm": LayerNorm on the relative embedding table

  @classmethod
  def from_hf(cls, hf: dict) -> "DebertaV2Config":
    if (hf.get("conv_kernel_size") or 0) > 0:
      raise ValueError(
        "DeBERTa-v2's convolution layer (conv_kernel_size > 0, the xlarge/xxlarge v2 models) is not supported"
      )
    types = hf.get("pos_att_type") or ()
    types = types.lower().split("|") if isinstance(types, str) else types  # v2 configs write "p2c|c2p"
    types = tuple(t.strip() for t in types if t.strip())
    if set(types) - {"c2p", "p2c"}:
      raise ValueError(f"pos_att_type {sorted(set(types) - {'c2p', 'p2c'})} is not supported (only 'c2p', 'p2c')")
    return super().from_hf({**hf, "pos_att_type": types, "embedding_size": hf.get("embedding_size") or 0})

  @property
  def max_relative(self) -> int:
    return self.max_relative_positions if self.max_relative_positions >= 1 else self.max_position_embeddings

  @property
  def att_span(self) -> int:
    """Relative distances kept on each side: the relative embedding table has 2·att_span rows."""
    return self.position_buckets if self.position_buckets > 0 else self.max_relative


def relative_positions(length: int, buckets: int, max_position: int) -> np.ndarray:
  """δ(i, j) = i − j for i, j < length (length × length), log-bucketed as transformers'
  `make_log_bucket_position` when `buckets` > 0: exact within ±buckets/2, logarithmic beyond (in
  float32, as torch computes it, so the bucket boundaries agree)."""
  ids = np.arange(length)
  rel = ids[:, None] - ids[None, :]
  if buckets <= 0 or max_position <= 0:
    return rel
  mid = buckets // 2
  sign = np.sign(rel)
  abs_pos = np.where((rel < mid) & (rel > -mid), mid - 1, np.abs(rel)).astype(np.float32)
  ratio = np.log(abs_pos / np.float32(mid)) / np.log(np.float32((max_position - 1) / mid))
  log_pos = np.ceil(ratio * np.float32(mid - 1)) + mid
  return np.where(abs_pos <= mid, rel, log_pos * sign).astype(np.int64)


class DisentangledSelfAttention(nn.Module):
  config: DebertaV2Config
  peft: PeftSpec = NO_PEFT
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, hidden, bias, rel_embeddings, rel_pos, deterministic):
    c = self.config
    dense = functools.partial(Dense, c.hidden_size, peft=self.peft, dtype=self.dtype)
    split = lambda x: x.reshape(x.shape[:-1] + (c.num_attention_heads, c.head_dim))
    query, key = dense(name="query_proj"), dense(name="key_proj")
    q, k = split(query(hidden, deterministic)), split(key(hidden, deterministic))
    v = split(dense(name="value_proj")(hidden, deterministic))
    scale_factor = 1 + len(c.pos_att_type)
    scale = 1.0 / math.sqrt(c.head_dim * scale_factor)
    if c.relative_attention and c.pos_att_type:
      span = c.att_span
      rel = Dropout(c.hidden_dropout_prob)(rel_embeddings[: 2 * span], deterministic=deterministic)
      heads = lambda x: jnp.swapaxes(x.astype(jnp.float32), 1, 2)  # (B, T, H, D) → (B, H, T, D)
      score = 0.0
      if "c2p" in c.pos_att_type:
        pos_key = split(key(rel, deterministic) if c.share_att_key else dense(name="pos_key_proj")(rel, deterministic))
        c2p = jnp.einsum("bhtd,rhd->bhtr", heads(q), pos_key.astype(jnp.float32))  # (B, H, T, 2·span)
        index = jnp.clip(rel_pos + span, 0, 2 * span - 1)  # (T, T): row i, key j → δ(i, j) + span
        score = score + jnp.take_along_axis(c2p, jnp.broadcast_to(index, c2p.shape[:2] + index.shape), axis=-1)
      if "p2c" in c.pos_att_type:
        pos_query = split(
          query(rel, deterministic) if c.share_att_key else dense(name="pos_query_proj")(rel, deterministic)
        )
        p2c = jnp.einsum("bhsd,rhd->bhsr", heads(k), pos_query.astype(jnp.float32))  # (B, H, S, 2·span)
        index = jnp.clip(-rel_pos + span, 0, 2 * span - 1)  # (S, T): key j, query i → δ(i, j) + span
        gathered = jnp.take_along_axis(p2c, jnp.broadcast_to(index, p2c.shape[:2] + index.shape), axis=-1)
        score = score + jnp.swapaxes(gathered, -1, -2)
      bias = bias + score * scale
    dropout = Dropout(c.attention_probs_dropout_prob)
    out = attention(q, k, v, bias, dropout, deterministic, self.dtype, scale=scale)
    return out.reshape(out.shape[:2] + (c.hidden_size,))


class DebertaV2Attention(nn.Module):
  config: DebertaV2Config
  peft: PeftSpec = NO_PEFT
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, hidden, bias, rel_embeddings, rel_pos, deterministic):
    c, p, d = self.config, self.peft, self.dtype
    a = DisentangledSelfAttention(c, p, d, name="self")(hidden, bias, rel_embeddings, rel_pos, deterministic)
    return BertSublayerOutput(c, "attention", p, d, name="output")(a, hidden, deterministic)


class DebertaV2Layer(nn.Module):
  config: DebertaV2Config
  peft: PeftSpec = NO_PEFT
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, hidden, bias, rel_embeddings, rel_pos, deterministic):
    c, p, d = self.config, self.peft, self.dtype
    h = DebertaV2Attention(c, p, d, name="attention")(hidden, bias, rel_embeddings, rel_pos, deterministic)
    ffn = BertIntermediate(c, p, d, name="intermediate")(h, deterministic)
    return BertSublayerOutput(c, "ffn", p, d, name="output")(ffn, h, deterministic)


class DebertaV2Embeddings(nn.Module):
  """word (+ absolute position) (+ token type) → projection → LayerNorm → × mask → dropout."""

  config: DebertaV2Config
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, input_ids, token_type_ids, attention_mask, perturbation, deterministic):
    c = self.config
    embeds = Embed(c.vocab_size, c.embedding_width, self.dtype, name="word_embeddings")(input_ids)
    if perturbation is not None:  # adversarial training perturbs the word-embedding output
      embeds = embeds + perturbation.astype(embeds.dtype)
    length = input_ids.shape[1]
    if c.position_biased_input:
      if length > c.max_position_embeddings:
        raise ValueError(
          f"sequence length {length} exceeds the model's max_position_embeddings={c.max_position_embeddings}"
        )
      positions = jnp.arange(length)[None]
      embeds = embeds + Embed(c.max_position_embeddings, c.embedding_width, self.dtype, name="position_embeddings")(
        positions
      )
    if c.type_vocab_size:
      embeds = embeds + Embed(c.type_vocab_size, c.embedding_width, self.dtype, name="token_type_embeddings")(
        token_type_ids
      )
    if c.embedding_width != c.hidden_size:
      embeds = Dense(c.hidden_size, use_bias=False, dtype=self.dtype, name="embed_proj")(embeds)
    hidden = LayerNorm(c.layer_norm_eps, self.dtype, name="LayerNorm")(embeds)
    hidden = hidden * attention_mask[:, :, None].astype(hidden.dtype)  # padding enters as zeros (transformers)
    return Dropout(c.hidden_dropout_prob)(hidden, deterministic=deterministic)


class DebertaV2Encoder(nn.Module):
  """The layers, and the relative embedding table (LayerNorm-ed once) and positions they share."""

  config: DebertaV2Config
  peft: PeftSpec = NO_PEFT
  dtype: jnp.dtype = jnp.float32
  remat: bool = False

  @nn.compact
  def __call__(self, hidden, bias, deterministic):
    c = self.config
    rel_embeddings, rel_pos = None, None
    if c.relative_attention:
      rel_embeddings = Embed(2 * c.att_span, c.hidden_size, jnp.float32, name="rel_embeddings").embedding
      if "layer_norm" in [x.strip() for x in c.norm_rel_ebd.lower().split("|")]:
        rel_embeddings = LayerNorm(c.layer_norm_eps, jnp.float32, name="LayerNorm")(rel_embeddings)
      rel_embeddings = rel_embeddings.astype(self.dtype)
      rel_pos = jnp.asarray(relative_positions(hidden.shape[1], c.position_buckets, c.max_relative))
    # Rematerialisation recomputes each layer's activations in the backward pass: memory ∝ layers → 1.
    layer_cls = nn.remat(DebertaV2Layer, static_argnums=(5,)) if self.remat else DebertaV2Layer
    for i in range(c.num_hidden_layers):
      hidden = layer_cls(c, self.peft, self.dtype, name=f"layer_{i}")(
        hidden, bias, rel_embeddings, rel_pos, deterministic
      )
    return hidden


class DebertaV2Model(nn.Module):
  """`apply({"params": ...}, input_ids, attention_mask=..., token_type_ids=..., deterministic=True)`.

  No pooler: DeBERTa's sequence classifier keeps its ContextPooler in the task head (see export.py)."""

  config: DebertaV2Config
  peft: PeftSpec = NO_PEFT
  dtype: jnp.dtype = jnp.float32  # compute dtype; parameters stay float32
  remat: bool = False
  is_decoder = False  # class constant (no annotation: not a module field)

  @nn.compact
  def __call__(
    self, input_ids, attention_mask=None, token_type_ids=None, deterministic: bool = True, embedding_perturbation=None
  ) -> EncoderOutput:
    if self.peft.prompt_length or self.peft.prefix_length:
      raise ValueError("prompt and prefix tuning are not implemented for DeBERTa-v2 (use lora, adapter or full)")
    if attention_mask is None:
      attention_mask = jnp.ones_like(input_ids)
    if token_type_ids is None:
      token_type_ids = jnp.zeros_like(input_ids)
    hidden = DebertaV2Embeddings(self.config, self.dtype, name="embeddings")(
      input_ids, token_type_ids, attention_mask, embedding_perturbation, deterministic
    )
    # Every query may attend every unmasked key (padding keys are masked; padded queries are ignored).
    length = input_ids.shape[1]
    bias = mask_bias(jnp.broadcast_to(attention_mask[:, None, :] > 0, (input_ids.shape[0], length, length)))
    hidden = DebertaV2Encoder(self.config, self.peft, self.dtype, self.remat, name="encoder")(
      hidden, bias, deterministic
    )
    return EncoderOutput(last_hidden_state=hidden, pooler_output=None)


# ---------------------------------------------------------------------------------------------------
# Hugging Face checkpoint mapping. Each entry: (our path, HF name, transpose?).


def hf_names(config: DebertaV2Config, hf_keys) -> list[tuple[str, str, bool]]:
  """(our path, HF name, transpose) for every backbone tensor (DebertaV2Model has no pooler)."""
  c = config
  names = [("embeddings/word_embeddings/embedding", "embeddings.word_embeddings.weight", False)]
  if c.position_biased_input:
    names += [("embeddings/position_embeddings/embedding", "embeddings.position_embeddings.weight", False)]
  if c.type_vocab_size:
    names += [("embeddings/token_type_embeddings/embedding", "embeddings.token_type_embeddings.weight", False)]
  if c.embedding_width != c.hidden_size:
    names += [("embeddings/embed_proj/kernel", "embeddings.embed_proj.weight", True)]
  names += [("embeddings/LayerNorm/scale", "embeddings.LayerNorm.weight", False)]
  names += [("embeddings/LayerNorm/bias", "embeddings.LayerNorm.bias", False)]
  if c.relative_attention:
    names += [("encoder/rel_embeddings/embedding", "encoder.rel_embeddings.weight", False)]
    if "layer_norm" in [x.strip() for x in c.norm_rel_ebd.lower().split("|")]:
      names += [("encoder/LayerNorm/scale", "encoder.LayerNorm.weight", False)]
      names += [("encoder/LayerNorm/bias", "encoder.LayerNorm.bias", False)]
  dense = ["attention/self/query_proj", "attention/self/key_proj", "attention/self/value_proj"]
  if c.relative_attention and not c.share_att_key:
    dense += ["attention/self/pos_key_proj"] * ("c2p" in c.pos_att_type)
    dense += ["attention/self/pos_query_proj"] * ("p2c" in c.pos_att_type)
  dense += ["attention/output/dense", "intermediate/dense", "output/dense"]
  for i in range(c.num_hidden_layers):
    ours, theirs = f"encoder/layer_{i}", f"encoder.layer.{i}"
    for d in dense:
      hf = f"{theirs}.{d.replace('/', '.')}"
      names += [(f"{ours}/{d}/kernel", f"{hf}.weight", True), (f"{ours}/{d}/bias", f"{hf}.bias", False)]
    for norm in ("attention/output/LayerNorm", "output/LayerNorm"):
      hf = f"{theirs}.{norm.replace('/', '.')}"
      names += [(f"{ours}/{norm}/scale", f"{hf}.weight", False), (f"{ours}/{norm}/bias", f"{hf}.bias", False)]
  return names


HF_PREFIXES = ("deberta.",)
# LoRA's default targets (config lora.targets="default"): query and value, as PEFT's DeBERTa-v2 default.
LORA_TARGETS = r"attention/self/(query_proj|value_proj)$"
# Where each parameter lives on the (data, fsdp, tensor) mesh (ftjax/sharding.py), as bert.py's rules:
# column-parallel projections into heads and the intermediate layer, row-parallel outputs, vocabulary-
# parallel word embeddings; the relative-position table is split over its width like the positions.
SHARDING = (
  r"^backbone/.*/(query_proj|key_proj|value_proj|pos_key_proj|pos_query_proj)/kernel$:fsdp,tensor",
  r"^backbone/.*/intermediate/dense/kernel$:fsdp,tensor",
  r"^backbone/.*/output/dense/kernel$:tensor,fsdp",
  r"^backbone/embeddings/word_embeddings/embedding$:tensor,fsdp",
  r"^backbone/embeddings/(position|token_type)_embeddings/embedding$:-,fsdp",
  r"^backbone/embeddings/embed_proj/kernel$:fsdp,-",
  r"^backbone/encoder/rel_embeddings/embedding$:-,fsdp",
  r"^backbone/.*/(bias|scale)$:",
)
Config, Model = DebertaV2Config, DebertaV2Model

"""Write a random-weight transformers checkpoint, with a tokenizer, of an encoder ftjax loads:
`python scripts/random_checkpoint.py --arch=roberta --out=checkpoints/roberta-tiny [--corpus=FILE.tsv]`.

For checking the whole pipeline (load → train → evaluate → export) on an architecture whose pretrained
weights are not at hand offline. The weights are transformers' own random initialisation (seeded), so
accuracy is whatever a small model learns from scratch. Tokenizers: the WordPiece architectures (bert,
electra, distilbert, deberta-v2) take the packaged MiniLM's vocabulary; roberta gets a byte-level BPE
trained with the `tokenizers` library on the text columns of --corpus (a GLUE-style TSV).
"""

import csv
import shutil
import sys
from pathlib import Path

from absl import flags

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without installing
from ftjax import cli  # noqa: E402
from ftjax.errors import InputError  # noqa: E402

ARCHS = ("bert", "roberta", "electra", "distilbert", "deberta-v2")
flags.DEFINE_enum("arch", None, ARCHS, "architecture (model_type)")
flags.DEFINE_string("out", None, "output folder")
flags.DEFINE_string("corpus", None, "roberta: TSV whose text columns train the BPE tokenizer")
flags.DEFINE_integer("hidden", 128, "hidden size [features]")
flags.DEFINE_integer("layers", 4, "encoder layers")
flags.DEFINE_integer("heads", 4, "attention heads")
flags.DEFINE_integer("bpe_vocab", 8000, "roberta: BPE vocabulary size [tokens]")
flags.DEFINE_integer("seed", 0, "torch seed of the random initialisation")
flags.mark_flags_as_required(["arch", "out"])
FLAGS = flags.FLAGS

MINILM_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def config(arch: str, vocab_size: int):
  import transformers

  size = dict(hidden_size=FLAGS.hidden, num_hidden_layers=FLAGS.layers, num_attention_heads=FLAGS.heads)
  size.update(intermediate_size=4 * FLAGS.hidden, vocab_size=vocab_size)
  if arch == "bert":
    return transformers.BertConfig(**size)
  if arch == "roberta":  # pad id 1, positions from 2, as roberta-base
    return transformers.RobertaConfig(**size, max_position_embeddings=514, type_vocab_size=1, pad_token_id=1)
  if arch == "electra":  # ELECTRA-small's narrower embeddings
    return transformers.ElectraConfig(**size, embedding_size=FLAGS.hidden // 2)
  if arch == "distilbert":
    return transformers.DistilBertConfig(
      vocab_size=vocab_size, dim=FLAGS.hidden, n_layers=FLAGS.layers, n_heads=FLAGS.heads, hidden_dim=4 * FLAGS.hidden
    )
  # DeBERTa-v3's attention: log-bucketed relative positions, shared keys, no absolute positions
  return transformers.DebertaV2Config(
    **size,
    relative_attention=True,
    pos_att_type=["p2c", "c2p"],
    position_buckets=256,
    norm_rel_ebd="layer_norm",
    share_att_key=True,
    position_biased_input=False,
    type_vocab_size=0,
    layer_norm_eps=1e-7,
  )


def bpe_tokenizer(corpus: Path, out: Path):
  """A byte-level BPE (RoBERTa's special tokens, <pad> = 1) trained on the TSV's text columns."""
  import tokenizers
  from transformers import RobertaTokenizerFast

  with open(corpus, encoding="utf-8", newline="") as f:
    rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
  if not rows:
    raise InputError(f"{corpus}: no rows under a header line")
  columns = [c for c in rows[0] if c.startswith("sentence") or c in ("question", "text")]
  if not columns:
    raise InputError(f"{corpus}:1: no text column (sentence*, question, text) among {list(rows[0])}")
  texts = [row[c] for row in rows for c in columns if row[c]]
  bpe = tokenizers.ByteLevelBPETokenizer()
  bpe.train_from_iterator(texts, vocab_size=FLAGS.bpe_vocab, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
  bpe.save_model(str(out))  # vocab.json, merges.txt
  tokenizer = RobertaTokenizerFast.from_pretrained(out)  # reads vocab.json and merges.txt
  tokenizer.save_pretrained(out)
  return len(tokenizer)


def main(argv):
  del argv
  import torch
  import transformers

  from ftjax import models

  out = Path(FLAGS.out)
  out.mkdir(parents=True, exist_ok=True)
  if FLAGS.arch == "roberta":
    if not FLAGS.corpus:
      raise InputError("--arch=roberta trains its BPE tokenizer on --corpus=FILE.tsv")
    vocab_size = bpe_tokenizer(Path(FLAGS.corpus), out)
  else:
    minilm = models.resolve("minilm")
    for name in MINILM_FILES:
      shutil.copy(minilm / name, out / name)
    vocab_size = transformers.AutoTokenizer.from_pretrained(out).vocab_size
  torch.manual_seed(FLAGS.seed)
  transformers.AutoModel.from_config(config(FLAGS.arch, vocab_size)).save_pretrained(out)
  print(f"wrote {out}: random {FLAGS.arch} ({FLAGS.layers} layers, hidden {FLAGS.hidden}, vocab {vocab_size})")


if __name__ == "__main__":
  cli.run(main)

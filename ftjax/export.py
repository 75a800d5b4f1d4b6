"""Exporting a run to Hugging Face's formats, and importing LoRA adapters that PEFT wrote.

Two forms, for two audiences:
- `export_hf` writes a merged transformers checkpoint (config.json, model.safetensors, tokenizer files):
  LoRA and DoRA are folded into the kernels with `ftjax.peft.lora.merge`, so anyone with transformers
  loads it with the Auto class of the task and needs neither ftjax nor peft. It is as large as the
  backbone. Adapters, soft prompts and prefixes change the computation itself, not just the weights,
  so they have no vanilla-transformers form.
- `export_peft` writes a LoRA run as a PEFT adapter (adapter_config.json, adapter_model.safetensors):
  only the factors and the head, kilobytes to a few MB, loaded with `peft.PeftModel.from_pretrained` on
  top of the base checkpoint. `import_peft_adapter` reads such a folder back (ours or PEFT's own).
  A decoder's prompt-tuning run becomes PEFT's PROMPT_TUNING adapter (`prompt_embeddings`). Prefix
  tuning and encoder prompts compute differently in PEFT (positions; where the soft tokens sit) and
  are refused with the reason; bottleneck adapters have no PEFT or transformers form.

Names. Backbone tensors go through each architecture's `hf_names` table, the same one that loads
checkpoints, under the prefix of the task class (`bert.`, `transformer.`). Heads are named as
transformers' task classes name them (`classifier`, `score`, `qa_outputs`) in torch's (out, in) layout.
PEFT stores LoRA per adapted module `<m>` as `base_model.model.<m>.lora_A.weight` = Aᵀ (r, in) and
`lora_B.weight` = Bᵀ (out, r), DoRA's magnitude as `<m>.lora_magnitude_vector` (out,), and the head
(`modules_to_save`) as `base_model.model.<head>.weight`/`.bias`. Its scale is alpha/r (alpha/√r with
rsLoRA), as ours. GPT-2's Conv1D stores its weight (in, out) (`fan_in_fan_out`), but that concerns only
the base weight: the LoRA factors are torch Linear layers in both cases.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from ftjax.models import bert, deberta_v2, distilbert, electra, gemma3, gguf, gpt2, llama, roberta
from ftjax.models.loading import abstract_params, read_tensors
from ftjax.peft import lora
from ftjax.peft.spec import PeftSpec

TASKS = ("sequence_classification", "token_classification", "question_answering", "causal_lm", "encoder")

# (model_type, task) → (transformers class, prefix of the backbone's names in its state dict, head module).
HF_CLASSES = {
  ("bert", "sequence_classification"): ("BertForSequenceClassification", "bert.", "classifier"),
  ("bert", "token_classification"): ("BertForTokenClassification", "bert.", "classifier"),
  ("bert", "question_answering"): ("BertForQuestionAnswering", "bert.", "qa_outputs"),
  ("bert", "encoder"): ("BertModel", "", None),
  ("gpt2", "sequence_classification"): ("GPT2ForSequenceClassification", "transformer.", "score"),
  ("gpt2", "token_classification"): ("GPT2ForTokenClassification", "transformer.", "classifier"),
  ("gpt2", "question_answering"): ("GPT2ForQuestionAnswering", "transformer.", "qa_outputs"),
  ("gpt2", "causal_lm"): ("GPT2LMHeadModel", "transformer.", None),  # lm_head is tied to wte
  ("gpt2", "encoder"): ("GPT2Model", "", None),
  ("llama", "causal_lm"): ("LlamaForCausalLM", "", None),  # llama.hf_names are already the full names
  ("mistral", "causal_lm"): ("MistralForCausalLM", "", None),
  ("qwen2", "causal_lm"): ("Qwen2ForCausalLM", "", None),
  ("qwen3", "causal_lm"): ("Qwen3ForCausalLM", "", None),
  ("gemma3_text", "causal_lm"): ("Gemma3ForCausalLM", "", None),
  # XLM-R shares these names; export_hf writes XLMRoberta… for an xlm-roberta config.json.
  ("roberta", "sequence_classification"): ("RobertaForSequenceClassification", "roberta.", "classifier"),
  ("roberta", "token_classification"): ("RobertaForTokenClassification", "roberta.", "classifier"),
  ("roberta", "question_answering"): ("RobertaForQuestionAnswering", "roberta.", "qa_outputs"),
  ("roberta", "encoder"): ("RobertaModel", "", None),
  ("electra", "token_classification"): ("ElectraForTokenClassification", "electra.", "classifier"),
  ("electra", "question_answering"): ("ElectraForQuestionAnswering", "electra.", "qa_outputs"),
  ("electra", "encoder"): ("ElectraModel", "", None),
  ("distilbert", "token_classification"): ("DistilBertForTokenClassification", "distilbert.", "classifier"),
  ("distilbert", "question_answering"): ("DistilBertForQuestionAnswering", "distilbert.", "qa_outputs"),
  ("distilbert", "encoder"): ("DistilBertModel", "", None),
  ("deberta-v2", "token_classification"): ("DebertaV2ForTokenClassification", "deberta.", "classifier"),
  ("deberta-v2", "question_answering"): ("DebertaV2ForQuestionAnswering", "deberta.", "qa_outputs"),
  ("deberta-v2", "encoder"): ("DebertaV2Model", "", None),
}

# Task classes whose head holds what ftjax keeps elsewhere: our module ("pooler" of the backbone, or a
# head module) → its name in the task class. RobertaClassificationHead is dense → tanh → out_proj on
# <s>, which is BERT's pooler followed by BERT's classifier.
HEAD_LAYOUTS = {
  ("roberta", "sequence_classification"): {"pooler": "classifier.dense", "classifier": "classifier.out_proj"},
}

# Why some (architecture, task) pairs have no export: their transformers head computes something else.
NO_EXPORT = {
  ("electra", "sequence_classification"): "ElectraForSequenceClassification's head is dense → GELU → out_proj on "
  "[CLS]; ftjax's sequence head is one dense layer on [CLS] or the mean (ELECTRA has no pooler)",
  ("distilbert", "sequence_classification"): "DistilBertForSequenceClassification's head is pre_classifier → ReLU "
  "→ classifier on [CLS]; ftjax's sequence head is one dense layer on [CLS] or the mean (DistilBERT has no pooler)",
  ("deberta-v2", "sequence_classification"): "DebertaV2ForSequenceClassification's ContextPooler is dense → GELU on "
  "[CLS] before its classifier; ftjax's sequence head is one dense layer on [CLS] or the mean (no pooler)",
}

# Our task → PEFT's task_type (which picks the PeftModel subclass and the Auto class of the base).
PEFT_TASK_TYPES = {
  "sequence_classification": "SEQ_CLS",
  "token_classification": "TOKEN_CLS",
  "question_answering": "QUESTION_ANS",
  "causal_lm": "CAUSAL_LM",
  "encoder": "FEATURE_EXTRACTION",
}

# Our config class → its architecture module (model_type, hf_names). By config, not model class: RoBERTa,
# ELECTRA and DistilBERT run bert.Model; Mistral, Qwen2 and Qwen3 run llama.Model and keep their
# model_type in the config.
ARCHITECTURES = {
  bert.Config: ("bert", bert),
  roberta.Config: ("roberta", roberta),
  electra.Config: ("electra", electra),
  distilbert.Config: ("distilbert", distilbert),
  deberta_v2.Config: ("deberta-v2", deberta_v2),
  gpt2.Config: ("gpt2", gpt2),
  llama.Config: ("llama", llama),
  gemma3.Config: ("gemma3_text", gemma3),
}


def architecture(model) -> tuple[str, object] | None:
  """(model_type, architecture module) of a backbone, or None for one ftjax cannot export. A config that
  records its own `model_type` (one module computing several) names it."""
  found = ARCHITECTURES.get(type(getattr(model, "config", None)))
  return None if found is None else (getattr(model.config, "model_type", found[0]), found[1])


TOKENIZER_FILES = (
  "tokenizer.json",
  "tokenizer_config.json",
  "vocab.txt",
  "special_tokens_map.json",
  "merges.txt",
  "vocab.json",
  "added_tokens.json",
)

PEFT_PREFIX = "base_model.model."


# ---------------------------------------------------------------------------------------------------
# Shared: which architecture, which names.


def _architecture(model, task: str):
  """(model_type, architecture module, transformers class, backbone prefix, head module name)."""
  if task not in TASKS:
    raise ValueError(f"task must be one of {TASKS}, got {task!r}")
  if architecture(model) is None:
    raise ValueError(f"cannot export a {type(model).__name__}: ftjax exports {[m for m, _ in ARCHITECTURES.values()]}")
  model_type, arch = architecture(model)
  if (model_type, task) in NO_EXPORT:
    raise ValueError(f"cannot export a {model_type} {task} run: {NO_EXPORT[model_type, task]}")
  if (model_type, task) not in HF_CLASSES:
    raise ValueError(
      f"transformers has no {model_type} class for task {task!r}; "
      f"supported: {[t for m, t in HF_CLASSES if m == model_type]}"
    )
  return (model_type, arch) + HF_CLASSES[model_type, task]


def _has_pooler(params: dict) -> bool:
  return "pooler" in params


def _dense_modules(arch, model, with_pooler: bool) -> dict[str, str]:
  """Our module path ("encoder/layer_0/attention/self/query") → HF module name, for every dense layer."""
  hf_keys = ["pooler.dense.weight"] if with_pooler else []
  return {
    ours[: -len("/kernel")]: theirs[: -len(".weight")]
    for ours, theirs, _ in arch.hf_names(model.config, hf_keys)
    if ours.endswith("/kernel")
  }


def _reject_non_lora(model, tree: dict, fmt: str):
  """Adapters, prompts and prefixes have no transformers (merged) or PEFT-LoRA form."""
  spec = model.peft
  methods = [m for m in ("adapter", "prompt", "prefix") if tree.get(m)]
  methods += [
    m
    for m, on in (("adapter", spec.adapter), ("prompt", spec.prompt_length), ("prefix", spec.prefix_length))
    if on and m not in methods
  ]
  if not methods:
    return
  if fmt == "hf":
    raise ValueError(
      f"this run uses {' and '.join(methods)} tuning, which changes the computation itself and has no "
      "vanilla-transformers form: only LoRA/DoRA can be merged into the weights. Keep the ftjax run "
      '(checkpoint + config) to use it, or export LoRA runs with format="peft".'
    )
  why = (
    " PEFT has no bottleneck-adapter type, and AdapterHub's `adapters` library, which has one, places and "
    "names its Houlsby/Pfeiffer modules its own way and is not something ftjax depends on or writes."
    if "adapter" in methods
    else ""
  )
  raise ValueError(
    f"this run uses {' and '.join(methods)} tuning: export_peft writes LoRA adapters only (and decoder prompt "
    f"tuning).{why} Keep the ftjax run (checkpoint + config) to use it"
  )


def _shortest_suffixes(selected: set[str], universe: set[str], sep: str) -> list[str]:
  """For each selected name, its shortest `sep`-suffix that matches (as a whole trailing component) no
  name of the universe outside `selected`. Used for PEFT's target_modules and for our regex."""

  def matches(suffix, name):
    return name == suffix or name.endswith(sep + suffix)

  found = []
  for name in sorted(selected):
    parts = name.split(sep)
    for k in range(1, len(parts) + 1):
      suffix = sep.join(parts[-k:])
      if parts[-k].isdigit():  # "h.1.attn.c_proj" reads better than "1.attn.c_proj"
        continue
      if all(n in selected for n in universe if matches(suffix, n)):
        break
    if suffix not in found:
      found.append(suffix)
  return found


def _head_tensors(
  head: dict | None, head_name: str | None, prefix: str, layout: dict | None = None, pooler: dict | None = None
) -> dict[str, np.ndarray]:
  """The head in torch's layout: `<prefix><name>.weight` (out, in) and `.bias`; with a HEAD_LAYOUTS
  `layout`, under the task class's names, the backbone's `pooler` included."""
  if head_name is None:
    return {}
  if layout:
    if pooler is None:
      raise ValueError(
        f"the task class's head starts with {layout['pooler']!r} (dense → tanh on the first token), which is "
        "ftjax's pooler, but this backbone has none: train with head_pooling=pooler on a checkpoint that has one"
      )
    renamed = _head_tensors(head, head_name, "")
    renamed.update(_head_tensors({"pooler": pooler}, "pooler", ""))
    return {prefix + _rename_head(name, layout): value for name, value in renamed.items()}
  if not head or head_name not in head:
    raise ValueError(
      f"the task's transformers class names its head {head_name!r}, but the run's head params have {sorted(head or {})}"
    )
  extra = sorted(set(head) - {head_name})
  if extra:
    raise ValueError(f"head params {extra} have no place in the exported model (only {head_name!r})")
  out = {f"{prefix}{head_name}.weight": np.asarray(head[head_name]["kernel"]).T}
  if "bias" in head[head_name]:
    out[f"{prefix}{head_name}.bias"] = np.asarray(head[head_name]["bias"])
  return out


def _rename_head(name: str, layout: dict) -> str:
  """`classifier.weight` → `classifier.out_proj.weight` by a HEAD_LAYOUTS layout."""
  module, _, leaf = name.rpartition(".")
  return f"{layout.get(module, module)}.{leaf}"


def _label_config(config: dict, task: str, head: dict | None, head_name: str | None, num_labels, id2label) -> dict:
  if task not in ("sequence_classification", "token_classification"):
    return config
  head_labels = np.shape(head[head_name]["kernel"])[1]
  num_labels = head_labels if num_labels is None else num_labels
  if num_labels != head_labels:
    raise ValueError(f"num_labels={num_labels}, but the head's {head_name} kernel has {head_labels} outputs")
  id2label = {i: f"LABEL_{i}" for i in range(num_labels)} if id2label is None else dict(id2label)
  if len(id2label) != num_labels:
    raise ValueError(f"id2label has {len(id2label)} entries for num_labels={num_labels}")
  config["num_labels"] = num_labels
  config["id2label"] = {str(int(i)): name for i, name in id2label.items()}
  config["label2id"] = {name: int(i) for i, name in id2label.items()}
  if num_labels == 1:
    config["problem_type"] = "regression"
  else:
    config.pop("problem_type", None)
  return config


def _save_safetensors(tensors: dict[str, np.ndarray], file: Path, metadata: dict | None = None):
  from safetensors.numpy import save_file

  save_file(
    {k: np.ascontiguousarray(np.asarray(v, np.float32)) for k, v in tensors.items()}, str(file), metadata=metadata
  )


# ---------------------------------------------------------------------------------------------------
# Merged transformers checkpoint.


def export_hf(
  out_dir, *, model, tree: dict, task: str, num_labels: int | None = None, id2label: dict | None = None, source_folder
) -> Path:
  """Writes a merged transformers checkpoint of the run to `out_dir`; returns its path.

  `tree` is the run's parameter pytree ({"backbone", "head"[, "lora"]}); `source_folder` the Hugging
  Face folder the backbone came from (its config.json is the base of ours; its tokenizer files are
  copied), or the GGUF file (config from its metadata, tokenizer files written from its vocabulary).
  Load the result with `AutoModelFor<Task>.from_pretrained(out_dir)`.
  """
  model_type, arch, hf_class, prefix, head_name = _architecture(model, task)
  _reject_non_lora(model, tree, "hf")
  source_folder, out_dir = Path(source_folder), Path(out_dir)

  backbone = tree["backbone"]
  if tree.get("lora"):
    backbone = lora.merge(backbone, tree["lora"], model.peft)
  # BertFor{TokenClassification,QuestionAnswering} have no pooler; sequence classification reads it
  # (RobertaForSequenceClassification in its head: HEAD_LAYOUTS).
  layout = HEAD_LAYOUTS.get((model_type, task))
  with_pooler = _has_pooler(backbone) and task in ("sequence_classification", "encoder") and not layout
  if model_type == "bert" and task == "sequence_classification" and not with_pooler:
    raise ValueError("BertForSequenceClassification reads the pooler, but this backbone has none")
  flat = traverse_util.flatten_dict(backbone, sep="/")
  tensors = {}
  for ours, theirs, transpose in arch.hf_names(model.config, ["pooler.dense.weight"] if with_pooler else []):
    value = np.asarray(flat.pop(ours))
    tensors[prefix + theirs] = value.T if transpose else value
  flat = {k: v for k, v in flat.items() if not k.startswith("pooler/")}
  if flat:
    raise ValueError(f"backbone params without a transformers name: {sorted(flat)[:5]}")
  tensors.update(_head_tensors(tree.get("head"), head_name, "", layout, backbone.get("pooler")))

  config = _source_config(source_folder)
  if config.get("model_type") == "xlm-roberta":  # same names and computation as RoBERTa's classes
    hf_class = hf_class.replace("Roberta", "XLMRoberta")
  config["architectures"] = [hf_class]
  config = _label_config(config, task, tree.get("head"), head_name, num_labels, id2label)
  if model_type == "gpt2":
    config["tie_word_embeddings"] = True  # we never write lm_head.weight: it is wte
    if task == "sequence_classification" and config.get("pad_token_id") is None:
      # GPT2ForSequenceClassification finds the last real token as the last one that is not padding;
      # GPT-2 has no pad token, and eos is what tokenizers pad GPT-2 with.
      config["pad_token_id"] = config.get("eos_token_id")

  out_dir.mkdir(parents=True, exist_ok=True)
  (out_dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
  _save_safetensors(tensors, out_dir / "model.safetensors", {"format": "pt"})
  _write_tokenizer(source_folder, out_dir)
  return out_dir


def _source_config(source: Path) -> dict:
  """The config.json dict of the checkpoint the backbone came from; of a GGUF file, its metadata's."""
  if source.suffix == ".gguf":
    return gguf.read_config(gguf.gguf.GGUFReader(source), str(source))
  return json.loads((source / "config.json").read_text())


def _write_tokenizer(source: Path, out_dir: Path):
  """Copies the checkpoint's tokenizer files; a GGUF file's tokenizer is saved as transformers' files."""
  if source.suffix == ".gguf":
    gguf.load_tokenizer(source).save_pretrained(out_dir)
    return
  for name in TOKENIZER_FILES:
    if (source / name).is_file():
      shutil.copyfile(source / name, out_dir / name)


# ---------------------------------------------------------------------------------------------------
# PEFT LoRA adapters.


def export_peft(
  out_dir, *, model, tree: dict, task: str, num_labels: int | None = None, id2label: dict | None = None, base_model: str
) -> Path:
  """Writes the run's LoRA factors and head as a PEFT adapter in `out_dir`; returns its path.

  `base_model` is recorded as `base_model_name_or_path` (a Hub id or a folder). Load with
  `peft.PeftModel.from_pretrained(AutoModelFor<Task>.from_pretrained(base_model, num_labels=…), out_dir)`.
  """
  model_type, arch, hf_class, prefix, head_name = _architecture(model, task)
  if model.peft.prompt_length and not (model.peft.adapter or model.peft.prefix_length or tree.get("lora")):
    return _export_prompt_tuning(Path(out_dir), model, tree, task, base_model)
  if model.peft.prefix_length:
    raise ValueError(
      "prefix tuning has no exact PEFT form: PEFT's PREFIX_TUNING stores the same per-layer keys and values, "
      "but transformers then counts the real tokens' positions from the prefix length, while ftjax's prefixes "
      "occupy no positions (with GPT-2 the logits differ by ~0.5, and agree to 2e-7 once ftjax's positions are "
      "shifted). Keep the ftjax run (checkpoint + config) to use it"
    )
  _reject_non_lora(model, tree, "peft")
  spec = model.peft
  if not tree.get("lora") or spec.lora_targets is None:
    raise ValueError("export_peft writes LoRA adapters, but this run has no LoRA factors (tree['lora'])")
  out_dir = Path(out_dir)

  modules = _dense_modules(arch, model, _has_pooler(tree["backbone"]))
  layers = {"/".join(path): factors for path, factors in lora.lora_layers(tree["lora"]).items()}
  unknown = sorted(set(layers) - set(modules) | ({"pooler"} & set(layers)))
  if unknown:
    raise ValueError(f"LoRA factors at {unknown[:3]} are not at a dense layer transformers knows")
  tensors = {}
  for ours, factors in layers.items():
    name = f"{PEFT_PREFIX}{prefix}{modules[ours]}"
    tensors[f"{name}.lora_A.weight"] = np.asarray(factors["a"]).T  # (r, in)
    tensors[f"{name}.lora_B.weight"] = np.asarray(factors["b"]).T  # (out, r)
    if spec.lora_dora:
      tensors[f"{name}.lora_magnitude_vector"] = np.asarray(factors["magnitude"])
  head, layout = tree.get("head"), HEAD_LAYOUTS.get((model_type, task))
  tensors.update(_head_tensors(head, head_name, PEFT_PREFIX, layout, tree["backbone"].get("pooler")))

  # PEFT matches a target t against module name m by m == t or m.endswith("." + t): give the shortest
  # names that pick exactly our adapted layers (["query", "value"] rather than every full path).
  universe = set(modules.values()) | ({head_name} if head_name else set())
  if layout:  # the task class has no pooler; its head has the layout's modules
    universe = (universe - {"pooler.dense"}) | set(layout.values())
  targets = _shortest_suffixes({modules[p] for p in layers}, universe, ".")
  config = {
    "peft_type": "LORA",
    "task_type": PEFT_TASK_TYPES[task],
    "base_model_name_or_path": str(base_model),
    "r": spec.lora_rank,
    "lora_alpha": spec.lora_alpha,
    "lora_dropout": spec.lora_dropout,
    "target_modules": targets,
    "use_rslora": spec.lora_rslora,
    "use_dora": spec.lora_dora,
    "fan_in_fan_out": model_type == "gpt2",  # Conv1D weights are (in, out)
    "modules_to_save": [head_name] if head_name else None,
    "bias": "none",
    "init_lora_weights": True,
    "inference_mode": True,
  }
  if head_name:  # PEFT has no field for labels (the base model is loaded with num_labels=…): check only
    _label_config({}, task, head, head_name, num_labels, id2label)
  out_dir.mkdir(parents=True, exist_ok=True)
  (out_dir / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
  _save_safetensors(tensors, out_dir / "adapter_model.safetensors", {"format": "pt"})
  return out_dir


def _export_prompt_tuning(out_dir: Path, model, tree: dict, task: str, base_model: str) -> Path:
  """A prompt-tuning run as PEFT's PROMPT_TUNING adapter: `prompt_embeddings` (virtual tokens, hidden).

  Exact only where both frameworks place the soft tokens alike: decoders, where both prepend them to
  the input and count positions from the first of them. Encoders differ: PEFT prepends them before
  [CLS] (so BERT's pooler would read a soft token), ftjax inserts them after it."""
  if not model.is_decoder or task != "causal_lm":
    raise ValueError(
      "PEFT's prompt tuning prepends the soft tokens before everything, [CLS] included, so a sequence head "
      "reads a soft token; ftjax inserts them after the first token. Only causal-LM runs of decoders "
      f"export to PEFT's PROMPT_TUNING (this is a {task} run)"
    )
  leaves = traverse_util.flatten_dict(tree.get("prompt") or {})
  if len(leaves) != 1:
    raise ValueError(f"a prompt-tuning run has one soft-prompt table; this tree's 'prompt' has {len(leaves)}")
  (embeddings,) = leaves.values()
  c = model.config
  config = {
    "peft_type": "PROMPT_TUNING",
    "task_type": PEFT_TASK_TYPES[task],
    "base_model_name_or_path": str(base_model),
    "num_virtual_tokens": int(embeddings.shape[0]),
    "token_dim": int(embeddings.shape[1]),
    "num_transformer_submodules": 1,
    "num_attention_heads": getattr(c, "num_attention_heads", None) or getattr(c, "n_head", None),
    "num_layers": getattr(c, "num_hidden_layers", None) or getattr(c, "n_layer", None),
    "prompt_tuning_init": "RANDOM",  # how PEFT would initialise; the trained values are in the file
    "inference_mode": True,
  }
  out_dir.mkdir(parents=True, exist_ok=True)
  (out_dir / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
  _save_safetensors({"prompt_embeddings": embeddings}, out_dir / "adapter_model.safetensors", {"format": "pt"})
  return out_dir


# PEFT options that change which modules are adapted or how, beyond what a PeftSpec expresses.
_UNSUPPORTED_PEFT_OPTIONS = (
  "rank_pattern",
  "alpha_pattern",
  "layer_replication",
  "target_parameters",
  "use_qalora",
  "lora_bias",
  "alora_invocation_tokens",
  "use_bdlora",
)


def _peft_matches(config: dict, name: str) -> bool:
  """Whether PEFT's target_modules (and exclude_modules) select module `name` (as PEFT does)."""
  excluded = config.get("exclude_modules")
  if excluded:
    if isinstance(excluded, str) and re.fullmatch(excluded, name):
      return False
    if not isinstance(excluded, str) and (name in excluded or any(name.endswith("." + e) for e in excluded)):
      return False
  targets = config.get("target_modules")
  if isinstance(targets, str):
    return re.fullmatch(targets, name) is not None
  return name in targets or any(name.endswith("." + t) for t in targets)


def import_peft_adapter(folder, model) -> tuple[PeftSpec, dict, dict | None]:
  """(spec, lora tree, head tree or None) from a PEFT LoRA adapter folder, for `model`'s architecture.

  The lora tree has ftjax's layout (`lora[<module path>] = {"a", "b"[, "magnitude"]}`); the head is read
  from `modules_to_save` when the adapter has one. Where the task class's head holds what ftjax keeps in
  the backbone (HEAD_LAYOUTS: RoBERTa's classifier.dense), the head tree has that part under "pooler":
  it replaces the backbone's pooler. Build the model with the returned spec
  (`from_pretrained(base, peft=spec)`) to apply them.
  """
  folder = Path(folder)
  config_file, weights_file = folder / "adapter_config.json", folder / "adapter_model.safetensors"
  for file in (config_file, weights_file):
    if not file.is_file():
      raise ValueError(f"{folder} is not a PEFT adapter folder: {file.name} is missing")
  config = json.loads(config_file.read_text())
  if config.get("peft_type") != "LORA":
    raise ValueError(f"{config_file}: peft_type {config.get('peft_type')!r}; ftjax imports LORA adapters only")
  unsupported = [k for k in _UNSUPPORTED_PEFT_OPTIONS if config.get(k)]
  if unsupported or config.get("bias", "none") != "none":
    raise ValueError(f"{config_file}: options {unsupported or ['bias']} have no ftjax equivalent")
  if architecture(model) is None:
    raise ValueError(f"cannot import an adapter into a {type(model).__name__}")
  model_type, arch = architecture(model)
  task = {t: ours for ours, t in PEFT_TASK_TYPES.items()}.get(config.get("task_type"))
  layout_of = {hf: ours for ours, hf in HEAD_LAYOUTS.get((model_type, task), {}).items()}
  params = abstract_params(model)
  modules = _dense_modules(arch, model, _has_pooler(params))
  module_of = {hf: ours for ours, hf in modules.items() if ours != "pooler"}  # our pooler hosts no LoRA
  kernels = traverse_util.flatten_dict(params, sep="/")
  prefixes = tuple(p for (m, _), (_, p, _) in HF_CLASSES.items() if m == model_type and p)

  used_prefixes = set()

  def strip(name):  # base_model.model.bert.encoder.… → encoder.…
    name = name[len(PEFT_PREFIX) :] if name.startswith(PEFT_PREFIX) else name
    for p in prefixes:
      if name.startswith(p):
        used_prefixes.add(p)
        return name[len(p) :]
    return name

  tensors = {k: v for k, (v, _) in read_tensors([weights_file]).items()}
  layers: dict[str, dict] = {}
  head: dict = {}
  heads = config.get("modules_to_save") or []
  for key, value in tensors.items():
    name = strip(key)
    for suffix, leaf in ((".lora_A.weight", "a"), (".lora_B.weight", "b"), (".lora_magnitude_vector", "magnitude")):
      if name.endswith(suffix):
        hf = name[: -len(suffix)]
        if hf not in module_of:
          raise ValueError(
            f"{weights_file}: tensor {key!r} adapts {hf!r}, which is not a dense layer ftjax "
            f"can adapt in this {model_type} model (e.g. {sorted(module_of)[:3]})"
          )
        ours = module_of[hf]
        layers.setdefault(ours, {})[leaf] = value if leaf == "magnitude" else value.T
        break
    else:
      head_name, _, leaf = name.rpartition(".")
      saved = any(head_name == m or head_name.startswith(m + ".") for m in heads)
      if not saved or leaf not in ("weight", "bias") or (layout_of and head_name not in layout_of):
        raise ValueError(
          f"{weights_file}: tensor {key!r} is neither a LoRA factor nor a weight of modules_to_save {heads}"
          + (f" that ftjax places ({sorted(layout_of)})" if layout_of else "")
        )
      ours = layout_of.get(head_name, head_name)
      head.setdefault(ours, {})["kernel" if leaf == "weight" else "bias"] = value.T if leaf == "weight" else value

  dora, rank = bool(config.get("use_dora")), int(config["r"])
  for ours, factors in layers.items():
    hf = modules[ours]
    needed = {"a", "b"} | ({"magnitude"} if dora else set())
    if set(factors) != needed:
      raise ValueError(f"{weights_file}: module {hf!r} has {sorted(factors)}, needs {sorted(needed)} (use_dora={dora})")
    d_in, d_out = kernels[ours + "/kernel"].shape
    expected = {"a": (d_in, rank), "b": (rank, d_out), "magnitude": (d_out,)}
    for leaf, value in factors.items():
      if value.shape != expected[leaf]:
        torch_shape = value.shape if leaf == "magnitude" else value.shape[::-1]
        raise ValueError(
          f"{weights_file}: tensor for {hf!r} {leaf} has shape {torch_shape} in PEFT's layout; "
          f"r={rank} and the layer's ({d_in} → {d_out}) need "
          f"{expected[leaf] if leaf == 'magnitude' else expected[leaf][::-1]}"
        )
  if not layers:
    raise ValueError(f"{weights_file} holds no LoRA factors (…lora_A.weight / …lora_B.weight)")
  # Every module target_modules selects must have its factors (unless layers_to_transform narrows the
  # selection: then the file is the truth). PEFT matched names below the task class (`bert.encoder…`).
  if not config.get("layers_to_transform"):
    prefix = next(iter(used_prefixes)) if len(used_prefixes) == 1 else ""
    wanted = {hf for hf in module_of if _peft_matches(config, prefix + hf)}
    missing = sorted(wanted - {modules[o] for o in layers})
    if missing:
      raise ValueError(
        f"{weights_file}: target_modules {config.get('target_modules')} selects {missing[0]!r}, "
        f"but the file has no {PEFT_PREFIX}…{missing[0]}.lora_A.weight"
      )

  # Our regex: the shortest path suffixes that select exactly the adapted layers.
  suffixes = _shortest_suffixes(set(layers), set(modules), "/")
  spec = PeftSpec(
    lora_targets="(^|/)(" + "|".join(re.escape(s) for s in suffixes) + ")$",
    lora_rank=rank,
    lora_alpha=float(config["lora_alpha"]),
    lora_dropout=float(config.get("lora_dropout") or 0.0),
    lora_rslora=bool(config.get("use_rslora")),
    lora_dora=dora,
  )
  lora_tree = traverse_util.unflatten_dict(
    {
      tuple(o.split("/")) + (leaf,): jnp.asarray(v, jnp.float32)
      for o, factors in layers.items()
      for leaf, v in factors.items()
    }
  )
  head_tree = {k: {n: jnp.asarray(v, jnp.float32) for n, v in h.items()} for k, h in head.items()}
  return spec, lora_tree, head_tree or None

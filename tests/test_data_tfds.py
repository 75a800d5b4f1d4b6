"""Local TFDS builders: prepare once, read back what the raw reader gives, leave nothing behind on failure."""

from pathlib import Path

import pytest

from configs.base import SHARED_DATA as DATA
from ftjax.data import raw, sources, tfds_builders

GLUE_RTE_LIKE = (
  "index\tsentence1\tsentence2\tlabel\n0\tA cat sat.\tA cat is sitting.\tentailment\n"
  '1\tIt rains.\tIt is sunny.\tnot_entailment\n2\tHe ran "fast.\tHe moved.\tentailment\n'
)


def _glue_folder(root: Path, dev: str = GLUE_RTE_LIKE) -> Path:
  root.mkdir()
  (root / "train.tsv").write_text(GLUE_RTE_LIKE)
  (root / "dev.tsv").write_text(dev)
  (root / "test.tsv").write_text("index\tsentence1\tsentence2\n0\tX.\tY.\n")
  return root


def test_round_trip_and_reuse(tmp_path):
  data, tfds_dir = _glue_folder(tmp_path / "rte"), tmp_path / "tfds"
  dev = tfds_builders.load_split("glue/rte", "dev", data_dir=data, tfds_dir=tfds_dir)
  assert len(dev) == 3
  assert list(dev) == list(sources.read("glue/rte", data, "dev"))  # strings decoded, file order kept
  assert dev[1:] == list(sources.read("glue/rte", data, "dev"))[1:]
  assert tfds_builders.load_split("glue/rte", "test", data_dir=data, tfds_dir=tfds_dir)[0]["label"] == -1
  prepared = sorted((tfds_dir / "ftjax_local").iterdir())
  assert len(prepared) == 1
  tfds_builders.load_split("glue/rte", "train", data_dir=data, tfds_dir=tfds_dir)  # reuses the same build
  assert sorted((tfds_dir / "ftjax_local").iterdir()) == prepared
  # An edited raw file changes the fingerprint, so it is prepared again.
  (data / "dev.tsv").write_text(GLUE_RTE_LIKE.replace("A cat sat.", "A dog sat."))
  assert tfds_builders.load_split("glue/rte", "dev", data_dir=data, tfds_dir=tfds_dir)[0]["text"] == "A dog sat."
  assert len(list((tfds_dir / "ftjax_local").iterdir())) == 2


def test_failed_prepare_leaves_nothing(tmp_path):
  bad = GLUE_RTE_LIKE + "3\tOnly two columns\tentailment\n"
  data, tfds_dir = _glue_folder(tmp_path / "rte", dev=bad), tmp_path / "tfds"
  with pytest.raises(raw.DataError, match=r"dev.tsv:5: malformed row"):
    tfds_builders.load_split("glue/rte", "dev", data_dir=data, tfds_dir=tfds_dir)
  assert [p for p in tfds_dir.rglob("*") if p.is_file()] == []
  assert list(tfds_dir.iterdir()) == []


def test_tfds_by_name_finds_its_builders_without_tensorflow(tmp_path):
  """Up to the network call: without TensorFlow, TFDS registers no builder until its module is imported
  (before the fix: "Dataset glue not found"); each source TFDS has by name builds, array_record, offline."""
  for source in ("glue/rte", "conll2003", "squad"):
    tfds_builders.import_hub_builder(source)
    builder = tfds_builders.tfds.builder(source, data_dir=str(tmp_path), file_format="array_record")
    assert builder.name == source.split("/")[0] and not builder.is_prepared()


@pytest.mark.skipif(not (DATA / "rte").is_dir(), reason=f"{DATA} not present")
def test_real_rte_through_tfds(tmp_path):
  dev = tfds_builders.load_split("glue/rte", "dev", data_dir=DATA / "rte", tfds_dir=tmp_path)
  assert len(dev) == 277
  assert list(dev) == list(sources.read("glue/rte", DATA / "rte", "dev"))


def test_without_shared_data_the_configs_fall_back_to_tfds_by_name_saying_so(tmp_path, monkeypatch, capsys):
  """A clone without ../shared/data: the configs leave data_dir unset, the run reads TFDS by name and says so
  (here a stand-in for the download, as this machine has no network), and without the network one error
  names both ways out."""
  from configs import base, conll2003, glue
  from ftjax.tasks import datasets

  monkeypatch.setattr(base, "SHARED_DATA", tmp_path / "no-shared-data")
  config = glue.get_config("rte")
  assert config.data_dir is None and conll2003.get_config().data_dir is None
  config.tfds_dir = str(tmp_path / "tfds")

  hub_rows = [{"idx": 0, "sentence1": b"A man sleeps.", "sentence2": b"Nobody sleeps.", "label": 1}]
  monkeypatch.setattr(tfds_builders.tfds, "data_source", lambda name, split, data_dir, builder_kwargs: hub_rows)
  rows = list(datasets.examples(config, "dev"))
  assert rows[0]["text"] == "A man sleeps." and rows[0]["text_pair"] == "Nobody sleeps." and rows[0]["label"] == 1
  assert "data_dir unset: reading 'glue/rte' dev through TFDS by name" in capsys.readouterr().out

  def offline(name, split, data_dir, builder_kwargs):
    raise ConnectionError("Failed to resolve host")

  monkeypatch.setattr(tfds_builders.tfds, "data_source", offline)
  with pytest.raises(raw.DataError) as error:
    datasets.examples(config, "train")
  message = str(error.value)
  assert "\n" not in message and "--config.data_dir=FOLDER" in message and "network" in message
  assert "ConnectionError: Failed to resolve host" in message

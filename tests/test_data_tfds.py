"""Local TFDS builders: prepare once, read back what the raw reader gives, leave nothing behind on failure."""

from pathlib import Path

import pytest

from ftjax.data import raw, tfds_builders

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
  assert list(dev) == list(raw.read("glue/rte", data, "dev"))  # strings decoded, file order kept
  assert dev[1:] == list(raw.read("glue/rte", data, "dev"))[1:]
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


def test_hub_without_network_says_to_use_data_dir(tmp_path):
  with pytest.raises(raw.DataError, match="set data_dir"):
    tfds_builders.load_split("glue/sst2", "dev", tfds_dir=tmp_path)


DATA = Path(__file__).parents[1].parent / "shared" / "data"


@pytest.mark.skipif(not (DATA / "rte").is_dir(), reason=f"{DATA} not present")
def test_real_rte_through_tfds(tmp_path):
  dev = tfds_builders.load_split("glue/rte", "dev", data_dir=DATA / "rte", tfds_dir=tmp_path)
  assert len(dev) == 277
  assert list(dev) == list(raw.read("glue/rte", DATA / "rte", "dev"))

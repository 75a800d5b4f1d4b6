"""Raw readers on the real files (row counts from ../shared/data/README.md) and on small broken files."""

from pathlib import Path

import pytest

from configs.base import SHARED_DATA as DATA
from ftjax.data import raw, sources


needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"{DATA} not present")


@needs_data
@pytest.mark.parametrize(
  "source, folder, split, rows",
  [
    ("glue/sst2", "sst2", "dev", 872),
    ("glue/cola", "cola", "dev", 1043),
    ("glue/mrpc", "mrpc", "dev", 408),
    ("glue/rte", "rte", "dev", 277),
    ("glue/stsb", "stsb", "dev", 1500),
    ("conll2003", "conll2003", "dev", 3250),
    ("glue/sst2", "sst2", "test", 1821),
    ("glue/rte", "rte", "test", 3000),
  ],
)
def test_real_files_row_counts(source, folder, split, rows):
  examples = list(sources.read(source, DATA / folder, split))
  assert len(examples) == rows
  assert [e["idx"] for e in examples] == list(range(rows))


@needs_data
def test_real_file_contents():
  sst2 = next(sources.read("glue/sst2", DATA / "sst2", "dev"))
  assert sst2 == {"idx": 0, "text": "it 's a charming and often affecting journey . ", "label": 1}
  mrpc = next(sources.read("glue/mrpc", DATA / "mrpc", "dev"))  # quote chars kept verbatim (QUOTE_NONE)
  assert mrpc["text_pair"].startswith('"The foodservice') and mrpc["label"] == 1
  assert next(sources.read("glue/stsb", DATA / "stsb", "dev"))["label"] == 5.0
  assert all(e["label"] == -1 for e in sources.read("glue/sst2", DATA / "sst2", "test"))
  cola = list(sources.read("glue/cola", DATA / "cola", "dev"))
  assert {e["label"] for e in cola} == {0, 1} and cola[0]["text"].startswith("The sailors")
  conll = next(sources.read("conll2003", DATA / "conll2003", "dev"))
  assert conll["tokens"][:3] == ["CRICKET", "-", "LEICESTERSHIRE"]
  assert [raw.CONLL2003_TAGS[t] for t in conll["tags"][:3]] == ["O", "O", "B-ORG"]  # I-ORG after O


@needs_data
def test_e2e_groups_references_for_dev():
  dev = list(sources.read("e2e_nlg", DATA / "e2e" / "e2e-dataset", "dev"))
  assert len(dev) == 547  # distinct meaning representations of the dev set
  assert dev[0]["mr"] == "name[Alimentum], area[city centre], familyFriendly[no]" and len(dev[0]["refs"]) == 6
  assert sum(len(e["refs"]) for e in dev) == 4672


def test_iob1_to_iob2():
  assert raw.iob1_to_iob2(["I-PER", "I-PER", "O", "I-LOC"]) == ["B-PER", "I-PER", "O", "B-LOC"]
  # B- in IOB1 separates two adjacent entities of one type; a type change starts an entity too.
  assert raw.iob1_to_iob2(["I-PER", "B-PER", "I-PER", "I-ORG"]) == ["B-PER", "B-PER", "I-PER", "B-ORG"]
  assert raw.iob1_to_iob2(["O", "I-MISC", "I-MISC"]) == ["O", "B-MISC", "I-MISC"]
  with pytest.raises(ValueError, match="I-FOO"):
    raw.iob1_to_iob2(["O", "I-FOO"])


def _write(path: Path, text: str) -> Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(text, encoding="utf-8")
  return path


@pytest.mark.parametrize(
  "content, message",
  [
    ("sentence\tlabel\ngood film\t1\nbad\n", r"dev.tsv:3: malformed row"),
    ("sentence\tlabel\ngood film\t1\nbad film\t7\n", r"dev.tsv:3: unknown label '7'"),
    ("sentence\tlabel\n  \t1\n", r"dev.tsv:2: empty text"),
    ("text\tlabel\ngood\t1\n", r"dev.tsv:1: missing column 'sentence'"),
  ],
)
def test_bad_glue_files(tmp_path, content, message):
  _write(tmp_path / "dev.tsv", content)
  with pytest.raises(raw.DataError, match=message):
    list(sources.read("glue/sst2", tmp_path, "dev"))


def test_missing_paths(tmp_path):
  with pytest.raises(raw.DataError, match="does not exist"):
    list(sources.read("glue/sst2", tmp_path / "nowhere", "dev"))
  with pytest.raises(raw.DataError, match=r"dev.tsv: file does not exist"):
    list(sources.read("glue/sst2", tmp_path, "dev"))


def test_bad_conll(tmp_path):
  _write(tmp_path / "eng.testa", "-DOCSTART- -X- O O\n\nEU NNP I-NP I-ORG\nrejects VBZ I-VP I-FOO\n")
  with pytest.raises(raw.DataError, match=r"eng.testa:4: cannot convert IOB1 to IOB2: tag 'I-FOO'"):
    list(sources.read("conll2003", tmp_path, "dev"))
  _write(tmp_path / "eng.testa", "EU NNP I-ORG\n")
  with pytest.raises(raw.DataError, match=r"eng.testa:1: malformed row"):
    list(sources.read("conll2003", tmp_path, "dev"))


def test_table_csv_tsv_jsonl(tmp_path):
  _write(tmp_path / "train.csv", "premise,hypothesis,gold\nA,B,yes\nC,D,no\nE,F,maybe\n")
  _write(tmp_path / "dev.jsonl", '{"premise": "A", "hypothesis": "B", "gold": "no"}\n')
  kwargs = dict(text_fields="premise,hypothesis", label_field="gold")
  train = list(sources.read("table", tmp_path, "train", **kwargs))
  assert [e["label"] for e in train] == [2, 1, 0]  # sorted names: maybe, no, yes
  assert list(sources.read("table", tmp_path, "dev", **kwargs)) == [
    {"idx": 0, "text": "A", "text_pair": "B", "label": 1}
  ]
  _write(tmp_path / "dev.jsonl", '{"premise": "A", "hypothesis": "B", "gold": "no"}\n{"premise": "A"}\n')
  with pytest.raises(raw.DataError, match=r"dev.jsonl:2: missing column 'hypothesis'"):
    list(sources.read("table", tmp_path, "dev", **kwargs))
  _write(tmp_path / "dev.jsonl", '{"premise": "A", "hypothesis": "B", "gold": "perhaps"}\n')
  with pytest.raises(raw.DataError, match=r"dev.jsonl:1: unknown label 'perhaps'"):
    list(sources.read("table", tmp_path, "dev", **kwargs))
  _write(tmp_path / "test.tsv", "premise\thypothesis\nA\tB\tC\n")
  with pytest.raises(raw.DataError, match=r"test.tsv:2: malformed row"):
    list(sources.read("table", tmp_path, "test", **kwargs))


def test_squad_and_text(tmp_path):
  good = {
    "data": [
      {
        "title": "T",
        "paragraphs": [
          {
            "context": "Paris is in France.",
            "qas": [{"id": "q1", "question": "Where is Paris?", "answers": [{"text": "France", "answer_start": 12}]}],
          }
        ],
      }
    ]
  }
  import json

  _write(tmp_path / "dev-v1.1.json", json.dumps(good))
  assert list(sources.read("squad", tmp_path, "dev")) == [
    {
      "idx": 0,
      "id": "q1",
      "title": "T",
      "context": "Paris is in France.",
      "question": "Where is Paris?",
      "answer_texts": ["France"],
      "answer_starts": [12],
    }
  ]
  del good["data"][0]["paragraphs"][0]["qas"][0]["question"]
  _write(tmp_path / "dev-v1.1.json", json.dumps(good))
  with pytest.raises(raw.DataError, match=r"missing key data\[0\].paragraphs\[0\].qas\[0\].question"):
    list(sources.read("squad", tmp_path, "dev"))
  _write(tmp_path / "valid.txt", " \n = Title = \n text\n")
  assert "".join(e["text"] for e in sources.read("wikitext2", tmp_path, "dev")) == " \n = Title = \n text\n"

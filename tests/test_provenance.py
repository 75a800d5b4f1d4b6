"""What runs record about their software and machine, and what the project promises about versions."""

import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from ftjax import provenance
from ftjax.models import loading

REPO = Path(__file__).resolve().parents[1]


def requirements(extra: str | None = None) -> list[Requirement]:
  project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
  return [Requirement(r) for r in (project["optional-dependencies"][extra] if extra else project["dependencies"])]


def test_every_dependency_has_a_lower_and_a_major_upper_bound():
  for r in requirements() + requirements("test") + requirements("e2e"):
    operators = {s.operator for s in r.specifier}
    assert operators == {">=", "<"} or operators == {"=="}, f"{r}: wants >=lower,<next major (or an exact pin)"
    if operators == {">=", "<"}:
      low = next(s.version for s in r.specifier if s.operator == ">=")
      high = next(s.version for s in r.specifier if s.operator == "<")
      assert int(high.split(".")[0]) == int(low.split(".")[0]) + 1, f"{r}: the upper bound is not the next major"


def test_the_installed_packages_satisfy_the_bounds():
  """CI tests what the bounds promise: a lower bound above what is installed here would be untested."""
  for r in requirements() + requirements("test"):
    installed = metadata.version(r.name)
    assert r.specifier.contains(installed, prereleases=True), f"{r.name} {installed} is outside {r.specifier}"


def test_versions_name_every_package_that_decides_numbers():
  versions = provenance.versions()
  assert set(versions) == {"python", *provenance.PACKAGES}
  assert versions["jax"] == metadata.version("jax") and versions["python"].count(".") == 2


def test_versions_line_lists_what_runs_recorded():
  runs = [{"versions": {"jax": "0.10.2", "flax": "0.12.8"}}, {"versions": {"jax": "0.10.3", "flax": "0.12.8"}}, {}]
  line = provenance.versions_line(runs)
  assert line == "Package versions: jax 0.10.2 / 0.10.3, flax 0.12.8; 1 older run(s) did not record them."
  assert "not recorded" in provenance.versions_line([{}])


@pytest.mark.parametrize(
  "files, weights",
  [
    (["config.json", "model.safetensors", "pytorch_model.bin", "vocab.txt"], "*.safetensors"),
    (["config.json", "model-00001-of-00002.safetensors", "model.safetensors.index.json"], "*.safetensors"),
    (["config.json", "pytorch_model.bin", "merges.txt"], "*.bin"),
  ],
)
def test_hub_downloads_one_copy_of_the_weights(files, weights):
  patterns = loading.hub_patterns(files)
  assert weights in patterns and ({"*.safetensors", "*.bin"} - {weights}).isdisjoint(patterns)


def test_hub_resolve_asks_for_safetensors_only_when_the_repository_has_both(monkeypatch, tmp_path):
  """Up to the network call: the repository's listing decides what snapshot_download is asked for."""
  import huggingface_hub

  asked = {}
  monkeypatch.setattr(huggingface_hub, "list_repo_files", lambda name: ["config.json", "model.safetensors", "a.bin"])
  monkeypatch.setattr(
    huggingface_hub, "snapshot_download", lambda name, allow_patterns: asked.update({name: allow_patterns}) or tmp_path
  )
  assert loading.resolve("someone/some-bert") == tmp_path
  assert "*.bin" not in asked["someone/some-bert"] and "*.safetensors" in asked["someone/some-bert"]

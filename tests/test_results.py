"""ftjax/results.py write_page: a results page's hand-written head survives its generator, byte for byte."""

from ftjax.results import GENERATED_BELOW, write_page


def test_findings_above_the_marker_survive_a_rewrite_byte_for_byte(tmp_path):
  page = tmp_path / "t.md"
  # CRLF, trailing spaces, non-ASCII and a blank line before the marker: nothing of the head is normalised
  head = f"# Old title  \r\n\r\n## Findings\n\n- ±0.3 points — see `x`\n\n\n{GENERATED_BELOW}\n".encode()
  page.write_bytes(head + b"\nold body\nwith two lines\n")
  write_page(page, "New title", "new body\n")
  assert page.read_bytes() == head + b"\nnew body\n"
  write_page(page, "New title", "newer body\n")
  assert page.read_bytes() == head + b"\nnewer body\n"
  assert not list(tmp_path.glob("*.part"))  # written by rename: no half-written file left beside it


def test_a_page_without_marker_gets_title_and_marker_and_no_findings(tmp_path):
  missing = tmp_path / "new.md"
  write_page(missing, "A table", "| a |\n")
  expected = f"# A table\n\n{GENERATED_BELOW}\n\n| a |\n"
  assert missing.read_text() == expected
  old = tmp_path / "old.md"  # a page as the generators wrote it before: its whole text is generated
  old.write_text("# A table\n\nRegenerate: ...\n\n| a |\n")
  write_page(old, "A table", "| a |\n")
  assert old.read_text() == expected
  marker_last = tmp_path / "edge.md"  # the marker as the file's last line, without a newline
  marker_last.write_text(f"# T\n\nfound\n\n{GENERATED_BELOW}")
  write_page(marker_last, "T", "body\n")
  assert marker_last.read_text() == f"# T\n\nfound\n\n{GENERATED_BELOW}\n\nbody\n"

"""results/<table>.png: grouped bars per column (± std over seeds), or a metric against trainable parameters."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
  from configs.tables import Table


def plot(table: Table, scores: dict, path: Path) -> bool:
  """bars: one group per column, a bar per row (± std); params: the metric against trainable parameters."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  rows = [r for r in scores if any("mean" in e for e in scores[r].values())]
  if not rows:
    return False
  if table.plot == "params":
    fig, ax = plt.subplots(figsize=(8, 5))
    for column in table.columns:
      points = sorted(
        (e["trainable_params"], e["mean"], row)
        for row in rows
        if "mean" in (e := scores[row].get(column.label, {})) and e.get("trainable_params")
      )
      if not points:
        continue
      ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=column.label)
      for x, y, row in points:
        ax.annotate(row.replace(" of 6 layers", ""), (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters")
    ax.set_ylabel(table.columns[0].metric)
  else:
    fig, ax = plt.subplots(figsize=(max(8, 1.6 * len(table.columns)), 6))
    width = 0.8 / len(rows)
    for i, row in enumerate(rows):
      xs, ys, errs = [], [], []
      for j, column in enumerate(table.columns):
        entry = scores[row].get(column.label, {})
        if "mean" in entry:
          xs.append(j - 0.4 + (i + 0.5) * width)
          ys.append(entry["mean"])
          errs.append(entry["std"])
      ax.bar(xs, ys, width, yerr=errs, capsize=2, label=row)
    refs = [(j, c.reference) for j, c in enumerate(table.columns) if c.reference is not None]
    if refs:
      ax.scatter(
        [j for j, _ in refs],
        [v for _, v in refs],
        marker="_",
        s=900,
        color="black",
        label=table.reference_label,
        zorder=3,
      )
    ax.set_xticks(range(len(table.columns)), [c.label for c in table.columns])
    splits = sorted({c.split for c in table.columns})
    ax.set_ylabel(f"{' / '.join(splits)} score (mean ± std over seeds)")
  ax.set_title(table.title, fontsize=9)
  ax.grid(alpha=0.3)
  if table.plot == "params":
    ax.legend(fontsize=7)
  else:  # below the axes: inside, a legend of many rows hides the bars of the last column
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=min(4, len(rows) + 1))
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return True

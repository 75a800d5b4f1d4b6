"""Evaluation metrics, computed by the libraries people report them with.

Scale: every score is a percentage, 0-100, including Matthews and Pearson/Spearman correlations (x100),
because GLUE papers and leaderboards report them that way and one scale avoids mixing 0.85 with 85.
Perplexity is the exception: it is not a fraction of anything and is reported as is.

Names are the project's contract: accuracy, f1, matthews, pearson, spearman, precision, recall,
exact_match, bleu, rougeL, perplexity (and for E2E NLG also nist, meteor, cider; NIST and CIDEr
are not fractions and are reported unscaled, as the E2E challenge and the LoRA paper do; for
summarisation rouge1, rouge2, rougeL; for dialogue bleu1, bleu2, distinct1, distinct2).

`f1` for classification is binary F1 of class 1 when there are two classes (MRPC's and QQP's convention:
the positive class is "equivalent"/"duplicate") and macro F1 over classes otherwise.

The only logic written here rather than imported is the official SQuAD evaluation (answer normalisation,
exact match, token F1, max over references) and the official SemEval-2010 Task 8 score (its Perl scorer's
macro-F1), which have no maintained package.
"""

from __future__ import annotations

import collections
import math
import re
import string
from typing import Sequence

import numpy as np

# The scoring libraries (sklearn, scipy.stats, seqeval, sacrebleu, rouge-score with nltk) are imported
# inside the function that uses them: together they took ~3 s of every script's start on a 2-core
# machine, and a run needs at most two of them.


def classification(labels: Sequence[int], predictions: Sequence[int], num_classes: int = 2) -> dict[str, float]:
  """accuracy, f1 (binary for 2 classes, else macro) and matthews, all x100."""
  import sklearn.metrics

  labels, predictions = np.asarray(labels), np.asarray(predictions)
  average = "binary" if num_classes == 2 else "macro"
  return {
    "accuracy": 100 * sklearn.metrics.accuracy_score(labels, predictions),
    "f1": 100 * sklearn.metrics.f1_score(labels, predictions, average=average, zero_division=0),
    "matthews": 100 * sklearn.metrics.matthews_corrcoef(labels, predictions),
  }


def regression(labels: Sequence[float], predictions: Sequence[float]) -> dict[str, float]:
  """pearson and spearman correlations x100 (STS-B)."""
  import scipy.stats

  return {
    "pearson": 100 * float(scipy.stats.pearsonr(labels, predictions)[0]),
    "spearman": 100 * float(scipy.stats.spearmanr(labels, predictions)[0]),
  }


def ner(labels: Sequence[Sequence[str]], predictions: Sequence[Sequence[str]]) -> tuple[dict[str, float], str]:
  """Entity-level precision, recall, f1 (seqeval, IOB2 tag strings, default mode) x100, and seqeval's
  per-type classification report as a separate string so the numeric dict can be logged as is."""
  import seqeval.metrics

  scores = {
    "precision": 100 * seqeval.metrics.precision_score(labels, predictions, zero_division=0),
    "recall": 100 * seqeval.metrics.recall_score(labels, predictions, zero_division=0),
    "f1": 100 * seqeval.metrics.f1_score(labels, predictions, zero_division=0),
  }
  return scores, seqeval.metrics.classification_report(labels, predictions, digits=4, zero_division=0)


# ---------------------------------------------------------------- SQuAD v1.1 (the official script's logic)


def normalize_answer(text: str) -> str:
  """Lower case, drop punctuation, the articles a/an/the, and extra whitespace (official order)."""
  text = text.lower()
  text = "".join(ch for ch in text if ch not in set(string.punctuation))
  text = re.sub(r"\b(a|an|the)\b", " ", text)
  return " ".join(text.split())


def _token_f1(prediction: str, reference: str) -> float:
  prediction_tokens = normalize_answer(prediction).split()
  reference_tokens = normalize_answer(reference).split()
  common = collections.Counter(prediction_tokens) & collections.Counter(reference_tokens)
  num_same = sum(common.values())
  if num_same == 0:
    return 0.0
  precision = num_same / len(prediction_tokens)
  recall = num_same / len(reference_tokens)
  return 2 * precision * recall / (precision + recall)


def squad(references: dict[str, Sequence[str]], predictions: dict[str, str]) -> dict[str, float]:
  """exact_match and f1 x100, each the max over an example's reference answers, averaged over every
  question in `references` (a question without a prediction scores 0, as in the official script). A
  question without answers is unanswerable (SQuAD v2.0): the empty prediction scores 1, any other 0,
  as in the official v2.0 script."""
  exact = f1 = 0.0
  for qid, answers in references.items():
    prediction = predictions.get(qid, "")
    if not answers:  # unanswerable: exact match and F1 are both "predicted no answer"
      exact += float(not normalize_answer(prediction))
      f1 += float(not normalize_answer(prediction))
      continue
    exact += max(float(normalize_answer(prediction) == normalize_answer(a)) for a in answers)
    f1 += max(_token_f1(prediction, a) for a in answers)
  return {"exact_match": 100 * exact / len(references), "f1": 100 * f1 / len(references)}


# ------------------------------------------------------------------ SemEval-2010 Task 8 (the official score)


def semeval(labels: Sequence[int], predictions: Sequence[int], label_names: Sequence[str]) -> dict[str, float]:
  """The official SemEval-2010 Task 8 score, x100: "(9+1)-way evaluation with directionality taken into
  account", macro-averaged over the relation types, Other excluded. Per type t, a prediction is correct
  when it equals the gold label (type and direction); precision divides by every prediction of type t
  (a wrong direction counts against it), recall by every gold example of type t; f1 is the mean of the
  per-type F1s, precision and recall the means of theirs (the official scorer's macro average).
  `accuracy` is plain accuracy over the 2x9+1 labels. Label names are "Type(e1,e2)" or "Other"."""
  types = [name.split("(")[0] for name in label_names]
  gold = np.asarray(labels)
  predicted = np.asarray(predictions)
  gold_type = np.asarray(types, dtype=object)[gold]
  predicted_type = np.asarray(types, dtype=object)[predicted]
  scores = []
  for t in sorted(set(types) - {"Other"}):
    correct = np.sum((gold == predicted) & (gold_type == t))
    n_predicted, n_gold = np.sum(predicted_type == t), np.sum(gold_type == t)
    p = correct / n_predicted if n_predicted else 0.0
    r = correct / n_gold if n_gold else 0.0
    scores.append((p, r, 2 * p * r / (p + r) if p + r else 0.0))
  p, r, f1 = np.mean(scores, axis=0)
  return {
    "f1": 100 * float(f1),
    "precision": 100 * float(p),
    "recall": 100 * float(r),
    "accuracy": 100 * float(np.mean(gold == predicted)),
  }


# ---------------------------------------------------------------------------------------- generation


def generation(references: Sequence[Sequence[str]], hypotheses: Sequence[str]) -> dict[str, float]:
  """Corpus BLEU (sacrebleu, 13a tokenisation, all references of each hypothesis) and ROUGE-L F-measure
  (rouge-score with stemming, max over an example's references, averaged over examples), both 0-100."""
  import sacrebleu
  from rouge_score import rouge_scorer

  # sacrebleu wants one stream per reference position; examples with fewer references pad with None.
  depth = max(len(r) for r in references)
  streams = [[r[k] if k < len(r) else None for r in references] for k in range(depth)]
  bleu = sacrebleu.corpus_bleu(list(hypotheses), streams).score
  scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
  rouge = [max(scorer.score(ref, hyp)["rougeL"].fmeasure for ref in refs) for refs, hyp in zip(references, hypotheses)]
  return {"bleu": bleu, "rougeL": 100 * float(np.mean(rouge))}


def e2e(references: Sequence[Sequence[str]], hypotheses: Sequence[str]) -> dict[str, float]:
  """The E2E NLG challenge's metrics: bleu and rougeL (above), nist (nltk's corpus NIST, 5-grams),
  cider (pycocoevalcap's CIDEr, unscaled as the challenge reports it, e.g. 2.5) and meteor (pycocoevalcap's METEOR 1.5 — the
  challenge's own version — which runs Java). NIST/CIDEr/METEOR are left out, with a note on stderr,
  where nltk, pycocoevalcap or java are missing. Texts are lower-cased and whitespace-tokenised for
  NIST, CIDEr and METEOR, as the challenge's scripts do."""
  import shutil
  import sys

  result = generation(references, hypotheses)
  hyp_tokens = [h.lower().split() for h in hypotheses]
  ref_tokens = [[r.lower().split() for r in refs] for refs in references]
  try:
    from nltk.translate.nist_score import corpus_nist

    # nltk divides by the number of hypothesis n-grams of each order: with outputs shorter than
    # 5 tokens throughout, fall back to the longest order that exists (5 on any real E2E output).
    longest = max((len(h) for h in hyp_tokens), default=0)
    result["nist"] = float(corpus_nist(ref_tokens, hyp_tokens, n=min(5, longest))) if longest else 0.0
  except ImportError:
    print("metrics.e2e: nltk missing, no NIST", file=sys.stderr)
  try:
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
  except ImportError:
    print("metrics.e2e: pycocoevalcap missing, no CIDEr/METEOR", file=sys.stderr)
    return result
  refs = {i: [" ".join(r) for r in rs] for i, rs in enumerate(ref_tokens)}
  hyps = {i: [" ".join(h) if h else "_"] for i, h in enumerate(hyp_tokens)}
  result["cider"] = float(Cider().compute_score(refs, hyps)[0])
  if shutil.which("java"):
    result["meteor"] = 100 * float(Meteor().compute_score(refs, hyps)[0])
  else:
    print("metrics.e2e: java missing, no METEOR", file=sys.stderr)
  return result


def summarization(references: Sequence[Sequence[str]], hypotheses: Sequence[str]) -> dict[str, float]:
  """rouge1, rouge2, rougeL F-measures (rouge-score with stemming, max over an example's references,
  averaged over examples), 0-100."""
  from rouge_score import rouge_scorer

  kinds = ("rouge1", "rouge2", "rougeL")
  scorer = rouge_scorer.RougeScorer(list(kinds), use_stemmer=True)
  scores = [[scorer.score(ref, hyp) for ref in refs] for refs, hyp in zip(references, hypotheses)]
  return {k: 100 * float(np.mean([max(s[k].fmeasure for s in per_ref) for per_ref in scores])) for k in kinds}


def translation(references: Sequence[Sequence[str]], hypotheses: Sequence[str]) -> dict[str, float]:
  """bleu: corpus sacreBLEU (13a tokenisation, cased), 0-100, as WMT and Multi30k papers report it."""
  import sacrebleu

  depth = max(len(r) for r in references)
  streams = [[r[k] if k < len(r) else None for r in references] for k in range(depth)]
  return {"bleu": sacrebleu.corpus_bleu(list(hypotheses), streams).score}


# Typographic quotes as ASCII: DailyDialog writes "I ’ ll", a model writes "I'll"; both become i ' ll.
_QUOTES = str.maketrans({"’": "'", "‘": "'", "“": '"', "”": '"'})


def dialogue_tokens(text: str) -> list[str]:
  """Lower-cased words and punctuation marks as separate tokens, the way DailyDialog's own text is
  tokenised ("Oh , umm , no thanks ."). Splitting on whitespace alone would count "thanks." and
  "thanks" as two words: an untokenised output (a chat model's) would gain distinct n-grams and lose
  BLEU matches for its punctuation alone."""
  return re.findall(r"\w+|[^\w\s]", text.lower().translate(_QUOTES))


def distinct(hypotheses: Sequence[str], n: int) -> float:
  """distinct-n (Li et al. 2016): distinct n-grams over all n-grams of all hypotheses (dialogue_tokens),
  0-100 (0 if none)."""
  grams = [tuple(t[i : i + n]) for t in map(dialogue_tokens, hypotheses) for i in range(len(t) - n + 1)]
  return 100 * len(set(grams)) / len(grams) if grams else 0.0


def dialogue(references: Sequence[Sequence[str]], hypotheses: Sequence[str]) -> dict[str, float]:
  """bleu1, bleu2 (nltk corpus BLEU with uniform weights over 1-grams, and over 1- and 2-grams, on
  dialogue_tokens) and distinct1, distinct2, all 0-100. Perplexity, the other dialogue metric, comes
  from the loss on the references (TaskData.score)."""
  from nltk.translate.bleu_score import SmoothingFunction, corpus_bleu

  refs = [[dialogue_tokens(r) for r in rs] for rs in references]
  hyps = [dialogue_tokens(h) for h in hypotheses]
  smooth = SmoothingFunction().method1  # an output without a matching bigram scores ~0, not a crash
  return {
    "bleu1": 100 * corpus_bleu(refs, hyps, weights=(1.0,), smoothing_function=smooth),
    "bleu2": 100 * corpus_bleu(refs, hyps, weights=(0.5, 0.5), smoothing_function=smooth),
    "distinct1": distinct(hypotheses, 1),
    "distinct2": distinct(hypotheses, 2),
  }


def perplexity(nll_sum: float, num_tokens: float) -> dict[str, float]:
  """exp of the mean token negative log-likelihood, from sums the eval loop accumulates exactly."""
  return {"perplexity": math.exp(nll_sum / num_tokens)}

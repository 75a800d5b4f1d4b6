"""Metrics against values computed by hand."""

import math

import pytest

from ftjax import metrics


def test_classification_binary():
  # labels 1 1 0 0, predictions 1 0 0 0: TP=1 FN=1 TN=2 FP=0
  scores = metrics.classification([1, 1, 0, 0], [1, 0, 0, 0])
  assert scores["accuracy"] == pytest.approx(75.0)
  assert scores["f1"] == pytest.approx(100 * 2 * 1.0 * 0.5 / 1.5)  # P=1, R=1/2
  # MCC = (TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = 2 / sqrt(1*2*2*3)
  assert scores["matthews"] == pytest.approx(100 * 2 / math.sqrt(12))


def test_classification_macro_f1():
  # classes 0,1,2: per-class F1 = 1 (class 0), 2/3 (class 1: P=1, R=1/2), 2/3 (class 2: P=1/2, R=1)
  scores = metrics.classification([0, 1, 1, 2], [0, 1, 2, 2], num_classes=3)
  assert scores["f1"] == pytest.approx(100 * (1 + 2 / 3 + 2 / 3) / 3)


def test_regression():
  scores = metrics.regression([1.0, 2.0, 3.0], [2.0, 4.0, 6.5])
  assert scores["spearman"] == pytest.approx(100.0)
  # pearson of (1,2,3) and (2,4,6.5): deviations (-1,0,1) and (-2.1667,-0.1667,2.3333)
  assert scores["pearson"] == pytest.approx(100 * 4.5 / math.sqrt(2 * 10.1667), rel=1e-4)


def test_ner_entity_level():
  gold = [["B-PER", "I-PER", "O", "B-LOC"]]
  pred = [["B-PER", "I-PER", "O", "B-ORG"]]  # 1 of 2 entities right, 1 of 2 predicted right
  scores, report = metrics.ner(gold, pred)
  assert scores == pytest.approx({"precision": 50.0, "recall": 50.0, "f1": 50.0})
  assert "PER" in report and "LOC" in report


def test_squad_official_normalisation():
  assert metrics.normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
  scores = metrics.squad(
    {"a": ["the Eiffel Tower", "Eiffel"], "b": ["in Paris France"]}, {"a": "Eiffel Tower.", "b": "Paris"}
  )
  # a: exact after normalisation; b: P=1, R=1/3 -> F1 = 0.5
  assert scores == pytest.approx({"exact_match": 50.0, "f1": 75.0})


def test_generation_bleu_and_rouge():
  scores = metrics.generation(
    [["the cat sat on the mat", "a cat sat"], ["a dog ran"]], ["the cat sat on the mat", "a dog ran"]
  )
  assert scores == pytest.approx({"bleu": 100.0, "rougeL": 100.0})
  # ROUGE-L vs "a b c d" of "a b x d": LCS 3, P = R = 3/4; the max over references is kept.
  scores = metrics.generation([["a b c d", "zzz"]], ["a b x d"])
  assert scores["rougeL"] == pytest.approx(75.0)


def test_perplexity():
  assert metrics.perplexity(nll_sum=4 * math.log(10), num_tokens=4) == pytest.approx({"perplexity": 10.0})


def test_squad_v2_unanswerable_questions_score_the_empty_answer():
  """Before: max() over no references crashed. The official v2.0 script scores an unanswerable question 1
  for the empty prediction and 0 for any other."""
  scores = metrics.squad({"a": [], "b": [], "c": ["Paris"]}, {"a": "", "b": "France", "c": "Paris"})
  assert scores == pytest.approx({"exact_match": 200 / 3, "f1": 200 / 3})


def test_semeval_official_score_by_hand():
  """Types A and B, each in two directions. A: 3 gold, 3 predicted (one of them the wrong direction, which
  counts against precision and recall), 2 correct: P = R = F1 = 2/3. B: 1 gold, 1 predicted, none correct:
  0. Macro over A and B, Other excluded: F1 = 1/3. Accuracy over all labels: 3 of 6."""
  names = ("Other", "A(e1,e2)", "A(e2,e1)", "B(e1,e2)", "B(e2,e1)")
  gold = [1, 1, 2, 3, 0, 0]
  predicted = [1, 2, 2, 0, 3, 0]
  scores = metrics.semeval(gold, predicted, names)
  assert scores == pytest.approx({"f1": 100 / 3, "precision": 100 / 3, "recall": 100 / 3, "accuracy": 50.0})
  # The majority class (Other) predicts no relation: every relation's precision and recall are 0.
  assert metrics.semeval(gold, [0] * 6, names)["f1"] == 0.0
  assert metrics.semeval(gold, gold, names)["f1"] == pytest.approx(100.0)

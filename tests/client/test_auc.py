"""The evaluation's ROC-AUC (mid-rank Mann-Whitney) and balanced accuracy equal scikit-learn's, ties included."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score

from client.train import _auc


@settings(max_examples=200, deadline=None)
@given(st.integers(2, 5), st.integers(2, 60), st.integers(0, 2**31 - 1), st.booleans())
def test_auc_equals_sklearn(classes, n, seed, coarse):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    p = rng.random((n, classes))
    if coarse:  # many ties
        p = np.round(p, 1) + 1e-3
    p = p / p.sum(axis=1, keepdims=True)
    present = np.unique(y)
    if len(present) < 2:
        assert np.isnan(_auc(y, p))
        return
    if classes == 2:
        expected = roc_auc_score(y, p[:, 1])
    else:
        expected = np.mean([roc_auc_score(y == c, p[:, c]) for c in present])
    assert abs(_auc(y, p) - expected) < 1e-12


def test_known_values():
    y = np.array([0, 0, 1, 1])
    assert _auc(y, np.array([[0.9, 0.1], [0.6, 0.4], [0.65, 0.35], [0.2, 0.8]])) == 0.75
    assert _auc(y, np.array([[0.5, 0.5]] * 4)) == 0.5  # all tied
    assert np.isnan(_auc(np.zeros(3, int), np.full((3, 2), 0.5)))


@settings(max_examples=200, deadline=None)
@given(st.integers(2, 6), st.integers(1, 60), st.integers(0, 2**31 - 1))
def test_balanced_accuracy_equals_sklearn(classes, n, seed):
    """Mean recall over the classes in y_true; a class that is only predicted counts for nothing (as sklearn)."""
    import warnings

    from sklearn.metrics import balanced_accuracy_score

    from client.train import _balanced_accuracy

    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    pred = rng.integers(0, classes + 1, n)  # may predict a class absent from y (and one no label has)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns about classes only predicted
        expected = balanced_accuracy_score(y, pred)
    assert abs(_balanced_accuracy(y, pred) - expected) < 1e-12


def test_balanced_accuracy_exact_values():
    y = np.array([0, 0, 0, 1])
    assert _balanced(y, np.array([0, 0, 1, 1])) == (2 / 3 + 1) / 2
    assert _balanced(y, np.array([2, 2, 2, 2])) == 0.0
    assert _balanced(np.array([1, 1]), np.array([1, 0])) == 0.5  # one class: its recall


def _balanced(y, pred):
    from client.train import _balanced_accuracy

    return _balanced_accuracy(y, pred)

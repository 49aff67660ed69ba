"""The classification report and confusion matrix that every run logs."""

import numpy as np
import pytest
from sklearn.metrics import classification_report, confusion_matrix

from mnist_bench import metrics


def test_classification_report_matches_scikit_learn():
    """metrics.py re-implements sklearn's report to spare its import; same numbers required."""
    rng = np.random.default_rng(0)
    targets = rng.integers(0, 10, 3000)
    predictions = np.where(rng.random(3000) < 0.8, targets, rng.integers(0, 10, 3000))
    predictions[predictions == 3] = 4  # a digit never predicted: zero precision, no NaN
    expected = classification_report(targets, predictions, output_dict=True, zero_division=0,
                                     target_names=[str(d) for d in range(10)])
    got = metrics.classification_report(targets, predictions)
    assert got.keys() == expected.keys()
    for key, row in expected.items():
        assert got[key] == (pytest.approx(row) if isinstance(row, dict) else pytest.approx(row))
    np.testing.assert_array_equal(metrics.confusion_matrix(targets, predictions),
                                  confusion_matrix(targets, predictions))
    assert "    accuracy" in metrics.format_report(got)

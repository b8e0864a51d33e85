"""Class-incremental metrics against hand-computed values."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from abd_edge.errors import ConfigError, NotFittedError
from abd_edge.metrics import AccuracyMatrix


def _three_tasks() -> AccuracyMatrix:
    m = AccuracyMatrix()
    m.record(0, [0.90], seen_accuracy=0.90)
    m.record(1, [0.70, 0.80], seen_accuracy=0.72)
    m.record(2, [0.60, 0.85, 0.90], seen_accuracy=0.65)
    return m


def test_summary_values() -> None:
    m = _three_tasks()
    assert m.n_tasks == 3
    assert m.final_accuracy == pytest.approx(0.65)
    assert m.average_incremental_accuracy == pytest.approx((0.90 + 0.72 + 0.65) / 3)
    # task 0: max(0.90, 0.70) - 0.60 = 0.30; task 1: max(0.80) - 0.85 = -0.05
    assert m.forgetting == pytest.approx((0.30 - 0.05) / 2)


def test_seen_accuracy_is_not_the_row_mean() -> None:
    m = _three_tasks()
    assert m.final_accuracy != pytest.approx(np.mean(m.rows[-1]))


def test_single_task_has_zero_forgetting() -> None:
    m = AccuracyMatrix()
    m.record(0, [0.5], seen_accuracy=0.5)
    assert m.forgetting == 0.0
    assert m.final_accuracy == m.average_incremental_accuracy == 0.5


def test_full_square_rows_with_nan_or_none() -> None:
    m = AccuracyMatrix()
    m.record(0, [1.0, None, float("nan")], seen_accuracy=1.0)
    m.record(1, [0.5, 0.75, None], seen_accuracy=0.6)
    assert m.rows == [[1.0], [0.5, 0.75]]
    arr = m.as_array()
    assert arr.shape == (2, 2) and math.isnan(arr[0, 1]) and arr[1, 1] == 0.75
    with pytest.raises(ConfigError, match="None or NaN"):
        m.record(2, [0.1, 0.2, 0.3, 0.4], seen_accuracy=0.2)


def test_record_validation() -> None:
    m = AccuracyMatrix()
    with pytest.raises(ConfigError, match="must be 0"):
        m.record(1, [0.5, 0.5], seen_accuracy=0.5)
    with pytest.raises(ConfigError, match="expected 1"):
        m.record(0, [], seen_accuracy=0.5)
    with pytest.raises(ConfigError, match="percentages"):
        m.record(0, [85.0], seen_accuracy=0.85)
    with pytest.raises(ConfigError, match="seen_accuracy"):
        m.record(0, [0.85], seen_accuracy=float("nan"))
    with pytest.raises(TypeError):
        m.record(0, [0.85])  # type: ignore[call-arg]  # seen_accuracy is required
    assert m.n_tasks == 0
    with pytest.raises(NotFittedError):
        _ = m.final_accuracy


def test_json_round_trip() -> None:
    m = _three_tasks()
    d = json.loads(json.dumps(m.to_dict()))
    assert d["forgetting"] == pytest.approx(0.125)
    back = AccuracyMatrix.from_dict(d)
    assert back == m
    assert AccuracyMatrix.from_dict(AccuracyMatrix().to_dict()).n_tasks == 0
    with pytest.raises(ConfigError, match="seen_accuracy"):
        AccuracyMatrix.from_dict({"per_task": [[0.5]]})
    with pytest.raises(ConfigError, match="1 rows but 0"):
        AccuracyMatrix.from_dict({"per_task": [[0.5]], "seen_accuracy": []})
    with pytest.raises(ConfigError, match="expected 2"):
        AccuracyMatrix.from_dict({"per_task": [[0.5], [0.5]], "seen_accuracy": [0.5, 0.5]})


def test_format_table() -> None:
    text = _three_tasks().format_table()
    lines = text.splitlines()
    assert "T0" in lines[0] and "T2" in lines[0] and "seen" in lines[0]
    assert "90.00" in lines[2] and "85.00" not in lines[2]
    assert lines[4].split() == ["T2", "60.00", "85.00", "90.00", "65.00"]
    assert "average incremental accuracy: 75.67" in text
    assert "forgetting:                   12.50" in text
    assert AccuracyMatrix().format_table() == "(no tasks recorded)"

"""Class orders, task splits and per-task datasets."""

from __future__ import annotations

import random

import pytest
import torch

from abd_edge.data import LabeledImages, class_order, split_tasks, task_datasets
from abd_edge.errors import ConfigError


def test_class_order_matches_reference_convention() -> None:
    assert class_order(10, 0) == [7, 8, 1, 5, 3, 4, 2, 0, 9, 6]
    expected = list(range(100))
    random.Random(1993).shuffle(expected)
    assert class_order(100, 1993) == expected
    assert class_order(5, None) == [0, 1, 2, 3, 4]
    assert class_order(10, 1) != class_order(10, 0)


def test_class_order_bad_count() -> None:
    with pytest.raises(ConfigError, match="0"):
        class_order(0, 1)


def test_split_equal() -> None:
    order = class_order(10, 0)
    assert split_tasks(order, n_tasks=5) == [[7, 8], [1, 5], [3, 4], [2, 0], [9, 6]]
    assert split_tasks(order, n_tasks=1) == [order]


def test_split_not_divisible_names_both_numbers() -> None:
    with pytest.raises(ConfigError, match=r"10 classes.*3 equal tasks"):
        split_tasks(list(range(10)), n_tasks=3)


def test_split_custom_sizes() -> None:
    order = list(range(100))
    tasks = split_tasks(order, sizes=[50] + [10] * 5)
    assert [len(t) for t in tasks] == [50, 10, 10, 10, 10, 10]
    assert tasks[1] == list(range(50, 60))
    with pytest.raises(ConfigError, match="sum to 90"):
        split_tasks(order, sizes=[50, 40])
    with pytest.raises(ConfigError, match="positive"):
        split_tasks(order, sizes=[100, 0])


def test_split_argument_errors() -> None:
    with pytest.raises(ConfigError, match="exactly one"):
        split_tasks([0, 1], n_tasks=2, sizes=[1, 1])
    with pytest.raises(ConfigError, match="exactly one"):
        split_tasks([0, 1])
    with pytest.raises(ConfigError, match="more than once"):
        split_tasks([0, 1, 1, 2], n_tasks=2)


def _data(labels: list) -> LabeledImages:
    images = torch.arange(len(labels), dtype=torch.uint8).view(-1, 1, 1, 1)
    return LabeledImages(images, labels, {lab: f"name-{lab}" for lab in set(labels)})


def test_task_datasets_int_labels() -> None:
    data = _data([0, 1, 2, 3, 0, 2])
    tasks = task_datasets(data, [[2, 0], [3, 1]])
    assert tasks[0].labels == [0, 2, 0, 2]
    assert tasks[0].images.view(-1).tolist() == [0, 2, 4, 5]
    assert tasks[0].class_names == {0: "name-0", 2: "name-2"}
    assert tasks[1].labels == [1, 3]


def test_task_datasets_string_labels_use_sorted_indices() -> None:
    data = _data(["dog", "cat", "bird", "cat"])
    first, second = task_datasets(data, [[1], [0, 2]])  # sorted: bird, cat, dog
    assert first.labels == ["cat", "cat"]
    assert second.labels == ["dog", "bird"]


def test_task_datasets_errors() -> None:
    data = _data([0, 1, 2])
    with pytest.raises(ConfigError, match="index 3.*3 classes"):
        task_datasets(data, [[0, 3]])
    with pytest.raises(ConfigError, match="more than one task"):
        task_datasets(data, [[0, 1], [1, 2]])

"""Class-incremental metrics, accumulated task by task.

Two different accuracies are recorded after each task, and both are needed:

* the per-task matrix entry ``acc[i][j]``: accuracy on task j's test images
  after learning task i (j <= i). Forgetting is defined on it.
* ``seen_accuracy[i]``: top-1 over the union of all seen classes' test
  images, predicting among all seen classes. This is what papers report as
  accuracy and average incremental accuracy. It is *not* the mean of the
  row (tasks may differ in size, and predicting among all classes is harder
  than within a task), so it must be passed in, never derived.

Plain Python and numpy only: the device runtime reports metrics without torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from .errors import ConfigError, NotFittedError

__all__ = ["AccuracyMatrix"]


def _accuracy(value: Any, what: str) -> float:
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be a number in [0, 1], got {value!r}") from None
    if not math.isfinite(f) or not 0.0 <= f <= 1.0:
        hint = " (pass fractions, not percentages)" if math.isfinite(f) and 1.0 < f <= 100.0 else ""
        raise ConfigError(f"{what} must be in [0, 1], got {value!r}{hint}")
    return f


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    try:
        return math.isnan(float(value))
    except (TypeError, ValueError):
        return False


@dataclass
class AccuracyMatrix:
    """Accuracies after each task: per-task rows plus the seen-classes accuracy.

    ``rows[i]`` has ``i + 1`` entries (tasks 0..i); ``seen_accuracy[i]`` is
    the accuracy over all classes seen up to task i. Values are fractions.
    """

    rows: list[list[float]] = field(default_factory=list)
    seen_accuracy: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        if len(self.rows) != len(self.seen_accuracy):
            raise ConfigError(
                f"{len(self.rows)} rows but {len(self.seen_accuracy)} seen accuracies; need one per task"
            )
        rows, seen = self.rows, self.seen_accuracy
        self.rows, self.seen_accuracy = [], []
        for i, (row, s) in enumerate(zip(rows, seen)):
            self.record(i, row, seen_accuracy=s)

    @property
    def n_tasks(self) -> int:
        return len(self.rows)

    def record(
        self, task_index: int, accuracies_per_task: Sequence[float | None], *, seen_accuracy: float
    ) -> None:
        """Add the row measured after learning task ``task_index``.

        Rows must arrive in order, since forgetting compares each row with
        the earlier ones. ``accuracies_per_task`` holds tasks 0..task_index;
        trailing entries for unseen tasks may be given as None/NaN (a full
        square matrix row) and are dropped.
        """
        if isinstance(task_index, bool) or not isinstance(task_index, int) or task_index != self.n_tasks:
            raise ConfigError(
                f"task_index must be {self.n_tasks} (rows are recorded in order), got {task_index!r}"
            )
        values = list(accuracies_per_task)
        if len(values) < task_index + 1:
            raise ConfigError(
                f"after task {task_index} expected {task_index + 1} per-task accuracies "
                f"(tasks 0..{task_index}), got {len(values)}"
            )
        extra = values[task_index + 1 :]
        if any(not _is_missing(v) for v in extra):
            raise ConfigError(
                f"after task {task_index} the entries for later tasks must be None or NaN, got {extra}"
            )
        row = [
            _accuracy(v, f"accuracy on task {j} after task {task_index}")
            for j, v in enumerate(values[: task_index + 1])
        ]
        seen = _accuracy(seen_accuracy, f"seen_accuracy after task {task_index}")
        self.rows.append(row)
        self.seen_accuracy.append(seen)

    def _require_rows(self) -> None:
        if not self.rows:
            raise NotFittedError("no task has been recorded yet")

    def as_array(self) -> np.ndarray:
        """Square (T, T) matrix with NaN above the diagonal (tasks not yet seen)."""
        t = self.n_tasks
        out = np.full((t, t), np.nan)
        for i, row in enumerate(self.rows):
            out[i, : len(row)] = row
        return out

    @property
    def final_accuracy(self) -> float:
        """Accuracy on all seen classes after the last task."""
        self._require_rows()
        return self.seen_accuracy[-1]

    @property
    def average_incremental_accuracy(self) -> float:
        """Mean of the seen-classes accuracy over all recorded tasks."""
        self._require_rows()
        return float(np.mean(self.seen_accuracy))

    @property
    def forgetting(self) -> float:
        """Average drop from each old task's best accuracy to its final accuracy.

        For every task j before the last: max over rows i (j <= i < last) of
        acc[i][j], minus acc[last][j]; averaged over j. 0.0 with one task.
        """
        self._require_rows()
        last = self.n_tasks - 1
        if last == 0:
            return 0.0
        drops = [
            max(self.rows[i][j] for i in range(j, last)) - self.rows[last][j] for j in range(last)
        ]
        return float(np.mean(drops))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form; the summary fields are for readers and ignored by from_dict."""
        out: dict[str, Any] = {
            "per_task": [list(r) for r in self.rows],
            "seen_accuracy": list(self.seen_accuracy),
        }
        if self.rows:
            out["final_accuracy"] = self.final_accuracy
            out["average_incremental_accuracy"] = self.average_incremental_accuracy
            out["forgetting"] = self.forgetting
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "AccuracyMatrix":
        """Rebuild from :meth:`to_dict`'s output, re-validating every value."""
        missing = [k for k in ("per_task", "seen_accuracy") if k not in data]
        if missing:
            raise ConfigError(f"accuracy matrix dict lacks {missing}; found keys {sorted(data)}")
        return cls([list(r) for r in data["per_task"]], list(data["seen_accuracy"]))

    def format_table(self) -> str:
        """Text table in percent: one line per task, then the summary metrics."""
        if not self.rows:
            return "(no tasks recorded)"
        t = self.n_tasks
        width = 7
        header = "after".ljust(7) + "".join(f"T{j}".rjust(width) for j in range(t)) + "seen".rjust(width + 1)
        lines = [header, "-" * len(header)]
        for i, row in enumerate(self.rows):
            cells = "".join(f"{100 * v:.2f}".rjust(width) for v in row) + " " * width * (t - len(row))
            lines.append(f"T{i}".ljust(7) + cells + f"{100 * self.seen_accuracy[i]:.2f}".rjust(width + 1))
        lines.append("-" * len(header))
        lines.append(f"final accuracy:               {100 * self.final_accuracy:.2f}")
        lines.append(f"average incremental accuracy: {100 * self.average_incremental_accuracy:.2f}")
        lines.append(f"forgetting:                   {100 * self.forgetting:.2f}")
        return "\n".join(lines)

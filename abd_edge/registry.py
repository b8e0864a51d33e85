"""The class registry: the user's labels <-> the classifier's output indices.

Append-only: a class keeps its index for the life of the learner (and of
every bundle exported from it), because the head rows, the generator's
pseudo-labels and every deployed application refer to classes by index.
"""

from __future__ import annotations

from typing import Any, Hashable, Iterable, Mapping, Sequence

from .errors import LabelError


def _check_label(label: Hashable) -> None:
    if isinstance(label, bool) or not isinstance(label, (int, str)):
        raise LabelError(f"labels must be int or str, got {label!r} of type {type(label).__name__}")


class ClassRegistry:
    def __init__(self) -> None:
        self._labels: list[int | str] = []
        self._names: list[str] = []
        self._index: dict[int | str, int] = {}

    def __len__(self) -> int:
        return len(self._labels)

    def __contains__(self, label: object) -> bool:
        return label in self._index

    @property
    def labels(self) -> list[int | str]:
        return list(self._labels)

    @property
    def names(self) -> list[str]:
        return list(self._names)

    def index_of(self, label: Hashable) -> int:
        try:
            return self._index[label]  # type: ignore[index]
        except KeyError:
            raise LabelError(f"label {label!r} has not been learned; known labels: {self._labels}") from None

    def indices_of(self, labels: Iterable[Hashable]) -> list[int]:
        return [self.index_of(lab) for lab in labels]

    def label_of(self, index: int) -> int | str:
        return self._labels[index]

    def name_of(self, index: int) -> str:
        return self._names[index]

    def check_new(self, labels: Sequence[Hashable]) -> None:
        """Raise unless every label is valid, distinct and not yet registered."""
        for lab in labels:
            _check_label(lab)
        dup = [lab for lab in labels if lab in self._index]
        if dup:
            raise LabelError(
                f"labels {dup} are already learned (classes {[self._index[d] for d in dup]}); "  # type: ignore[index]
                "learn_new_classes expects only labels never seen before"
            )
        if len(set(labels)) != len(labels):
            raise LabelError(f"new labels contain duplicates: {list(labels)}")

    def extended(self, labels: Sequence[Hashable], names: Sequence[str]) -> "ClassRegistry":
        """A new registry with ``labels`` appended (self is left unchanged)."""
        self.check_new(labels)
        if len(names) != len(labels):
            raise LabelError(f"{len(labels)} new labels but {len(names)} names")
        out = ClassRegistry()
        out._labels = self._labels + list(labels)  # type: ignore[operator]
        out._names = self._names + [str(n) for n in names]
        out._index = {lab: i for i, lab in enumerate(out._labels)}
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"labels": list(self._labels), "names": list(self._names)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ClassRegistry":
        labels, names = data.get("labels"), data.get("names")
        if not isinstance(labels, list) or not isinstance(names, list) or len(labels) != len(names):
            raise LabelError(f"registry needs equal-length 'labels' and 'names' lists, got {data!r}")
        return cls().extended(labels, names)


def resolve_names(
    new_labels: list[Hashable], class_names: Mapping[Hashable, str] | Sequence[str] | None,
    data_names: Mapping[Hashable, str],
) -> list[str]:
    """Names for a call's new labels: ``class_names`` (a dict by label, or a list in label order), else the data's own, else str(label)."""
    if class_names is None:
        return [str(data_names.get(lab, lab)) for lab in new_labels]
    if isinstance(class_names, Mapping):
        keys = set(class_names)
        if keys != set(new_labels):
            raise LabelError(
                f"class_names keys {sorted(map(str, keys))} do not match the new labels {sorted(map(str, new_labels))}"
            )
        return [str(class_names[lab]) for lab in new_labels]
    names = list(class_names)
    if isinstance(class_names, str) or len(names) != len(new_labels):
        raise LabelError(
            f"class_names has {len(names) if not isinstance(class_names, str) else 'a string, not'} entries "
            f"but the dataset brings {len(new_labels)} new labels {new_labels}"
        )
    return [str(n) for n in names]

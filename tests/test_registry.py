import pytest

from abd_edge.errors import LabelError
from abd_edge.registry import ClassRegistry


def test_append_only_and_round_trip():
    r = ClassRegistry().extended([3, 1], ["three", "one"])
    r2 = r.extended(["cat"], ["Cat"])
    assert len(r) == 2 and len(r2) == 3  # r itself unchanged
    assert r2.index_of(3) == 0 and r2.index_of(1) == 1 and r2.index_of("cat") == 2
    assert r2.label_of(2) == "cat" and r2.name_of(0) == "three"
    back = ClassRegistry.from_dict(r2.to_dict())
    assert back.labels == [3, 1, "cat"] and back.names == ["three", "one", "Cat"]


def test_rejections():
    r = ClassRegistry().extended([0, 1], ["a", "b"])
    with pytest.raises(LabelError, match=r"\[1\] are already learned"):
        r.extended([1, 2], ["b", "c"])
    with pytest.raises(LabelError, match="duplicates"):
        r.extended([5, 5], ["x", "y"])
    with pytest.raises(LabelError, match="int or str"):
        r.extended([2.5], ["x"])
    with pytest.raises(LabelError, match="has not been learned"):
        r.index_of(9)
    with pytest.raises(LabelError, match="2 new labels but 1 names"):
        r.extended([7, 8], ["x"])

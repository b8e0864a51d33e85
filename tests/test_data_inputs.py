"""What torchvision users pass: DataLoaders, ImageFolder/CIFAR-style class names, transforms v2 outputs,
normalised tensors (refused with advice), and predict on every image layout (issue 10 item 6, issue 8 defect 11)."""

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image
from torch.utils.data import DataLoader, Dataset, TensorDataset

from abd_edge import Learner
from abd_edge.data import as_labeled_images
from abd_edge.errors import AbdEdgeError, ImageSpecError
from tests.conftest import make_task, tiny_config

tv = pytest.importorskip("torchvision")
from torchvision.transforms import v2  # noqa: E402


class PILDataset(Dataset):
    """A torchvision-style dataset: PIL images, int targets, ``classes`` and a transform."""

    classes = ["cat", "dog"]

    def __init__(self, transform=None, n=6):
        g = np.random.default_rng(0)
        self.items = [(Image.fromarray(g.integers(0, 255, (8, 8, 3), dtype=np.uint8)), i % 2) for i in range(n)]
        self.transform = transform

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        img, y = self.items[i]
        return (self.transform(img) if self.transform else img), y


def _pixels(ds):
    return torch.stack([torch.from_numpy(np.array(img)).permute(2, 0, 1) for img, _ in ds.items])


@pytest.mark.parametrize("transform, dtype", [
    (None, torch.uint8),
    (v2.PILToTensor(), torch.uint8),
    (v2.ToImage(), torch.uint8),
    (v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]), torch.float32),
    (tv.transforms.ToTensor(), torch.float32),
])
def test_transform_outputs_and_classes_names(transform, dtype):
    ds = PILDataset(transform)
    data = as_labeled_images(ds)
    assert data.images.dtype == dtype and type(data.images) is torch.Tensor and data.images.shape == (6, 3, 8, 8)
    expect = _pixels(ds)
    got = data.images if dtype == torch.uint8 else (data.images * 255).round().to(torch.uint8)
    assert torch.equal(got, expect)
    assert data.class_names == {0: "cat", 1: "dog"}


def test_normalised_input_is_refused_with_advice():
    ds = PILDataset(v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True),
                                v2.Normalize([0.5] * 3, [0.25] * 3)]))
    with pytest.raises(ImageSpecError, match="normalised.*ToTensor.*PILToTensor"):
        as_labeled_images(ds)


def test_image_folder_names_and_dataloader_iterated_once(tmp_path):
    for name in ("ant", "bee"):
        (tmp_path / name).mkdir()
        for i in range(3):
            Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(tmp_path / name / f"{i}.png")
    folder = tv.datasets.ImageFolder(tmp_path, transform=v2.PILToTensor())
    data = as_labeled_images(folder)
    assert data.labels == [0, 0, 0, 1, 1, 1] and data.class_names == {0: "ant", 1: "bee"}

    passes = []

    class CountingLoader(DataLoader):
        def __iter__(self):
            passes.append(1)
            return super().__iter__()

    loader = CountingLoader(folder, batch_size=4, shuffle=False)
    from_loader = as_labeled_images(loader)
    assert passes == [1] and torch.equal(from_loader.images, data.images)
    assert from_loader.class_names == {0: "ant", 1: "bee"}
    learner = Learner(tiny_config(max_classes=2))
    rep = learner.learn_new_classes(loader, show_progress=False)
    assert rep.names_added == ["ant", "bee"] and passes == [1, 1]


def test_single_image_without_batch_axis_names_the_axis():
    """Issue 8 defect 11: one HWC image with one label was reported as 'counts differ: 8 images, 1 labels'."""
    learner = Learner(tiny_config())
    img = np.zeros((8, 8, 1), np.uint8)
    for labels in ([3], 3):
        with pytest.raises(ImageSpecError, match="without a batch axis.*images\\[None\\]"):
            learner.learn_new_classes((img, labels), show_progress=False)
    assert learner.tasks_learned == 0


@pytest.fixture(scope="module")
def rgb_learner():
    learner = Learner(tiny_config(max_classes=2))
    x, y = make_task([0, 1], n_per_class=12, channels=3)
    learner.learn_new_classes((x, y), show_progress=False)
    return learner, x


def test_predict_accepts_every_layout(rgb_learner):
    learner, x = rgb_learner
    ref = learner.predict(x[:5]).indices
    nhwc = x[:5].permute(0, 2, 3, 1).numpy()
    assert torch.equal(learner.predict(nhwc).indices, ref)
    assert torch.equal(learner.predict(x[:5].float() / 255).indices, ref)
    for one in (x[0], x[0].permute(1, 2, 0).numpy(), Image.fromarray(x[0].permute(1, 2, 0).numpy())):
        p = learner.predict(one)
        assert p.indices.shape == (1,) and int(p.indices[0]) == int(ref[0]) and len(p.names) == 1


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(1, 5), h=st.integers(1, 9), w=st.integers(1, 9), c=st.sampled_from([1, 3]),
       layout=st.sampled_from(["nchw", "nhwc"]), seed=st.integers(0, 2**16))
def test_uint8_layouts_round_trip(n, h, w, c, layout, seed):
    arr = np.random.default_rng(seed).integers(0, 256, (n, c, h, w), dtype=np.uint8)
    given_arr = arr if layout == "nchw" else np.ascontiguousarray(arr.transpose(0, 2, 3, 1))
    if layout == "nhwc" and h in (1, 3):  # (N, H, W, C) with H in (1, 3) is read as NCHW: documented ambiguity
        return
    data = as_labeled_images(given_arr, list(range(n)))
    assert data.images.dtype == torch.uint8 and np.array_equal(data.images.numpy(), arr)


@settings(max_examples=60, deadline=None)
@given(arrays(np.float32, st.tuples(st.integers(1, 3), st.just(3), st.integers(2, 6), st.integers(2, 6)),
              elements=st.one_of(st.floats(-3, 3, width=32), st.sampled_from([np.nan, np.inf, -np.inf]))))
def test_float_input_is_accepted_only_in_unit_range(arr):
    """Whatever floats arrive, the adapter either returns [0, 1] images or raises a clear AbdEdgeError."""
    labels = list(range(arr.shape[0]))
    ok = np.isfinite(arr).all() and arr.min() >= -1e-3 and arr.max() <= 1 + 1e-3
    if ok:
        out = as_labeled_images(arr, labels).images
        assert out.shape == arr.shape and float(out.min()) >= 0 and float(out.max()) <= 1
    else:
        with pytest.raises(AbdEdgeError):
            as_labeled_images(arr, labels)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 12), batch=st.integers(1, 5), seed=st.integers(0, 2**16))
def test_dataloader_equals_tensors(n, batch, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 1, 4, 4), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    a = as_labeled_images(DataLoader(TensorDataset(x, y), batch_size=batch))
    b = as_labeled_images(x, y)
    assert torch.equal(a.images, b.images) and a.labels == b.labels

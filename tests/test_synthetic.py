"""The embedded synthetic dataset: deterministic, 102 named classes, and not separable by colour."""

from __future__ import annotations

import numpy as np

from flowerlab.config import DataParams, Source
from flowerlab.data import synthetic
from flowerlab.data.preparation import prepare_images
from flowerlab.data.sources import read_source


def _prepared(seed: int, samples_per_class: int = 1):
    params = DataParams(source=Source.synthetic, image_size=16, samples_per_class=samples_per_class)
    data, skipped = prepare_images(read_source(params, seed), 16, "synthetic", progress=False)
    assert skipped == []
    return data


def _render(class_id: int, index: int, seed: int, size: int = 16) -> np.ndarray:
    rng = np.random.default_rng([seed, class_id, index])
    return np.asarray(synthetic.render_flower(class_id, rng, size), dtype=np.float64)


def test_same_seed_gives_identical_bytes_and_another_seed_differs():
    first, again, other = _prepared(7), _prepared(7), _prepared(8)
    assert first.images.shape == (102, 16, 16, 3)
    assert first.images.tobytes() == again.images.tobytes()
    assert np.array_equal(first.labels, again.labels)
    differing = (first.images != other.images).reshape(102, -1).any(axis=1)
    assert differing.all()  # every single image changes with the seed


def test_source_matches_generate():
    data = _prepared(3, samples_per_class=2)
    generated = list(synthetic.generate(samples_per_class=2, image_size=16, seed=3))
    assert len(generated) == len(data.labels) == 204
    for index in (0, 1, 2, 203):
        image, label = generated[index]
        assert label == data.labels[index]
        assert np.array_equal(np.asarray(image), data.images[index])


def test_class_names_are_102_and_unique():
    names = synthetic.class_names()
    assert len(names) == synthetic.NUM_CLASSES == 102
    assert len(set(names)) == 102
    assert all(name.strip() == name and name for name in names)
    data = _prepared(0)
    assert data.classes == names
    assert data.labels.tolist() == list(range(102))


def test_images_of_one_class_vary():
    for class_id in (0, 50, 101):
        a, b = _render(class_id, 0, seed=0, size=32), _render(class_id, 1, seed=0, size=32)
        assert np.abs(a - b).mean() > 10  # grey levels: pose, colour and background all change


def test_mean_colour_does_not_separate_classes():
    """A nearest-class-mean classifier on per-image mean RGB scores near chance (1/6)."""
    classes = (0, 17, 34, 51, 68, 101)

    def features(first_index: int) -> tuple[np.ndarray, np.ndarray]:
        x = [_render(c, i, seed=5).reshape(-1, 3).mean(axis=0)
             for c in classes for i in range(first_index, first_index + 20)]
        return np.array(x), np.repeat(np.arange(len(classes)), 20)

    x_train, y_train = features(0)
    x_test, y_test = features(100)
    means = np.stack([x_train[y_train == k].mean(axis=0) for k in range(len(classes))])
    predicted = ((x_test[:, None, :] - means[None]) ** 2).sum(axis=-1).argmin(axis=1)
    accuracy = (predicted == y_test).mean()
    # Chance is 0.167; with 120 test images, 0.35 is more than five standard errors above it.
    assert accuracy < 0.35

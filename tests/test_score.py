"""python -m mnistgen.score: bad input files get one clear line (the end-to-end scoring,
which must reproduce evaluate's GAN row, is in test_pipeline.py)."""
import numpy as np
import pytest

from mnistgen.data import DataError
from mnistgen.score import read_samples

GOOD = np.zeros((50, 28, 28), np.uint8), np.arange(50) % 10


def write(tmp_path, **arrays):
    path = tmp_path / "mine.npz"
    np.savez(path, **arrays)
    return path


def test_a_good_file_reads_as_flat_uint8_and_int64(tmp_path):
    images, labels = read_samples(write(tmp_path, images=GOOD[0], labels=GOOD[1]), per_class=5)
    assert images.shape == (50, 784) and images.dtype == np.uint8 and labels.dtype == np.int64


def test_other_sizes_are_resized_to_28(tmp_path):
    big = np.zeros((50, 32, 32), np.uint8)
    big[:, 8:24, 8:24] = 255  # a square covering the middle half
    images, _ = read_samples(write(tmp_path, images=big, labels=GOOD[1]), per_class=5)
    square = images.reshape(-1, 28, 28)[0]
    assert square[14, 14] == 255 and square[0, 0] == 0 and square.shape == (28, 28)


@pytest.mark.parametrize("arrays, message", [
    ({"images": GOOD[0]}, "no 'labels' array"),
    ({"labels": GOOD[1]}, "no 'images' array"),
    ({"images": GOOD[0].astype(np.float32) / 255, "labels": GOOD[1]}, r"floats in \[0, 1\]; save \(images \* 255\)"),
    ({"images": GOOD[0].astype(np.int32), "labels": GOOD[1]}, "images are int32; expected uint8"),
    ({"images": np.zeros((50, 700), np.uint8), "labels": GOOD[1]}, "700 pixels is not a square image"),
    ({"images": np.zeros((50, 28, 30), np.uint8), "labels": GOOD[1]}, r"expected \(N, H, W\) square"),
    ({"images": GOOD[0], "labels": GOOD[1][:40]}, "expected 50 integers 0..9"),
    ({"images": GOOD[0], "labels": GOOD[1] + 1}, r"labels must be digits 0..9, found 1..10"),
    ({"images": GOOD[0], "labels": np.where(GOOD[1] == 7, 1, GOOD[1])}, "0 images of digit 7"),
])
def test_bad_files_name_the_problem(tmp_path, arrays, message):
    with pytest.raises(DataError, match=message):
        read_samples(write(tmp_path, **arrays), per_class=5)


def test_missing_or_unreadable_file(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_samples(tmp_path / "nope.npz", per_class=5)
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a readable .npz"):
        read_samples(tmp_path / "bad.npz", per_class=5)
    with pytest.raises(DataError, match="is a folder; name an .npz file"):
        read_samples(tmp_path, per_class=5)

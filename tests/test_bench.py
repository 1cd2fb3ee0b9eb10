import json

import numpy as np
import pytest
from torchvision import datasets

from bench.benchmark import write_idx
from bench.flops import classifier_step
from mnistgen.models import JudgeConfig

from conftest import ROOT, make_params


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
    # measuring the EMA's BatchNorm statistics: G forward passes, in train_gan only
    unmeasured = flops_for(tmp_path, "unmeasured", {"train_gan": {"ema_bn_samples": 0}})
    assert unmeasured["train_gan"] < base["train_gan"]
    assert {k: v for k, v in unmeasured.items() if k != "train_gan"} == {k: v for k, v in base.items() if k != "train_gan"}


def test_the_consistency_term_costs_about_a_quarter_more_per_judge_step(tmp_path):
    config = JudgeConfig(channels=[8, 16], feature_dim=32, input_blur=1.5, pool="blur")
    plain = classifier_step(config, 64, 2, consistency=0.0)
    held = classifier_step(config, 64, 2, consistency=0.2)  # 64 + 16 changed copies
    assert 1.2 * plain < held < 1.3 * plain
    more = flops_for(tmp_path, "held", {"train_judge": {"consistency": 0.2}})
    less = flops_for(tmp_path, "plain", {"train_judge": {"consistency": 0.0}})
    assert more["train_judge"] > less["train_judge"] and more["evaluate"] == less["evaluate"]


def test_the_gan_benchmark_counts_r1_steps_at_their_share():
    """`make bench` times the real step, R1 included (FlopCounterMode cannot watch
    torch.autograd.grad, so R1's work is added as its 1/r1_every share, as bench.flops does)."""
    import dataclasses

    import torch

    from bench.benchmark import gan_bench
    from conftest import make_params

    p = make_params("train_gan", arch="conv", latent_dim=8, g_hidden=[8, 4], d_hidden=[4, 8, 16],
                    batch_size=16, r1=0.3, r1_every=2, mode_seeking=0.0, precision="fp32")
    images, labels = torch.rand(64, 1, 28, 28) * 2 - 1, torch.arange(64) % 10
    rates, with_r1, _ = gan_bench(p, images, labels, steps=2, repeats=1)
    _, without_r1, _ = gan_bench(dataclasses.replace(p, r1=0.0), images, labels, steps=2, repeats=1)
    assert len(rates) == 1 and rates[0] > 0
    assert without_r1 < with_r1 < 2 * without_r1


def test_the_gan_benchmark_times_the_training_loop_s_step(monkeypatch):
    """The timed step is the loop's own: the step count advances, so R1 runs on 1 step in
    r1_every as in a real run (not on every timed step)."""
    import torch

    import mnistgen.gan
    from bench.benchmark import gan_stepper
    from conftest import make_params

    calls = []
    real_r1 = mnistgen.gan.r1_penalty
    monkeypatch.setattr(mnistgen.gan, "r1_penalty", lambda *a: calls.append(1) or real_r1(*a))
    p = make_params("train_gan", arch="conv", latent_dim=8, g_hidden=[8, 4], d_hidden=[4, 8, 16],
                    batch_size=16, r1=0.3, r1_every=3, mode_seeking=0.0, precision="fp32", epochs=2)
    images, labels = torch.rand(64, 1, 28, 28) * 2 - 1, torch.arange(64) % 10
    state, one_step = gan_stepper(p, images, labels)
    for _ in range(6):
        one_step()
    assert state.step == 6 and len(calls) == 2
    for _ in range(4):  # past the run's 2 epochs x 4 steps: the schedule starts over
        one_step()
    assert state.step == 2


def test_the_judge_benchmark_times_the_training_loop_s_update():
    """`make bench` times train_classifier's update, consistency term included (a quarter of
    the batch is passed again), not a plain cross-entropy step."""
    import torch

    from bench.benchmark import judge_bench
    from conftest import make_params

    images, labels = torch.rand(64, 1, 28, 28) * 2 - 1, torch.arange(64) % 10
    sizes = dict(channels=[4, 8], feature_dim=16, batch_size=32, precision="fp32")
    held = make_params("train_judge", consistency=0.3, **sizes)
    plain = make_params("train_judge", consistency=0.0, **sizes)
    rates, held_flops, _ = judge_bench(held, images, labels, steps=2, repeats=1)
    _, plain_flops, _ = judge_bench(plain, images, labels, steps=2, repeats=1)
    assert len(rates) == 1 and rates[0] > 0
    assert 1.2 * plain_flops < held_flops < 1.3 * plain_flops


@pytest.mark.parametrize("path", sorted((ROOT / "bench").glob("*_variants.json")), ids=lambda p: p.name)
def test_every_committed_sweep_can_be_rerun(path):
    """Each variant of each sweep behind docs/experiments.md is still a valid section once
    merged into params.yaml's (judge_*: train_judge, the rest: train_gan): a renamed or
    removed key fails here, naming the file and variant, not in an hour-long rerun."""
    from mnistgen.errors import ParamsError

    section = "train_judge" if path.name.startswith("judge") else "train_gan"
    variants = json.loads(path.read_text())
    assert variants, f"{path.name}: no variants"
    for name, overrides in variants.items():
        try:
            make_params(section, **overrides)
        except ParamsError as err:
            pytest.fail(f"{path.name}, variant {name!r}: {err}")

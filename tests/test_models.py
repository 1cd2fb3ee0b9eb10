import pytest
import torch

from mnistgen.models import (BlurDown, Discriminator, GanConfig, Generator, InvertedConfig,
                             InvertedGenerator, Judge, JudgeConfig, PackedGenerator, _downsample,
                             build, config_dict, upsample_conv)
from mnistgen.runtime import CheckpointError, load_checkpoint, save_checkpoint


def test_shapes():
    x = torch.randn(5, 1, 28, 28)
    judge = Judge(JudgeConfig(channels=[8, 16], feature_dim=32, input_blur=1.5, pool="blur"))
    assert judge(x).shape == (5, 10) and judge.embed(x).shape == (5, 32)
    cfg = GanConfig(arch="mlp", latent_dim=16, g_hidden=[32, 64], d_hidden=[64, 32], spectral_norm=True,
                    conditional_bn=False)
    G, D = Generator(cfg), Discriminator(cfg)
    labels = torch.arange(5)
    images = G(torch.randn(5, 16), labels)
    assert images.shape == (5, 1, 28, 28) and images.abs().max() <= 1
    assert D(images, labels).shape == (5,)
    packed = PackedGenerator(G.eval())(torch.cat([torch.eye(10)[:5], torch.randn(5, 16)], 1))
    assert packed.shape == (5, 784) and 0 <= packed.min() and packed.max() <= 1
    for channels in ([16, 8], [16, 8, 4]):  # conv G: 7x7 -> 14x14 (-> a 28x28 stage) -> 1 channel
        conv = Generator(GanConfig(arch="conv", latent_dim=16, g_hidden=channels, d_hidden=[8, 8, 8],
                                  spectral_norm=False, conditional_bn=False))
        assert conv(torch.randn(5, 16), labels).shape == (5, 1, 28, 28)
        assert len(conv.convs) == len(channels) - 1 and conv.out.in_channels == channels[-1]
    inv = InvertedGenerator(InvertedConfig(output="softmax"))
    assert inv(torch.eye(10)).shape == (10, 784)
    assert torch.allclose(inv.intensities(torch.eye(10)).amax(1), torch.ones(10))


def test_projection_discriminator_depends_on_the_label():
    D = Discriminator(GanConfig(arch="mlp", latent_dim=4, g_hidden=[16], d_hidden=[16],
                                spectral_norm=False, conditional_bn=False))
    x = torch.randn(1, 1, 28, 28)
    assert D(x, torch.tensor([0])) != D(x, torch.tensor([1]))


def test_conditional_batchnorm_starts_plain_and_learns_a_gain_and_bias_per_digit():
    from mnistgen.models import ClassBatchNorm

    torch.manual_seed(0)
    norm, plain = ClassBatchNorm(4), torch.nn.BatchNorm2d(4)
    h, labels = torch.randn(8, 4, 7, 7), torch.arange(8) % 10
    assert torch.allclose(norm(h, labels), plain(h), atol=1e-6)  # gain 1, bias 0 to start
    with torch.no_grad():
        norm.bias.weight[3] += 1.0  # digit 3 only
    moved = (norm(h, labels) - plain(h)).mean(dim=(1, 2, 3))
    assert torch.allclose(moved, (labels == 3).float(), atol=1e-5)
    G = Generator(GanConfig(arch="conv", latent_dim=8, g_hidden=[8, 4], d_hidden=[8, 8, 8],
                            spectral_norm=False, conditional_bn=True))
    assert sum(isinstance(m, ClassBatchNorm) for m in G.modules()) == 2
    assert G(torch.randn(3, 8), torch.tensor([1, 2, 3])).shape == (3, 1, 28, 28)


def test_r1_is_the_squared_gradient_norm_at_real_digits():
    from mnistgen.gan import r1_penalty

    w = torch.randn(1, 1, 28, 28)  # D(x) = <w, x>: the gradient is w wherever x is
    penalty = r1_penalty(lambda x, labels: (x * w).sum(dim=(1, 2, 3)), torch.randn(5, 1, 28, 28),
                         torch.zeros(5, dtype=torch.long))
    assert torch.allclose(penalty, w.pow(2).sum())


def test_relativistic_pairing_compares_each_fake_with_its_real():
    from mnistgen.gan import d_loss_fn, g_loss_fn

    real, fake = torch.tensor([2.0, 0.0]), torch.tensor([0.0, 0.0])
    # D wins pair 0 by 2 and ties pair 1: softplus(-2) and softplus(0)
    expected = (torch.nn.functional.softplus(torch.tensor(-2.0)) + torch.log(torch.tensor(2.0))) / 2
    assert torch.allclose(d_loss_fn("rpgan", real, fake), expected)
    assert torch.allclose(g_loss_fn("rpgan", fake, real), d_loss_fn("rpgan", fake, real))


def test_checkpoint_rebuilds_the_model_from_the_file_alone(tmp_path):
    judge = Judge(JudgeConfig(channels=[4, 8], feature_dim=16, input_blur=0.0, pool="blur")).eval()
    path = tmp_path / "judge.pt"
    save_checkpoint(path, kind="judge", models={"model": judge}, config=config_dict(judge))
    payload = load_checkpoint(path, "judge")
    again = build("judge", payload["config"]).eval()
    again.load_state_dict(payload["state"]["model"])
    x = torch.randn(2, 1, 28, 28)
    assert torch.equal(judge(x), again(x))
    with pytest.raises(CheckpointError, match="holds a 'judge' model, expected 'gan'"):
        load_checkpoint(path, "gan")


def test_damaged_checkpoints_are_refused(tmp_path):
    judge = Judge(JudgeConfig(channels=[4], feature_dim=8, input_blur=0.0, pool="max"))
    path = tmp_path / "judge.pt"
    save_checkpoint(path, kind="judge", models={"model": judge}, config=config_dict(judge))
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(path, "judge")
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(path, "judge")
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt", "judge")


def test_checkpoints_never_unpickle_code(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": 1, "kind": "judge", "payload": object()}, path)  # arbitrary object
    with pytest.raises(CheckpointError):
        load_checkpoint(path, "judge")


@pytest.mark.parametrize("channels", [[4], [4, 8], [4, 8, 8], [4, 8, 8, 8]])
def test_both_poolings_halve_the_side_alike(channels):
    x = torch.randn(3, 1, 28, 28)
    for pool in ("max", "blur"):
        judge = Judge(JudgeConfig(channels=channels, feature_dim=8, input_blur=0.0, pool=pool))
        assert judge.conv(x).shape[-1] == 28 >> len(channels)
        logits, features = judge(x, with_features=True)
        assert logits.shape == (3, 10) and torch.equal(features, judge.embed(x))


def test_blur_pooling_moves_less_than_max_pooling_under_a_one_pixel_shift():
    x = torch.rand(64, 4, 28, 28, generator=torch.Generator().manual_seed(0))
    shifted = torch.roll(x, 1, dims=3)
    moves = {}
    for pool in ("max", "blur"):
        down = torch.nn.Sequential(*_downsample(pool, 4))
        moves[pool] = ((down(shifted) - down(x)).norm() / down(x).norm()).item()
    assert moves["blur"] < 0.7 * moves["max"], moves


def test_blur_down_keeps_a_flat_image_flat():
    flat = torch.full((1, 2, 7, 7), 0.3)
    assert torch.allclose(BlurDown(2)(flat), torch.full((1, 2, 4, 4), 0.3))


def test_a_config_from_other_code_is_a_checkpoint_error():
    old = {"channels": [4], "feature_dim": 8, "input_blur": 0.0}  # a judge saved before `pool`
    with pytest.raises(CheckpointError, match=r"judge config does not fit this code .*pool.*dvc repro"):
        build("judge", old)


@pytest.mark.parametrize("c_in, c_out, side", [(64, 32, 7), (32, 16, 14), (16, 1, 14), (3, 5, 1)])
def test_upsample_conv_is_conv_of_the_upsampled_map_with_the_same_gradients(c_in, c_out, side):
    # float64, so what differs is the formula, not float rounding
    conv = torch.nn.Conv2d(c_in, c_out, 3, padding=1).double()
    x = torch.randn(4, c_in, side, side, dtype=torch.float64, requires_grad=True)
    ours = upsample_conv(x, conv)
    reference = conv(torch.nn.functional.interpolate(x, scale_factor=2))
    assert ours.shape == (4, c_out, 2 * side, 2 * side)
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-12)
    upstream = torch.randn_like(reference)
    ours_grads = torch.autograd.grad(ours, [x, conv.weight, conv.bias], upstream)
    reference_grads = torch.autograd.grad(reference, [x, conv.weight, conv.bias], upstream)
    for a, b in zip(ours_grads, reference_grads):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


@pytest.mark.parametrize("g_hidden", [[64, 32, 16], [32, 16]])
def test_the_generator_draws_what_upsampling_then_convolving_draws(g_hidden):
    cfg = GanConfig(arch="conv", latent_dim=8, g_hidden=g_hidden, d_hidden=[8, 8, 16],
                    spectral_norm=False, conditional_bn=True)
    G = Generator(cfg).double().eval()
    z, y = torch.randn(6, 8, dtype=torch.float64), torch.arange(6)
    F = torch.nn.functional
    h = G.project(torch.cat([z, G.embed(y)], 1)).unflatten(1, (g_hidden[0], 7, 7))
    h = G.act(G.norms[0](h, y))
    for i, conv in enumerate(G.convs, 1):  # the plain formulation, written out
        h = G.act(G.norms[i](conv(F.interpolate(h, scale_factor=2)), y))
    if h.shape[-1] < 28:
        h = F.interpolate(h, scale_factor=2)
    torch.testing.assert_close(G(z, y), torch.tanh(G.out(h)), rtol=0, atol=1e-12)


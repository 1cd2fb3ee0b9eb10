"""The mode-seeking term (Mao et al. 2019): pairs share a label, the loss falls as they differ."""
import pytest
import torch

from mnistgen.models import GanConfig, Generator
from mnistgen.params import ParamsError, parse_section
from conftest import make_params, repo_section
from mnistgen.gan import GanParams, GanState, gan_step, mode_seeking_loss, paired

CPU = torch.device("cpu")


def test_pairs_share_a_label():
    labels = torch.tensor([3, 1, 4, 1, 5, 9])
    fake_labels = paired(labels)
    assert fake_labels.tolist() == [3, 1, 4, 3, 1, 4]
    assert torch.equal(fake_labels[:3], fake_labels[3:])


def test_loss_is_noise_distance_over_image_distance():
    z = torch.zeros(4, 8)
    z[2:] = 2.0                               # |z_i - z_(i+2)| = 2 everywhere
    fake = torch.zeros(4, 1, 28, 28)
    fake[2:] = 0.5                            # |x_i - x_(i+2)| = 0.5 everywhere
    assert mode_seeking_loss(fake, z).item() == pytest.approx(1 / (0.5 / 2 + 1e-5))
    same = torch.zeros(4, 1, 28, 28)          # a collapsed pair: the largest loss
    assert mode_seeking_loss(same, z).item() == pytest.approx(1e5)


def test_minimising_it_pulls_pairs_of_one_label_apart():
    torch.manual_seed(0)
    G = Generator(GanConfig(arch="conv", latent_dim=8, g_hidden=[8, 8, 4], d_hidden=[8, 8, 8], spectral_norm=False,
                            conditional_bn=False))
    opt = torch.optim.Adam(G.parameters(), lr=1e-2)
    z, labels = torch.randn(32, 8), paired(torch.arange(32) % 10)

    def pair_distance():
        with torch.no_grad():
            fake = G(z, labels)
        return (fake[:16] - fake[16:]).abs().mean().item()

    before = pair_distance()
    for _ in range(20):
        loss = mode_seeking_loss(G(z, labels), z)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert pair_distance() > 1.5 * before


def test_gan_step_adds_the_weighted_term_to_the_generator_loss_only():
    gen = torch.Generator().manual_seed(1)
    real, z = torch.rand(20, 1, 28, 28, generator=gen) * 2 - 1, torch.randn(20, 8, generator=gen)
    labels = paired(torch.arange(20) % 10)  # already paired: every run sees these labels

    def fresh_state(weight):
        p = make_params("train_gan", arch="conv", latent_dim=8, g_hidden=[8, 8, 4], d_hidden=[8, 8, 16],
                        spectral_norm=False, batch_size=20, precision="fp32", mode_seeking=weight)
        torch.manual_seed(0)
        return GanState(p, CPU), p

    (plain, p0), (seeking, p2) = fresh_state(0.0), fresh_state(2.0)
    with torch.no_grad():  # the term for the fakes that step will draw (same init, same noise)
        term = mode_seeking_loss(fresh_state(0.0)[0].G(z, labels), z).item()
    d0, g0 = gan_step(plain, real, labels, z, p0)
    d2, g2 = gan_step(seeking, real, labels, z, p2)
    assert d2 == pytest.approx(d0, rel=1e-6)  # D's update does not see the term
    assert g2 == pytest.approx(g0 + 2.0 * term, rel=1e-5)
    assert term > 1.0  # fakes in [-1, 1], noise pairs ~1.1 apart: the term is not negligible


@pytest.mark.parametrize("raw, message", [
    ({"mode_seeking": -0.1}, r"train_gan\.mode_seeking: must be >= 0.0"),
    ({"mode_seeking": 0.3, "batch_size": 5}, r"train_gan\.batch_size: mode_seeking pairs up"),
    ({"arch": "conv", "g_hidden": [8, 8, 8, 8], "d_hidden": [8, 8, 8]}, r"arch conv takes g_hidden"),
])
def test_bad_settings_are_named(raw, message):
    with pytest.raises(ParamsError, match=message):
        parse_section({**repo_section("train_gan"), **raw}, GanParams, "train_gan")

"""What one GAN update computes: D's weights get gradients from D's own loss only."""
import collections
import contextlib

import torch

from conftest import make_params
from mnistgen import gan
from mnistgen.gan import GanState, gan_step

CPU = torch.device("cpu")


def small_state():
    p = make_params("train_gan", arch="conv", latent_dim=8, g_hidden=[8, 8, 4], d_hidden=[8, 8, 16],
                    spectral_norm=False, batch_size=20, precision="fp32")
    torch.manual_seed(0)
    return GanState(p, CPU), p


def batch():
    gen = torch.Generator().manual_seed(1)
    real, z = torch.rand(20, 1, 28, 28, generator=gen) * 2 - 1, torch.randn(20, 8, generator=gen)
    return real, gan.paired(torch.arange(20) % 10), z


def test_the_generator_update_computes_no_gradient_for_the_discriminator():
    s, p = small_state()
    computed = collections.Counter()
    for name, q in [*s.D.named_parameters(prefix="D"), *s.G.named_parameters(prefix="G")]:
        q.register_hook(lambda grad, name=name: computed.update([name]))
    gan_step(s, *batch(), p)  # step 0: R1 runs too (every r1_every-th step)
    d_names = [name for name, _ in s.D.named_parameters(prefix="D")]
    g_names = [name for name, _ in s.G.named_parameters(prefix="G")]
    assert {name: computed[name] for name in d_names} == dict.fromkeys(d_names, 1)  # D's update only
    assert {name: computed[name] for name in g_names} == dict.fromkeys(g_names, 1)
    assert all(q.requires_grad for q in s.D.parameters())  # unfrozen again for the next D update


def test_freezing_the_discriminator_leaves_both_updates_as_they_were(monkeypatch):
    with_frozen_d, p = small_state()
    gan_step(with_frozen_d, *batch(), p)
    monkeypatch.setattr(gan, "frozen", contextlib.nullcontext)  # D's weights get G's gradients too
    plain, p = small_state()
    gan_step(plain, *batch(), p)
    for a, b in zip([*with_frozen_d.G.parameters(), *with_frozen_d.D.parameters()],
                    [*plain.G.parameters(), *plain.D.parameters()]):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)

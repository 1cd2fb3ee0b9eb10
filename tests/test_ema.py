"""The generator's moving average: its decay at step t is min(ema_decay, (1+t)/(ema_warmup+t)),
and it draws with BatchNorm statistics measured on its own digits."""
import copy

import torch

from conftest import make_params
from mnistgen.gan import (GanState, balanced_labels, gan_step, measure_bn_stats, save_model,
                          settle_ema)
from mnistgen.runtime import load_checkpoint

CPU = torch.device("cpu")


def small_params(**overrides):
    return make_params("train_gan", arch="conv", latent_dim=8, g_hidden=[8, 4], d_hidden=[4, 8, 16],
                       batch_size=16, r1=0.0, mode_seeking=0.0, precision="fp32", lr_g=0.01, **overrides)


def ema_after_steps(steps: int, **overrides) -> tuple[GanState, dict]:
    p = small_params(**overrides)
    torch.manual_seed(0)
    state = GanState(p, CPU)
    start = {k: v.clone() for k, v in state.G_ema.state_dict().items()}
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        real = torch.rand(16, 1, 28, 28, generator=gen) * 2 - 1
        gan_step(state, real, torch.arange(16) % 10, torch.randn(16, 8, generator=gen), p)
        state.step += 1
    return state, start


def weight_gap(a: dict, b: dict) -> float:
    return sum((a[k] - b[k]).abs().sum().item() for k in a if k.endswith("weight"))


def test_the_warmup_sets_how_closely_the_average_follows_the_generator_early_on():
    # step 0: decay 1/10 with the default warm-up, so the average all but becomes G; with
    # warm-up 1 the decay is already ema_decay (0.999) and the average barely moves
    followed, start = ema_after_steps(1, ema_decay=0.999, ema_warmup=10)
    held, _ = ema_after_steps(1, ema_decay=0.999, ema_warmup=1)
    g = followed.G.state_dict()
    assert weight_gap(followed.G_ema.state_dict(), g) < 0.2 * weight_gap(start, g)
    moved = weight_gap(held.G_ema.state_dict(), start)
    assert 0 < moved < 0.002 * weight_gap(start, g)


def norm_inputs(G, z, labels) -> list[torch.Tensor]:
    """What each BatchNorm of G sees, one forward pass in training mode."""
    seen = []
    hooks = [m.register_forward_hook(lambda m, inp, out: seen.append(inp[0].detach().clone()))
             for m in G.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    G.train()
    with torch.no_grad():
        G(z, labels)
    for h in hooks:
        h.remove()
    return seen


def test_the_ema_generators_statistics_are_measured_on_its_own_digits():
    # a few steps at lr 0.01 move the average's weights away from G's; update_ema copies G's
    # statistics, which describe G's activations, not the average's
    state, _ = ema_after_steps(5, ema_decay=0.5, ema_bn_samples=200)
    G_ema = state.G_ema
    weights = {k: v.clone() for k, v in G_ema.named_parameters()}
    copied = [m.running_mean.clone() for m in G_ema.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    measure_bn_stats(G_ema, samples=200, seed=7)
    # the same noise and labels measure_bn_stats draws (200 <= BN_STATS_BATCH: one pass)
    z = torch.randn(200, 8, generator=torch.Generator().manual_seed(7))
    seen = norm_inputs(copy.deepcopy(G_ema), z, balanced_labels(200))
    norms = [m for m in G_ema.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(norms) == len(seen) == 2
    for m, x, old in zip(norms, seen, copied):
        torch.testing.assert_close(m.running_mean, x.mean(dim=(0, 2, 3)))
        torch.testing.assert_close(m.running_var, x.var(dim=(0, 2, 3), unbiased=True))
        assert m.momentum == 0.1 and not m.training  # restored; the model is left to draw
        assert not torch.allclose(m.running_mean, old, atol=1e-3)
    for k, v in G_ema.named_parameters():  # statistics only: the weights are the average's
        assert torch.equal(v, weights[k])


def test_measured_statistics_leave_training_as_it_was_and_are_what_the_checkpoint_holds(tmp_path):
    # the next update copies G's statistics into the average again, so a run that measured
    # (to draw a grid, say) goes on exactly as one that did not
    p = small_params(ema_bn_samples=300)
    plain, _ = ema_after_steps(3, ema_bn_samples=300)
    measured, _ = ema_after_steps(3, ema_bn_samples=300)
    settle_ema(measured, p)
    gen = torch.Generator().manual_seed(5)
    real, z = torch.rand(16, 1, 28, 28, generator=gen) * 2 - 1, torch.randn(16, 8, generator=gen)
    for state in (plain, measured):
        gan_step(state, real, torch.arange(16) % 10, z, p)
    for a, b in zip(plain.G_ema.state_dict().values(), measured.G_ema.state_dict().values()):
        assert torch.equal(a, b)
    # save_model writes the average with its own statistics, the same numbers every time
    save_model(measured, p, tmp_path / "gan.pt")
    saved = load_checkpoint(tmp_path / "gan.pt", "gan")["state"]["generator"]
    copied = {k: v.clone() for k, v in plain.G_ema.state_dict().items()}
    measure_bn_stats(plain.G_ema, samples=300, seed=p.seed + 3)
    for key, value in plain.G_ema.state_dict().items():
        assert torch.equal(saved[key], value), key
    assert not torch.equal(saved["norms.0.norm.running_var"], copied["norms.0.norm.running_var"])
    # 0 keeps the statistics G's, copied
    settle_ema(plain, small_params(ema_bn_samples=0))
    assert torch.equal(plain.G_ema.state_dict()["norms.0.norm.running_var"],
                       saved["norms.0.norm.running_var"])

"""The generator's moving average: its decay at step t is min(ema_decay, (1+t)/(ema_warmup+t))."""
import torch

from conftest import make_params
from mnistgen.gan import GanState, gan_step

CPU = torch.device("cpu")


def ema_after_steps(steps: int, **overrides) -> tuple[GanState, dict]:
    p = make_params("train_gan", arch="conv", latent_dim=8, g_hidden=[8, 4], d_hidden=[4, 8, 16],
                    batch_size=16, r1=0.0, mode_seeking=0.0, precision="fp32", lr_g=0.01, **overrides)
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

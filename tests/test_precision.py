"""bf16 mixed precision: chosen by the CPU's kind and the model, close to fp32, never touching stored weights."""
import pytest
import torch

from mnistgen.runtime import cpu_kind, resolve_precision
from conftest import make_params
from mnistgen.gan import GanState, gan_step

CPU = torch.device("cpu")


def pretend_cpu(monkeypatch, *, amx: bool, avx512_bf16: bool, isa_limit: str | None = None):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    if isa_limit is None:
        monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    else:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", isa_limit)


@pytest.mark.parametrize("amx, avx512_bf16, kind", [(True, True, "amx"), (False, True, "avx512_bf16"),
                                                    (False, False, "fp32")])
def test_auto_follows_the_measured_row_of_the_cpus_kind(monkeypatch, amx, avx512_bf16, kind):
    """bf16 for the GAN where the CPU has bf16 units; the judge, slower in bf16 on both kinds
    that have them (docs/speed.md), stays fp32 on every CPU."""
    pretend_cpu(monkeypatch, amx=amx, avx512_bf16=avx512_bf16)
    assert cpu_kind() == kind
    assert resolve_precision("auto", CPU, model="gan") == ("fp32" if kind == "fp32" else "bf16")
    assert resolve_precision("auto", CPU, model="judge") == "fp32"
    for model in ("gan", "judge"):  # an explicit choice always wins
        assert resolve_precision("fp32", CPU, model=model) == "fp32"
        assert resolve_precision("bf16", CPU, model=model) == "bf16"


def one_step(precision: str):
    p = make_params("train_gan", arch="conv", latent_dim=16, g_hidden=[16, 8], d_hidden=[8, 16, 32],
                    spectral_norm=False, batch_size=32, precision=precision, mode_seeking=0.0)
    torch.manual_seed(0)
    state = GanState(p, CPU)
    before = {k: v.clone() for k, v in state.G.state_dict().items()}
    gen = torch.Generator().manual_seed(1)
    real = torch.rand(32, 1, 28, 28, generator=gen) * 2 - 1
    labels = torch.arange(32) % 10
    losses = gan_step(state, real, labels, torch.randn(32, 16, generator=gen), p)
    return state, before, losses


def test_bf16_step_tracks_fp32_and_keeps_weights_and_optimizer_in_fp32():
    fp32_state, before, fp32_losses = one_step("fp32")
    bf16_state, _, bf16_losses = one_step("bf16")
    assert bf16_state.precision == "bf16"
    assert bf16_losses == pytest.approx(fp32_losses, rel=0.05)
    assert bf16_losses != fp32_losses  # bf16 really ran: the arithmetic differs
    for model in (bf16_state.G, bf16_state.D, bf16_state.G_ema):
        assert all(t.dtype == torch.float32 for t in model.state_dict().values() if t.is_floating_point())
    moments = [s["exp_avg"] for s in bf16_state.opt_g.state.values()]
    assert moments and all(m.dtype == torch.float32 for m in moments)
    # the update itself: Adam's first step is about lr * sign(gradient), so the two
    # precisions must move (nearly) every weight of G the same way
    for name, w in bf16_state.G.state_dict().items():
        if name.endswith("weight") and w.dim() > 1:
            step_bf16 = w - before[name]
            step_fp32 = fp32_state.G.state_dict()[name] - before[name]
            same_sign = (torch.sign(step_bf16) == torch.sign(step_fp32)).float().mean()
            assert same_sign > 0.9, name


@pytest.mark.parametrize("isa_limit, kind", [("ALL", "amx"), ("AVX2", "fp32"), ("avx512_core", "fp32"),
                                             ("avx512_core_bf16", "avx512_bf16"),
                                             ("avx512_core_amx", "amx")])
def test_onednn_held_below_the_bf16_units_means_the_fp32_row(monkeypatch, isa_limit, kind):
    """The laptop path on an AMX machine (ONEDNN_MAX_CPU_ISA=AVX2): auto must pick fp32, as
    the kernels oneDNN may use decide the kind, not the chip's flags."""
    pretend_cpu(monkeypatch, amx=True, avx512_bf16=True, isa_limit=isa_limit)
    assert cpu_kind() == kind
    assert resolve_precision("auto", CPU, model="gan") == ("fp32" if kind == "fp32" else "bf16")
    assert resolve_precision("bf16", CPU, model="gan") == "bf16"  # an explicit choice stands

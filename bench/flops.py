"""FLOPs of a whole default `dvc repro`, stage by stage, counted with torch.utils.flop_counter.

Each stage's unit of work (one training step, one forward pass over a batch) runs once under
FlopCounterMode on the real models and shapes; the count is multiplied by how many of them
the stage's section of params.yaml asks for (epochs x steps, in-training evaluations, CAS
fits, ...). The counter sees matmuls and convolutions (forward and backward), which is where
these models spend their arithmetic; element-wise ops and the k-NN distances of
precision/recall and of the nearest training digit are not counted.

Usage: python -m bench.flops [--params params.yaml]
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from mnistgen.models import InvertedConfig, InvertedGenerator, Judge, JudgeConfig
from mnistgen.params import load_section
from mnistgen.classifier import JudgeParams, train_classifier
from mnistgen.gan import GanParams, GanState, gan_step
from mnistgen.inverted import InvertedParams, onehot
from mnistgen.sampling import SampleParams
from mnistgen.scoring import EvaluateParams, cas_config, cas_steps
from mnistgen.transforms import CALIBRATION

TRAIN_IMAGES, TEST_IMAGES = 60_000, 10_000
CPU = torch.device("cpu")


def count(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def classifier_step(config: JudgeConfig, batch_size, shift, consistency=0.0) -> int:
    """One AdamW step of train_classifier (judge or CAS) on a batch; with `consistency` the
    step also runs the changed copies of a quarter of the batch."""
    model = Judge(config)
    x, y = torch.zeros(batch_size, 1, 28, 28), torch.arange(batch_size) % 10
    return count(lambda: train_classifier(model=model, images=x, labels=y, epochs=1,
                                          batch_size=batch_size, lr=1e-3, weight_decay=0.0,
                                          shift=shift, device=CPU, seed=0,
                                          consistency=consistency))


def forward(model, *inputs) -> int:
    with torch.no_grad():
        return count(lambda: model.eval()(*inputs))


def judge_forward(judge_p: JudgeParams, n: int) -> int:
    judge = Judge(judge_p.model_config())
    return forward(judge, torch.zeros(1000, 1, 28, 28)) * n // 1000


def r1_flops(D, real, labels) -> int:
    """What R1 adds to a step: D on the real batch, its input gradient with a graph, and the
    penalty's backward through it. (FlopCounterMode cannot watch torch.autograd.grad, which
    mnistgen.gan.r1_penalty uses; backward(inputs=...) does the same arithmetic.)"""
    def penalty_step():
        x = real.clone().requires_grad_(True)
        with warnings.catch_warnings():  # the cycle create_graph warns of is broken below
            warnings.simplefilter("ignore", UserWarning)
            D(x, labels).sum().backward(create_graph=True, inputs=[x])
        x.grad.pow(2).sum(dim=(1, 2, 3)).mean().backward()
        D.zero_grad(set_to_none=True)  # create_graph leaves graphs in the params' grads

    return count(penalty_step)


def gan_step_flops(state: GanState, p: GanParams, total: int) -> float:
    """The FLOPs of an average training step over `total` steps: one step without R1 (it
    runs on steps divisible by r1_every only), plus R1's work on ceil(total / r1_every) of
    them. Runs one update on `state`."""
    b = p.batch_size
    real, labels = torch.zeros(b, 1, 28, 28), torch.arange(b) % 10
    state.step = 1
    step = count(lambda: gan_step(state, real, labels, torch.randn(b, p.latent_dim), p))
    with_r1 = -(-total // p.r1_every) if p.r1 else 0
    if with_r1:
        step += with_r1 * r1_flops(state.D, real, labels) / total
    return step


def stage_flops(params_path: Path) -> dict[str, int]:
    judge_p = load_section(params_path, "train_judge", JudgeParams)
    inv_p = load_section(params_path, "train_inverted", InvertedParams)
    gan_p = load_section(params_path, "train_gan", GanParams)
    sample_p = load_section(params_path, "sample", SampleParams)
    eval_p = load_section(params_path, "evaluate", EvaluateParams)
    flops = {}

    n = judge_p.train_limit or TRAIN_IMAGES
    steps = judge_p.epochs * (n // judge_p.batch_size)
    flops["train_judge"] = (steps * classifier_step(judge_p.model_config(), judge_p.batch_size,
                                                    judge_p.shift, judge_p.consistency)
                            + judge_forward(judge_p, TEST_IMAGES))

    inverted = InvertedGenerator(InvertedConfig(output="softmax"))
    batch = onehot(torch.arange(inv_p.batch_size) % 10)
    step = count(lambda: inverted.loss(inverted(batch), torch.rand(inv_p.batch_size, 784)).backward())
    flops["train_inverted"] = len(inv_p.variants) * inv_p.steps * step

    state = GanState(gan_p, CPU)
    n = gan_p.train_limit or TRAIN_IMAGES
    total = gan_p.epochs * (n // gan_p.batch_size)
    step = gan_step_flops(state, gan_p, total)
    evals = total // gan_p.eval_every + (total % gan_p.eval_every > 0)
    grids = total // gan_p.sample_every + (total % gan_p.sample_every > 0)
    g_per_image = forward(state.G_ema, torch.randn(1000, gan_p.latent_dim), torch.arange(1000) % 10) / 1000
    # the EMA's BatchNorm statistics are measured before each step's grid and scores, at the
    # start and in save_model (mnistgen.gan.settle_ema)
    draws = 2 + sum(1 for t in range(1, total + 1)
                    if t % gan_p.eval_every == 0 or t % gan_p.sample_every == 0 or t == total)
    flops["train_gan"] = int(total * step
                             + judge_forward(judge_p, 2 * gan_p.eval_samples)  # reference + floor
                             + evals * (gan_p.eval_samples * g_per_image
                                        + judge_forward(judge_p, gan_p.eval_samples))
                             + grids * 100 * g_per_image
                             + draws * gan_p.ema_bn_samples * g_per_image)

    per_row = 10 * sample_p.per_class
    flops["sample"] = int(per_row * g_per_image) + len(inv_p.variants) * forward(
        inverted, onehot(torch.arange(per_row) % 10))

    rows = 2 + len(inv_p.variants)  # real test digits, each inverted variant, the GAN
    per_row = 10 * eval_p.per_class
    cas_model = cas_config(eval_p)
    cas = (cas_steps(per_row, eval_p) * classifier_step(cas_model, eval_p.cas_batch_size, 0)
           + forward(Judge(cas_model), torch.zeros(TEST_IMAGES, 1, 28, 28)))
    judged = rows + 1 + len(CALIBRATION)  # every row, the reference, the calibration rows
    flops["evaluate"] = (judged * judge_forward(judge_p, per_row) + rows * cas
                         + judge_forward(judge_p, TRAIN_IMAGES))  # every training digit: nearest_train
    return flops


def report(flops: dict[str, int]) -> str:
    total = sum(flops.values())
    lines = [f"  {name:<16}{value / 1e12:8.2f} TFLOP  ({value / total:.0%})" for name, value in flops.items()]
    return "\n".join(lines + [f"  {'total':<16}{total / 1e12:8.2f} TFLOP"])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args(argv)
    print("FLOPs of a default dvc repro (torch.utils.flop_counter; matmuls and convolutions):")
    print(report(stage_flops(args.params)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

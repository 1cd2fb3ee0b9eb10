"""Scoring and drawing go through models in small batches (runtime.inference_batch): what
comes out must not depend on where the batches split."""
import numpy as np
import torch

from mnistgen.generators import NOISE_ROWS, Drawer
from mnistgen.images import to_model_input, to_uint8
from mnistgen.judging import features_and_predictions
from mnistgen.models import GanConfig, Generator, Judge, JudgeConfig
from mnistgen.runtime import fast_layout, inference_batch

CPU = torch.device("cpu")


def test_the_judge_scores_each_image_as_it_would_alone():
    torch.manual_seed(0)
    judge = fast_layout(Judge(JudgeConfig(channels=[8, 16], feature_dim=12, input_blur=1.0,
                                          pool="blur"))).eval()
    n = inference_batch(CPU) + 37  # two batches, the second one short
    images = np.random.default_rng(0).integers(0, 256, (n, 784), dtype=np.uint8)
    feats, preds = features_and_predictions(judge, images)
    with torch.no_grad():  # one image at a time, for the last few
        alone = [judge.embed(to_model_input(images[i:i + 1])) for i in range(n - 3, n)]
    assert feats.shape == (n, 12) and preds.shape == (n,)
    np.testing.assert_allclose(feats[n - 3:], torch.cat(alone).double().numpy(), rtol=1e-5, atol=1e-6)


def test_a_drawer_takes_its_noise_in_rows_of_noise_rows_whatever_the_batch():
    torch.manual_seed(0)
    G = Generator(GanConfig(arch="conv", latent_dim=8, g_hidden=[8, 8, 4], d_hidden=[8, 8, 8],
                            spectral_norm=False, conditional_bn=True))
    drawer = Drawer("gan", G, 8, "gan", None)
    labels = torch.arange(NOISE_ROWS + 300) % 10
    drawn = drawer.draw(labels, torch.Generator().manual_seed(5))
    gen = torch.Generator().manual_seed(5)  # the samples' bytes were made with these draws
    z = torch.cat([torch.randn(NOISE_ROWS, 8, generator=gen), torch.randn(300, 8, generator=gen)])
    with torch.no_grad():
        expected = to_uint8(drawer.model(z, labels))  # one pass over all of it
    assert drawn.shape == (NOISE_ROWS + 300, 784)
    assert np.abs(drawn.astype(int) - expected.astype(int)).max() <= 1  # float rounding at most

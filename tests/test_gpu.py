"""CUDA: the same maps, images and scores as on the CPU (run where a GPU exists; CI has none)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import galleryvis
from galleryvis import metrics, registry
from galleryvis.storage.images import fit, load_image, to_tensor
from galleryvis.sources.lite import efficientnet_lite0
from galleryvis.sources.loading import choose_device

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
PHOTOS = Path(__file__).resolve().parent.parent / "input_images"


@pytest.fixture(scope="module")
def setup():
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    x = torch.stack([to_tensor(fit(load_image(PHOTOS / n), 224), galleryvis.IMAGENET_MEAN, galleryvis.IMAGENET_STD)
                     for n in ("cat.png", "coffee.png", "rocket.jpg")])
    return efficientnet_lite0(), efficientnet_lite0().cuda(), x


def _r(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten().double(), b.flatten().double()
    return float(torch.corrcoef(torch.stack([a, b]))[0, 1])


def test_auto_device_is_cuda():
    assert choose_device("auto").type == "cuda"


def test_every_attribution_technique_agrees_with_cpu(setup):
    cpu, gpu, x = setup
    names = [n for n in registry.names("attribution") if "classification" in registry.get(n).tasks]
    params = {"smoothgrad": {"samples": 8}, "integrated_gradients": {"steps": 16},
              "kernel_shap": {"samples": 64}, "lime": {"samples": 64}}
    on_cpu = galleryvis.attribute_many(cpu, x, names, None, params=params)
    on_gpu = galleryvis.attribute_many(gpu, x.cuda(), names, None, params=params)
    for name in names:
        assert on_gpu[name].device.type == "cpu" and on_gpu[name].dtype == torch.float32
        for i in range(len(x)):
            assert _r(on_cpu[name][i], on_gpu[name][i]) > 0.99, name


def test_synthesis_on_cuda(setup):
    _, gpu, x = setup
    result = galleryvis.synthesize(gpu, "class_visualization", target=130)
    assert result.image.device.type == "cpu"
    probs = gpu(((result.image.cuda() - torch.tensor(galleryvis.IMAGENET_MEAN, device="cuda")[:, None, None])
                 / torch.tensor(galleryvis.IMAGENET_STD, device="cuda")[:, None, None])).softmax(1)
    assert float(probs[0, 130]) >= 0.9
    again = galleryvis.synthesize(gpu, "class_visualization", target=130)
    assert torch.equal(result.image, again.image)
    dream = galleryvis.synthesize(gpu, "deep_dream", layer="_blocks.10", image=x[:1].cuda())
    assert dream.image.shape == (1, 3, 224, 224)


def test_deletion_insertion_agrees_with_cpu(setup):
    cpu, gpu, x = setup
    maps = galleryvis.attribute(cpu, x, "gradcam", None)
    a = metrics.deletion_insertion(cpu, x, maps, [285, 967, 657], steps=10)
    b = metrics.deletion_insertion(gpu, x.cuda(), maps.cuda(), [285, 967, 657], steps=10)
    np.testing.assert_allclose(a.deletion_auc, b.deletion_auc, atol=0.02)
    np.testing.assert_allclose(a.insertion_auc, b.insertion_auc, atol=0.02)

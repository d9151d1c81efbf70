"""On a CUDA device (skipped without one; ``benchmarks/gpu_check.sh`` runs them): training
leaves the module where it was, bf16-mixed trains, a GPU run resumes on the CPU, the cached
sampler equals the naive one, IW and AIS equal their CPU values, and the training loss and
its gradient make no synchronizing call."""

import math

import pytest
import torch
from programs import normal_guide, normal_normal, normal_normal_exact

import pyro_genmodels as pg
from pyro_genmodels.data import load_dataset
from pyro_genmodels.infer import TrainConfig, ais_log_marginal, fit, load_checkpoint, log_marginal

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
CUDA = torch.device("cuda")


def _vae_and_data():
    torch.manual_seed(0)
    vae = pg.create_model("vae", image_shape=(1, 8, 8), latent_dim=4, hidden_dims=(64, 32))
    data = load_dataset("digits", "train", "binary").fixed()[:512]
    return vae, data


def _cfg(**kw):
    return TrainConfig(**{"epochs": 2, "batch_size": 64, "progress": False,
                          "accelerator": "gpu", **kw})  # fmt: skip


def test_fit_leaves_the_module_on_its_device():
    vae, data = _vae_and_data()
    fit(vae.to(CUDA), data, data[:64], _cfg())
    assert {p.device.type for p in vae.parameters()} == {"cuda"}
    vae, data = _vae_and_data()
    fit(vae, data, data[:64], _cfg())  # a CPU module trained on the GPU comes back to the CPU
    assert {p.device.type for p in vae.parameters()} == {"cpu"}


def test_bf16_mixed_training_follows_float32():
    rows = {}
    for precision in ("32", "bf16-mixed"):
        vae, data = _vae_and_data()
        rows[precision] = fit(vae, data, data[:128], _cfg(epochs=3, precision=precision))
    for a, b in zip(rows["32"], rows["bf16-mixed"], strict=True):
        assert b["valid_elbo"] == pytest.approx(a["valid_elbo"], abs=0.5), (a, b)
    assert rows["bf16-mixed"][-1]["valid_elbo"] > rows["bf16-mixed"][0]["valid_elbo"]


def test_a_gpu_run_resumes_on_the_cpu(tmp_path):
    vae, data = _vae_and_data()
    fit(vae, data, data[:64], _cfg(epochs=1), tmp_path)
    assert "cuda" in load_checkpoint(tmp_path / "checkpoint.pt")["rng"]
    vae, _ = _vae_and_data()
    rows = fit(vae, data, data[:64], _cfg(accelerator="cpu"), tmp_path, resume=True)
    assert [r["epoch"] for r in rows] == [1, 2]


def test_cached_sampling_equals_naive_on_cuda():
    torch.manual_seed(0)
    model = pg.create_model("gated-pixelcnn", image_shape=(1, 8, 8), hidden_channels=16,
                            num_layers=3).to(CUDA)  # fmt: skip
    torch.manual_seed(1)
    cached = model.sample(8)
    torch.manual_seed(1)
    naive = model.sample(8, cached=False)
    assert cached.device.type == "cuda" and torch.equal(cached, naive)


def test_iw_and_ais_on_cuda_equal_the_exact_value():
    """With the exact posterior as guide every weight is p(x): exact on any device."""
    x = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    exact = normal_normal_exact(x)
    for device in ("cpu", "cuda"):
        xd = x.to(device)
        iw = log_marginal(normal_normal, normal_guide, xd, 100)
        ais = ais_log_marginal(normal_normal, normal_guide, xd, 20, num_chains=4)
        assert iw.device.type == device
        torch.testing.assert_close(iw.cpu(), exact, rtol=0, atol=1e-9)
        torch.testing.assert_close(ais.cpu(), exact, rtol=0, atol=1e-9)
    vae, data = _vae_and_data()
    x = data[:16]
    torch.manual_seed(3)
    cpu = log_marginal(vae.model, vae.guide, x, 2000)
    torch.manual_seed(3)
    gpu = log_marginal(vae.to(CUDA).model, vae.guide, x.to(CUDA), 2000).cpu()
    assert (gpu - cpu).abs().max() < 0.2 and math.isfinite(gpu.sum().item())  # MC error only


@pytest.mark.parametrize("objective", ["elbo", "meanfield"])
def test_the_loss_and_its_gradient_wait_for_nothing_on_cuda(objective):
    """With CUDA's sync debug mode set to raise, a forward and backward pass of the library's
    ELBO (validation off, as the trainer runs it) completes; Pyro's own class raises."""
    import pyro

    from pyro_genmodels.infer import make_elbo

    vae, data = _vae_and_data()
    vae, x = vae.to(CUDA), data[:64].to(CUDA)
    pyros = {"elbo": pyro.infer.Trace_ELBO, "meanfield": pyro.infer.TraceMeanField_ELBO}
    with pyro.validation_enabled(False):
        make_elbo(objective, 1, 1).differentiable_loss(vae.model, vae.guide, x)  # warm up
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            make_elbo(objective, 1, 1).differentiable_loss(vae.model, vae.guide, x).backward()
            with pytest.raises(RuntimeError, match="synchroniz"):
                pyros[objective]().differentiable_loss(vae.model, vae.guide, x)
        finally:
            torch.cuda.set_sync_debug_mode("default")

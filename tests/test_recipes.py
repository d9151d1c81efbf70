"""Issue 11: the papers' recipes as presets, early stopping, gated layers, shipped checkpoints."""

import dataclasses
import hashlib
import json
from pathlib import Path

import pyro
import pytest
import torch
from conftest import shared_data_dir
from test_cli import assert_one_line_error, run

import pyro_genmodels as pg
from pyro_genmodels import evaluation, pretrained, runs
from pyro_genmodels.infer import TrainConfig, fit, load_checkpoint, log_marginal
from pyro_genmodels.infer.checkpoint import save_atomic
from pyro_genmodels.infer.lightning import SVIModule, hardware
from pyro_genmodels.nn import GatedDense
from pyro_genmodels.presets import list_presets, load_preset
from pyro_genmodels.registry import make_config

# -- presets ----------------------------------------------------------------------------------


def test_the_paper_recipes_load_into_exactly_the_documented_settings():
    """Tomczak & Welling (2018), section 5 and their code: gated MLPs of 300 units, z of 40,
    Bernoulli decoder, Adam lr 5e-4, batch 100, 100 epochs of linear KL warm-up, early
    stopping with patience 50 for at most 2000 epochs, 500 pseudo-inputs hardtanh(w)."""
    assert {"vae-paper", "vae-vampprior-paper", "iwae-k5-paper"} <= set(list_presets())
    common_model = dict(
        latent_dim=40,
        hidden_dims=(300, 300),
        hidden_layer="gated",
        weight_init="he-normal",
        likelihood="bernoulli",
        guide="diagonal",
        network="mlp",
    )
    common_train = dict(
        lr=5e-4, batch_size=100, anneal_epochs=100, patience=50, epochs=2000, optimizer="adam"
    )
    expected = {
        "vae-paper": ({"prior": "standard"}, {"objective": "elbo", "num_particles": 1}),
        "vae-vampprior-paper": (
            {
                "prior": "vamp",
                "prior_components": 500,
                "pseudo_input_map": "hardtanh",
                "pseudo_input_mean": 0.05,
                "pseudo_input_std": 0.01,
            },
            {"objective": "elbo", "num_particles": 1},
        ),  # fmt: skip
        "iwae-k5-paper": ({"prior": "standard"}, {"objective": "iwae", "num_particles": 5}),
    }
    for name, (model_keys, train_keys) in expected.items():
        preset = load_preset(name)
        assert (preset.model, preset.dataset, preset.binarization) == (
            "vae", "binarized-mnist", "static"
        )  # fmt: skip
        config = make_config(preset.model, image_shape=(1, 28, 28), **preset.model_config)
        for key, value in {**common_model, **model_keys}.items():
            assert getattr(config, key) == value, (name, key)
        assert config.guide_options.log_var_bounds == (-6.0, 2.0)
        train = TrainConfig(**preset.train)
        for key, value in {**common_train, **train_keys}.items():
            assert getattr(train, key) == value, (name, key)
        defaults = TrainConfig()
        assert (train.beta, train.free_bits) == (defaults.beta, defaults.free_bits)


def test_the_vampprior_recipe_builds_the_papers_network():
    preset = load_preset("vae-vampprior-paper")
    torch.manual_seed(0)
    vae = pg.create_model("vae", image_shape=(1, 28, 28), **preset.model_config)
    enc = [m.linear for m in vae.encoder.modules() if isinstance(m, GatedDense)]
    dec = [m.linear for m in vae.decoder.modules() if isinstance(m, GatedDense)]
    assert [(lin.in_features, lin.out_features) for lin in enc] == [(784, 600), (300, 600)]
    assert [(lin.in_features, lin.out_features) for lin in dec] == [(40, 600), (300, 600)]
    assert vae.decoder.net[-1].out_features == 784
    # He-normal weights: std sqrt(2 / fan_in) on every linear layer
    assert enc[0].weight.std().item() == pytest.approx((2 / 784) ** 0.5, rel=0.02)
    assert vae.posterior.loc.weight.std().item() == pytest.approx((2 / 300) ** 0.5, rel=0.05)
    u = vae.prior.pseudo_inputs()
    assert u.shape == (500, 1, 28, 28) and u.min() >= 0 and u.max() <= 1
    assert u.mean().item() == pytest.approx(0.05, abs=1e-3)
    assert u.std().item() == pytest.approx(0.01, rel=0.05)
    # the bounded log variance: sigma^2 in [e^-6, e^2] whatever the features
    h = torch.randn(1000, 300) * 100
    scale = vae.posterior.scale(h)
    assert scale.min() >= torch.tensor(-3.0).exp() * (1 - 1e-6)
    assert scale.max() <= torch.tensor(1.0).exp() * (1 + 1e-6)


def test_the_pixel_recipes_load_into_exactly_the_documented_settings():
    """Gulrajani et al.'s MNIST PixelVAE (mnist_pixelvae_train.py -L 12 -fs 5 -algo
    cond_z_bias -dpx 16 -ldim 16: 8-conv encoder, z 16, 13 gated layers of 16 channels,
    Adam 1e-3, batch 100, KL warm-up over 10000 iterations) and the Gated PixelCNN."""
    expected = {
        "pixelvae-mnist": (
            dict(latent_dim=16, network="conv-deep", hidden_dims=(256,), hidden_channels=16,
                 num_layers=13, kernel_size=5, context="vector", context_dim=16,
                 likelihood="bernoulli", guide="diagonal", prior="standard"),
            dict(epochs=400, patience=50, batch_size=100, lr=1e-3, anneal_epochs=20,
                 anneal_per="step", objective="elbo", num_particles=1),
        ),
        "gated-pixelcnn-mnist": (
            dict(hidden_channels=32, num_layers=13, kernel_size=5, likelihood="bernoulli"),
            dict(epochs=400, patience=20, batch_size=100, lr=1e-3, anneal_epochs=0.0,
                 objective="elbo"),
        ),
    }  # fmt: skip
    for name, (model_keys, train_keys) in expected.items():
        preset = load_preset(name)
        assert (preset.model, preset.dataset, preset.binarization) == (
            name.removesuffix("-mnist"), "binarized-mnist", "static"
        )  # fmt: skip
        config = make_config(preset.model, image_shape=(1, 28, 28), **preset.model_config)
        for key, value in model_keys.items():
            assert getattr(config, key) == value, (name, key)
        train = TrainConfig(**preset.train)
        for key, value in train_keys.items():
            assert getattr(train, key) == value, (name, key)
        model = pg.create_model(preset.model, image_shape=(1, 28, 28), **preset.model_config)
        layers = model.pixel_net.layers if name == "pixelvae-mnist" else model.net.layers
        assert [layer.k for layer in layers] == [7] + [5] * 12


def test_unknown_preset_or_key_is_a_one_line_error_listing_the_valid_ones(tmp_path, capsys):
    code, _, err = run(capsys, "train", "--preset", "vae-papr", "--out", tmp_path / "r")
    assert_one_line_error(
        code, err, "unknown preset 'vae-papr'; valid: gated-pixelcnn-mnist, iwae-k5-paper, pixelvae"
    )
    bad = {
        "train_key.toml": ('model = "vae"\ndataset = "digits"\n[train]\nlearning_rate = 0.1\n',
                           "unknown [train] key(s) ['learning_rate']; valid: epochs, patience"),
        "model_key.toml": ('model = "vae"\ndataset = "digits"\n[model_config]\nlatent = 4\n',
                           "unknown config key(s) ['latent'] for model 'vae' (did you mean "
                           "'latent_dim'?)"),
        "top_key.toml": ('model = "vae"\ndataset = "digits"\nepochs = 3\n',
                         "unknown key(s) ['epochs']; valid: description, reference, model"),
        "guide_key.toml": ('model = "vae"\ndataset = "digits"\n[model_config.guide_options]\n'
                           "rank = 2\n", "unknown option(s) ['rank'] for guide family 'diagonal'"),
        "value.toml": ('model = "vae"\ndataset = "digits"\n[train]\npatience = -1\n',
                       "patience must be a non-negative integer"),
        "syntax.toml": ("model = \n", "is not valid TOML"),
    }  # fmt: skip
    for name, (text, message) in bad.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(ValueError, match=None) as info:
            load_preset(tmp_path / name)
        assert message in str(info.value), (name, str(info.value))
        code, _, err = run(capsys, "train", "--config", tmp_path / name, "--out", tmp_path / "r")
        assert_one_line_error(code, err, message)
    assert not (tmp_path / "r").exists()


def test_command_line_options_override_the_recipe(tmp_path, capsys):
    recipe = tmp_path / "small.toml"
    recipe.write_text(
        'model = "vae"\ndataset = "digits"\n[model_config]\nlatent_dim = 3\nhidden_dims = [16]\n'
        'hidden_layer = "gated"\n[model_config.guide_options]\nlog_var_bounds = [-6.0, 2.0]\n'
        "[train]\nepochs = 5\nbatch_size = 100\nlr = 5e-4\npatience = 7\n"
    )
    out = tmp_path / "r"
    code, stdout, err = run(
        capsys, "train", "--config", recipe, "--out", out, "--max-epochs", 2, "--lr", 1e-3,
        "--limit", 200, "--no-progress",
    )  # fmt: skip
    assert code == 0, err
    ckpt = load_checkpoint(out / "checkpoint.pt")
    train = ckpt["train_config"]
    assert (train["epochs"], train["lr"], train["batch_size"], train["patience"]) == (
        2, 1e-3, 100, 7
    )  # fmt: skip
    model = ckpt["metadata"]["model_config"]
    assert (model["latent_dim"], model["hidden_layer"]) == (3, "gated")
    assert ckpt["metadata"]["preset"] == "small"
    code, _, err = run(capsys, "train", "--config", recipe, "--out", out, "--resume")
    assert_one_line_error(code, err, "--resume takes every setting from the checkpoint")


# -- early stopping ---------------------------------------------------------------------------


def _scripted(monkeypatch, values):
    """The validation ELBO of epoch ``e`` is ``values[e - 1]``, whatever was trained."""

    def scripted(self, x, batch_idx):
        self.valid_elbo.update(torch.tensor(float(values[self.current_epoch])))
        self.valid_kl.update(torch.tensor(0.0))

    monkeypatch.setattr(SVIModule, "validation_step", scripted)


def _tiny():
    torch.manual_seed(0)
    vae = pg.create_model("vae", image_shape=(1, 4, 4), latent_dim=2, hidden_dims=(8,))
    data = torch.bernoulli(torch.full((32, 1, 4, 4), 0.5))
    return vae, data


SCRIPT = [-10, -9, -8, -8.5, -8.2, -7, -7.5, -7.6, -7.7, -5, -4, -3]


def DROP_SECONDS(rows):  # noqa: N802
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def test_early_stopping_stops_at_the_right_epoch(monkeypatch, tmp_path):
    _scripted(monkeypatch, SCRIPT)
    vae, data = _tiny()
    config = TrainConfig(epochs=12, patience=3, batch_size=16, progress=False)
    metrics = fit(vae, data, data, config, tmp_path)
    # best at epoch 6 (-7); epochs 7, 8, 9 are worse: the third of them stops the run
    assert [r["epoch"] for r in metrics] == list(range(1, 10))
    assert metrics[-1]["stopped_early"] and metrics[-1]["best_epoch"] == 6
    assert [r["epochs_since_best"] for r in metrics] == [0, 0, 0, 1, 2, 0, 1, 2, 3]
    assert load_checkpoint(tmp_path / "best.pt")["epoch"] == 6
    assert [r["valid_elbo"] for r in metrics] == pytest.approx(SCRIPT[:9])
    # patience 0 never stops; epochs stays the maximum
    metrics = fit(_tiny()[0], data, data, dataclasses.replace(config, patience=0))
    assert len(metrics) == 12 and not any(r.get("stopped_early") for r in metrics)


def test_warm_up_epochs_do_not_count_towards_the_patience(monkeypatch):
    _scripted(monkeypatch, [-5, -6, -7, -8, -9, -10, -11, -12])
    vae, data = _tiny()
    config = TrainConfig(epochs=8, patience=2, anneal_epochs=5, batch_size=16, progress=False)
    metrics = fit(vae, data, data, config)
    # best at epoch 1; epochs 2-4 anneal the KL weight, epoch 5 (weight reaches 1) counts
    assert [r["epochs_since_best"] for r in metrics] == [0, 0, 0, 0, 1, 2]
    assert metrics[-1]["stopped_early"] and metrics[-1]["best_epoch"] == 1


def test_resume_keeps_the_patience_counter(monkeypatch, tmp_path):
    _scripted(monkeypatch, SCRIPT)
    config = TrainConfig(epochs=12, patience=3, batch_size=16, progress=False)
    vae, data = _tiny()
    whole = fit(vae, data, data, config, tmp_path / "whole")
    vae, data = _tiny()
    fit(vae, data, data, dataclasses.replace(config, epochs=7), tmp_path / "cut")
    ckpt = load_checkpoint(tmp_path / "cut" / "checkpoint.pt")
    (stopping,) = [v for k, v in ckpt["callbacks"].items() if k.startswith("WarmupEarly")]
    assert (stopping["wait_count"], ckpt["metrics"][-1]["epochs_since_best"]) == (1, 1)
    vae, _ = _tiny()
    resumed = fit(vae, data, data, config, tmp_path / "cut", resume=True)
    assert DROP_SECONDS(resumed) == DROP_SECONDS(whole) and len(whole) == 9
    # a stopped run stays stopped when resumed with more epochs
    vae, _ = _tiny()
    again = fit(vae, data, data, dataclasses.replace(config, epochs=50), tmp_path / "cut",
                resume=True)  # fmt: skip
    assert len(again) == 9


def test_a_moved_run_directory_resumes_with_its_best_epoch(monkeypatch, tmp_path):
    """Copied elsewhere (another machine, another folder) after 7 epochs, best at epoch 6:
    epochs 8 and 9 are worse, so best.pt stays epoch 6."""
    import shutil

    _scripted(monkeypatch, SCRIPT)
    config = TrainConfig(epochs=7, batch_size=16, progress=False)
    vae, data = _tiny()
    fit(vae, data, data, config, tmp_path / "here")
    shutil.copytree(tmp_path / "here", tmp_path / "there")
    shutil.rmtree(tmp_path / "here")
    vae, _ = _tiny()
    rows = fit(vae, data, data, dataclasses.replace(config, epochs=9), tmp_path / "there",
               resume=True)  # fmt: skip
    assert [r["best_epoch"] for r in rows[6:]] == [6, 6, 6]
    assert load_checkpoint(tmp_path / "there" / "best.pt")["epoch"] == 6
    assert sorted(p.name for p in (tmp_path / "there").iterdir()) == [
        "best.pt", "checkpoint.pt", "metrics.jsonl"
    ]  # fmt: skip


def test_resume_takes_the_new_patience():
    from pyro_genmodels.infer.lightning import WarmupEarlyStopping

    stopping = WarmupEarlyStopping(patience=5, warmup_epochs=0)
    saved = WarmupEarlyStopping(patience=3, warmup_epochs=0).state_dict()
    stopping.load_state_dict({**saved, "wait_count": 2})
    assert (stopping.patience, stopping.wait_count) == (5, 2)


def test_early_stopping_needs_validation_data():
    vae, data = _tiny()
    with pytest.raises(ValueError, match="early stopping .* needs validation data"):
        fit(vae, data, config=TrainConfig(epochs=2, patience=1, progress=False))


@pytest.mark.parametrize("optimizer", ["adam", "clipped-adam", "adam-normgrad"])
def test_fit_equals_a_hand_written_svi_loop(optimizer, tmp_path):
    """Two epochs of ``fit`` are the textbook loop: the seed, the sampler's permutation per
    epoch, the annealed KL weight, the optimizer (torch's or Pyro's, or Tomczak & Welling's),
    exactly; and the run directory's optimizer is that one."""
    from pyro.optim.clipped_adam import ClippedAdam
    from torch.utils.data import DistributedSampler

    from pyro_genmodels.infer import kl_weight
    from pyro_genmodels.infer.optim import AdamNormGrad

    config = TrainConfig(epochs=2, batch_size=8, optimizer=optimizer, lr=0.01, anneal_epochs=1.5,
                         clip_norm=0.5, progress=False, seed=5)  # fmt: skip
    vae, data = _tiny()
    fit(vae, data, data[:8], config, tmp_path)
    reference, _ = _tiny()
    params = list(reference.parameters())
    opt = {"adam": lambda: torch.optim.Adam(params, lr=0.01),
           "clipped-adam": lambda: ClippedAdam(params, lr=0.01, clip_norm=0.5),
           "adam-normgrad": lambda: AdamNormGrad(params, lr=0.01)}[optimizer]()  # fmt: skip
    svi = SVIModule(reference, config)
    pyro.set_rng_seed(5)
    step = 0
    for epoch in range(2):
        order = DistributedSampler(data, 1, 0, shuffle=True, seed=5)
        order.set_epoch(epoch)
        indices = list(order)
        for start in range(0, len(data), 8):
            loss = svi.loss(data[indices[start : start + 8]], kl_weight(config, step, 4))
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
        svi.validation_step(data[:8], 0)  # the epoch's validation draws from the same RNG
    for (name, p), q in zip(vae.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-6, msg=name)
    state = load_checkpoint(tmp_path / "checkpoint.pt")["optimizer_states"][0]
    assert state["param_groups"][0].get("clip_norm") == (
        0.5 if optimizer == "clipped-adam" else None
    )


# -- gated layers -----------------------------------------------------------------------------


def test_gated_dense_is_a_times_sigmoid_b_with_gradients_to_both_halves():
    torch.manual_seed(0)
    layer = GatedDense(5, 3).double()
    x = torch.randn(7, 5, dtype=torch.float64)
    w, b = layer.linear.weight, layer.linear.bias
    a_pre = x @ w[:3].T + b[:3]
    b_pre = x @ w[3:].T + b[3:]
    h = layer(x)
    torch.testing.assert_close(h, a_pre * torch.sigmoid(b_pre), rtol=0, atol=1e-14)
    upstream = torch.randn(7, 3, dtype=torch.float64)
    (h * upstream).sum().backward()
    s = torch.sigmoid(b_pre).detach()
    grad_a = upstream * s  # d/da (a * sigmoid(b))
    grad_b = upstream * a_pre.detach() * s * (1 - s)  # d/db
    torch.testing.assert_close(w.grad[:3], grad_a.T @ x, rtol=0, atol=1e-12)
    torch.testing.assert_close(w.grad[3:], grad_b.T @ x, rtol=0, atol=1e-12)
    torch.testing.assert_close(
        b.grad, torch.cat([grad_a.sum(0), grad_b.sum(0)]), rtol=0, atol=1e-12
    )
    assert w.grad[:3].abs().min() > 0 and w.grad[3:].abs().min() > 0


@pytest.mark.parametrize("model", ["vae", "autoencoder", "pixelvae"])
@pytest.mark.parametrize("network", ["mlp", "conv"])
def test_every_model_can_use_gated_layers(model, network):
    likelihood = "categorical" if model == "pixelvae" else "bernoulli"
    torch.manual_seed(0)
    m = pg.create_model(
        model, image_shape=(1, 8, 8), latent_dim=2, hidden_dims=(16,), hidden_layer="gated",
        network=network, likelihood=likelihood,
    )  # fmt: skip
    gated = [mod for mod in m.modules() if type(mod).__name__ in ("GatedDense", "GatedConv2d")]
    assert gated and not any(isinstance(mod, torch.nn.ReLU) for mod in m.encoder.modules())
    x = torch.randint(0, 2, (3, 1, 8, 8)).float() * (255 if likelihood == "categorical" else 1)
    lm = log_marginal(m.model, m.guide, x, 4) if model != "autoencoder" else None
    assert lm is None or torch.isfinite(lm).all()
    with pytest.raises(ValueError, match="unknown hidden_layer 'glu'; valid: relu, gated"):
        pg.create_model(model, image_shape=(1, 8, 8), hidden_layer="glu")


# -- shipped checkpoints ----------------------------------------------------------------------


@pytest.fixture
def shipped(tmp_path, monkeypatch):
    monkeypatch.setenv("PYRO_GENMODELS_PRETRAINED", str(tmp_path / "pretrained"))
    out = tmp_path / "run"
    runs.train_run(
        "vae", "digits", out,
        model_config={"latent_dim": 3, "hidden_dims": (16,), "hidden_layer": "gated",
                      "prior": "vamp", "prior_components": 5, "pseudo_input_map": "hardtanh",
                      "pseudo_input_mean": 0.5},
        train_config={"epochs": 2, "batch_size": 64, "progress": False},
    )  # fmt: skip
    return out


def _card_settings(card: str) -> dict:
    """The JSON block under a model card's "Training settings" heading."""
    return json.loads(card.split("## Training settings")[1].split("```json")[1].split("```")[0])


def test_load_pretrained_round_trip(shipped, tmp_path, capsys):
    before = runs.load_run(shipped, which="best").module
    x = runs.load_run(shipped).dataset("test", limit=20).fixed()
    torch.manual_seed(3)
    expected = log_marginal(before.model, before.guide, x, 50)
    code, _, err = run(capsys, "evaluate", shipped, "--num-samples", 10, "--json",
                       tmp_path / "e.json", "--no-progress")  # fmt: skip
    assert code == 0, err
    pretrained.export_pretrained(
        shipped, "tiny", tmp_path / "e.json", out_dir=tmp_path / "pretrained"
    )
    assert pg.list_pretrained() == ["tiny"]
    after = pg.load_pretrained("tiny")
    assert not after.training
    torch.manual_seed(3)
    torch.testing.assert_close(log_marginal(after.model, after.guide, x, 50), expected, rtol=0,
                               atol=0)  # fmt: skip
    card = (tmp_path / "pretrained" / "tiny" / "README.md").read_text()
    assert "pyro-genmodels evaluate tiny --num-samples 10" in card
    sha = hashlib.sha256((tmp_path / "pretrained" / "tiny" / "best.pt").read_bytes()).hexdigest()
    assert f"- sha256 of `best.pt`: `{sha}`" in card
    assert "state_dict" not in load_checkpoint(tmp_path / "pretrained" / "tiny" / "best.pt")
    settings = _card_settings(card)
    assert settings == load_checkpoint(shipped / "checkpoint.pt")["train_config"]
    assert settings["seed"] == 0 and settings["batch_size"] == 64 and settings["epochs"] == 2
    code, out, _ = run(capsys, "list", "--pretrained")
    assert code == 0 and "tiny:" in out and "K=10" in out
    code, out, err = run(capsys, "evaluate", tmp_path / "pretrained" / "tiny", "--num-samples",
                         10, "--json", tmp_path / "again.json", "--no-progress")  # fmt: skip
    assert code == 0, err
    first, again = (json.loads((tmp_path / f).read_text()) for f in ("e.json", "again.json"))
    assert again["nll"] == first["nll"] and again["epoch"] == first["epoch"]
    with pytest.raises(ValueError, match="unknown pretrained model 'nope'; valid: tiny"):
        pg.load_pretrained("nope")


def test_the_card_says_what_each_stretch_of_epochs_ran_on():
    rows = [{"epoch": 1, "seconds": 1800.0}, {"epoch": 2, "seconds": 1800.0}]  # before the keys
    cpu = {"hardware": "cpu (x86_64, 2 cores)", "compiled": False}
    rows += [{"epoch": 3, "seconds": 900.0, "precision": "32-true", **cpu}]
    fast = {"precision": "bf16-mixed", **cpu, "compiled": True}
    rows += [{"epoch": e, "seconds": 360.0, **fast} for e in (4, 5)]
    rows += [{"epoch": 6, "seconds": 36.0, "hardware": "NVIDIA H200", "precision": "bf16-mixed",
              "compiled": True}]  # fmt: skip
    assert pretrained._hardware_lines(rows) == [
        "epochs 1-2: hardware and precision not recorded; 1.00 h",
        "epoch 3: cpu (x86_64, 2 cores), precision 32-true; 0.25 h",
        "epochs 4-5: cpu (x86_64, 2 cores), precision bf16-mixed, torch.compile; 0.20 h",
        "epoch 6: NVIDIA H200, precision bf16-mixed, torch.compile; 0.01 h",
    ]


def test_an_exact_model_ships_with_its_exact_figure(tmp_path, monkeypatch, capsys):
    """A pixel model's card quotes its exact NLL and the command that reproduces it, and the
    shipped weights give the same log-likelihood as the run's."""
    monkeypatch.setenv("PYRO_GENMODELS_PRETRAINED", str(tmp_path / "pretrained"))
    out = tmp_path / "run"
    runs.train_run("gated-pixelcnn", "digits", out,
                   model_config={"hidden_channels": 4, "num_layers": 2},
                   train_config={"epochs": 1, "batch_size": 128, "progress": False})  # fmt: skip
    code, _, err = run(capsys, "evaluate", out, "--json", tmp_path / "e.json", "--no-progress")
    assert code == 0, err
    pretrained.export_pretrained(out, "pix", tmp_path / "e.json", out_dir=tmp_path / "pretrained")
    card = (tmp_path / "pretrained" / "pix" / "README.md").read_text()
    result = json.loads((tmp_path / "e.json").read_text())
    assert "pyro-genmodels evaluate pix --split test\n" in card and "--num-samples" not in card
    assert f"NLL {result['nll']:.2f} +- {result['nll_stderr']:.2f} nats (exact, " in card
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert f"- epoch 1: {row['hardware']}, precision 32-true; " in card
    assert row["hardware"] == hardware(torch.device("cpu")) and row["compiled"] is False
    x = runs.load_run(out).dataset("test").fixed()
    before = runs.load_run(out, which="best").module
    after = pg.load_pretrained("pix")
    torch.testing.assert_close(after.log_prob(x), before.log_prob(x), rtol=0, atol=0)
    assert len(x) == result["num_examples"]
    assert -after.log_prob(x).double().mean().item() == pytest.approx(result["nll"], rel=1e-6)


def test_a_pixelvae_ships_with_its_importance_sampled_figure(tmp_path, monkeypatch, capsys):
    """The pixelvae-mnist layout (conv-deep encoder, a Gated PixelCNN whose gates z biases)
    shipped and loaded gives the same log p(x) estimates under the same seed, and its card
    quotes the importance-sampled figure with the command and K that reproduce it."""
    monkeypatch.setenv("PYRO_GENMODELS_PRETRAINED", str(tmp_path / "pretrained"))
    out = tmp_path / "run"
    runs.train_run("pixelvae", "digits", out,
                   model_config={"latent_dim": 3, "network": "conv-deep", "hidden_dims": (8,),
                                 "hidden_channels": 4, "num_layers": 2, "kernel_size": 5,
                                 "context": "vector", "context_dim": 4},
                   train_config={"epochs": 1, "batch_size": 128, "progress": False})  # fmt: skip
    code, _, err = run(capsys, "evaluate", out, "--num-samples", 10, "--batch-size", 7, "--seed",
                       3, "--json", tmp_path / "e.json", "--no-progress")  # fmt: skip
    assert code == 0, err
    pretrained.export_pretrained(out, "pv", tmp_path / "e.json", out_dir=tmp_path / "pretrained")
    card = (tmp_path / "pretrained" / "pv" / "README.md").read_text()
    result = json.loads((tmp_path / "e.json").read_text())
    # the batch size and the seed fix every image's random stream: the card repeats them
    cmd = "pyro-genmodels evaluate pv --num-samples 10 --split test --batch-size 7 --seed 3\n"
    assert cmd in card
    assert f"NLL {result['nll']:.2f} +- {result['nll_stderr']:.2f} nats (K = 10, " in card
    assert f"KL {result['kl']:.2f}, PSIS k mean {result['psis_khat_mean']:.2f}" in card
    x = runs.load_run(out).dataset("test", limit=50).fixed()
    before, after = runs.load_run(out, which="best").module, pg.load_pretrained("pv")
    assert not after.training and after.pixel_net.layers[1].k == 5
    estimates = []
    for module in (before, after):
        torch.manual_seed(5)
        estimates.append(log_marginal(module.model, module.guide, x, 20))
    torch.testing.assert_close(estimates[1], estimates[0], rtol=0, atol=0)
    code, _, err = run(capsys, *cmd.split()[1:], "--json", tmp_path / "again.json",
                       "--no-progress")  # fmt: skip
    assert code == 0, err
    again = json.loads((tmp_path / "again.json").read_text())
    assert again["per_image_nll"] == result["per_image_nll"] and again["nll"] == result["nll"]


def test_the_card_takes_training_settings_from_the_run_when_best_pt_predates_them(shipped):
    best = load_checkpoint(shipped / "best.pt")
    del best["train_config"]  # as written before best.pt carried the settings
    save_atomic(best, shipped / "best.pt")
    card = (
        pretrained.export_pretrained(shipped, "old", out_dir=shipped.parent) / "README.md"
    ).read_text()
    settings = _card_settings(card)
    assert settings == load_checkpoint(shipped / "checkpoint.pt")["train_config"]
    (shipped / "checkpoint.pt").unlink()
    card = (
        pretrained.export_pretrained(shipped, "older", out_dir=shipped.parent) / "README.md"
    ).read_text()
    assert "## Training settings" not in card and "## Config" in card


def test_a_checkpoint_from_a_newer_version_fails_with_a_clear_message(shipped, tmp_path, capsys):
    ckpt = load_checkpoint(shipped / "best.pt")
    newer = tmp_path / "newer"
    newer.mkdir()
    ckpt["metadata"] = {**ckpt["metadata"], "version": "9.1.0"}
    ckpt["metadata"]["model_config"] = {**ckpt["metadata"]["model_config"], "future_key": 1}
    save_atomic(ckpt, newer / "best.pt")
    code, _, err = run(capsys, "evaluate", newer, "--num-samples", 2)
    assert_one_line_error(
        code, err, f"written by pyro-genmodels 9.1.0, newer than this {pg.__version__}"
    )
    assert "future_key" in err
    ckpt["version"] = 99
    save_atomic(ckpt, newer / "best.pt")
    code, _, err = run(capsys, "evaluate", newer, "--num-samples", 2)
    assert_one_line_error(code, err, "written by pyro-genmodels 9.1.0 in checkpoint format 99")
    # a newer library whose checkpoint uses nothing new loads
    ckpt = load_checkpoint(shipped / "best.pt")
    ckpt["metadata"] = {**ckpt["metadata"], "version": "9.1.0"}
    save_atomic(ckpt, newer / "best.pt")
    assert runs.load_run(newer, which="best").module is not None


# -- the VampPrior's mixture density ----------------------------------------------------------


def test_diagonal_normal_mixture_equals_mixture_same_family_with_gradients():
    import pyro.distributions as dist

    from pyro_genmodels.distributions import DiagonalNormalMixture

    torch.manual_seed(0)
    k, d = 7, 5
    logits = torch.randn(k, dtype=torch.float64, requires_grad=True)
    loc = torch.randn(k, d, dtype=torch.float64, requires_grad=True)
    scale = (0.05 + torch.rand(k, d, dtype=torch.float64)).requires_grad_()
    z = torch.randn(3, 4, d, dtype=torch.float64)
    z[0, 0] = loc[2].detach() + 1e-6  # next to a mean of a narrow component: no cancellation
    reference = dist.MixtureSameFamily(
        dist.Categorical(logits=logits), dist.Normal(loc, scale).to_event(1)
    )
    fast = DiagonalNormalMixture(logits, loc, scale)
    torch.testing.assert_close(fast.log_prob(z), reference.log_prob(z), rtol=0, atol=1e-10)
    grads = torch.autograd.grad(fast.log_prob(z).sum(), (logits, loc, scale))
    expected = torch.autograd.grad(reference.log_prob(z).sum(), (logits, loc, scale))
    for g, e in zip(grads, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-9, atol=1e-9)
    # float32 in, float32 out, as exact as float32 allows
    z32 = z.float()
    fast32 = DiagonalNormalMixture(logits.float(), loc.float(), scale.float())
    assert fast32.log_prob(z32).dtype == torch.float32
    torch.testing.assert_close(fast32.log_prob(z32).double(), reference.log_prob(z32.double()),
                               rtol=0, atol=1e-4)  # fmt: skip
    assert fast.sample((2,)).shape == (2, d)
    with pytest.raises(ValueError, match="expected logits"):
        DiagonalNormalMixture(logits, loc[None], scale[None])


def test_the_vampprior_scores_with_the_matmul_density():
    from pyro_genmodels.distributions import DiagonalNormalMixture

    torch.manual_seed(0)
    vae = pg.create_model("vae", image_shape=(1, 4, 4), latent_dim=3, hidden_dims=(8,),
                          prior="vamp", prior_components=6)  # fmt: skip
    p = vae.prior.distribution(vae)
    assert isinstance(p, DiagonalNormalMixture)
    z = torch.randn(10, 3)
    u = vae.prior.pseudo_inputs()
    q = vae.posterior(vae.encoder(u))  # the components, one per pseudo-input
    by_hand = torch.logsumexp(q.log_prob(z[:, None]) - torch.log(torch.tensor(6.0)), -1)
    torch.testing.assert_close(vae.prior.log_prob(z, vae), by_hand, rtol=0, atol=1e-5)


def test_diagonal_normal_mixture_expands_like_mixture_same_family():
    import pyro.distributions as dist

    from pyro_genmodels.distributions import DiagonalNormalMixture

    torch.manual_seed(0)
    logits, loc, scale = torch.randn(4), torch.randn(4, 3), torch.rand(4, 3) + 0.1
    fast = DiagonalNormalMixture(logits, loc, scale).expand((5,))
    reference = dist.MixtureSameFamily(
        dist.Categorical(logits=logits), dist.Normal(loc, scale).to_event(1)
    ).expand((5,))
    assert (fast.batch_shape, fast.event_shape) == (reference.batch_shape, reference.event_shape)
    z = torch.randn(2, 5, 3)
    torch.testing.assert_close(fast.log_prob(z), reference.log_prob(z), rtol=0, atol=1e-5)
    assert fast.sample((6,)).shape == (6, 5, 3)


# -- the paper code's optimizer ---------------------------------------------------------------


def test_adam_normgrad_is_adam_on_unit_norm_gradients():
    from pyro_genmodels.infer.optim import AdamNormGrad

    torch.manual_seed(0)
    w = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    ref_w, ref_b = w.detach().clone(), b.detach().clone()
    opt = AdamNormGrad([w, b], lr=0.1)
    m = [torch.zeros_like(ref_w), torch.zeros_like(ref_b)]
    v = [torch.zeros_like(ref_w), torch.zeros_like(ref_b)]
    for t in range(1, 6):
        x = torch.randn(7, 4, dtype=torch.float64) * t  # gradient norms change every step

        def loss_of(w_, b_, x=x):
            return ((x @ w_ + b_) ** 2).sum()

        opt.zero_grad()
        loss_of(w, b).backward()
        opt.step()
        # the reference: their utils/optimizer.py, written out
        grads = torch.autograd.grad(loss_of(ref_w.requires_grad_(), ref_b.requires_grad_()),
                                    [ref_w, ref_b])  # fmt: skip
        with torch.no_grad():
            for i, (p, g) in enumerate(zip([ref_w, ref_b], grads, strict=True)):
                g = g / (g.norm() + 1e-7)
                m[i] = 0.9 * m[i] + 0.1 * g
                v[i] = 0.999 * v[i] + 0.001 * g * g
                m_hat, v_hat = m[i] / (1 - 0.9**t), v[i] / (1 - 0.999**t)
                p -= 0.1 * m_hat / (v_hat.sqrt() + 1e-8)
        ref_w, ref_b = ref_w.detach(), ref_b.detach()
        torch.testing.assert_close(w.detach(), ref_w, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(b.detach(), ref_b, rtol=1e-10, atol=1e-10)


# -- the shipped checkpoints themselves ---------------------------------------------------------


def test_shipped_checkpoints_are_listed_with_their_cards():
    names = pretrained.list_pretrained()
    assert "vae-paper" in names
    for name in names:
        path = pretrained.pretrained_path(name)
        card = (path / "README.md").read_text()
        result = json.loads((path / "evaluation.json").read_text())
        sha = hashlib.sha256((path / "best.pt").read_bytes()).hexdigest()
        assert f"- sha256 of `best.pt`: `{sha}`" in card
        assert f"NLL {result['nll']:.2f} +- {result['nll_stderr']:.2f}" in card
        assert result["split"] == "test"
        module = pg.load_pretrained(name)
        assert load_checkpoint(path / "best.pt")["epoch"] == result["epoch"]
        if result["exact"]:  # a pixel model: its log-likelihood itself, no K
            assert f"pyro-genmodels evaluate {name} --split test\n" in card
            assert "(exact, 10000 test images)" in card and "best validation NLL" in card
            assert type(module).__name__ == "GatedPixelCNN" and result["num_examples"] == 10000
        elif type(module).__name__ == "PixelVAE":  # K = 1000 on a fixed random subset
            cmd = (f"pyro-genmodels evaluate {name} --num-samples 1000 --split test --subset 2000 "
                   "--batch-size 10\n")  # fmt: skip
            assert cmd in card and "a fixed random subset of 2000 test images" in card
            assert (result["num_samples"], result["num_examples"]) == (1000, 2000)
            assert len(result["per_image_nll"]) == 2000 and "best validation ELBO" in card
        else:
            assert result["num_examples"] == 10000
            cmd = f"evaluate {name} --num-samples 5000 --split test --batch-size 100\n"
            assert cmd in card and (result["batch_size"], result["seed"]) == (100, 0)
            assert result["num_samples"] == 5000 and "best validation ELBO" in card
            assert module.config_dict()["latent_dim"] == 40


@pytest.mark.skipif(shared_data_dir() is None, reason="needs ../shared/data (MNIST)")
def test_the_shipped_vae_reproduces_its_evaluation_image_by_image(monkeypatch):
    """The first batch of the shipped evaluation (100 test images, K = 5000), recomputed."""
    monkeypatch.setenv("PYRO_GENMODELS_DATA", str(shared_data_dir()))
    run = runs.load_run(pretrained.pretrained_path("vae-paper"), which="best")
    x = run.dataset("test", limit=100).fixed()
    result = evaluation.evaluate_images(run.module, x, num_samples=5000, progress=False, seed=0)
    shipped = json.loads((pretrained.pretrained_path("vae-paper") / "evaluation.json").read_text())
    torch.testing.assert_close(
        torch.tensor(result["per_image_nll"]),
        torch.tensor(shipped["per_image_nll"][:100]),
        rtol=0,
        atol=1e-3,
    )


@pytest.mark.skipif(shared_data_dir() is None, reason="needs ../shared/data (MNIST)")
def test_the_shipped_pixelvae_reproduces_its_evaluation_image_by_image(monkeypatch):
    """The first batch of the shipped PixelVAE's evaluation (10 images of its fixed random
    subset of 2000 test images, K = 1000), recomputed."""
    monkeypatch.setenv("PYRO_GENMODELS_DATA", str(shared_data_dir()))
    run = runs.load_run(pretrained.pretrained_path("pixelvae-mnist"), which="best")
    x = evaluation.random_subset(run.dataset("test"), 2000).fixed()[:10]
    result = evaluation.evaluate_images(run.module, x, num_samples=1000, progress=False, seed=0)
    shipped = json.loads(
        (pretrained.pretrained_path("pixelvae-mnist") / "evaluation.json").read_text()
    )
    torch.testing.assert_close(
        torch.tensor(result["per_image_nll"]),
        torch.tensor(shipped["per_image_nll"][:10]),
        rtol=0,
        atol=1e-3,
    )


def test_create_model_with_a_pretrained_name_is_the_shipped_model():
    vae = pg.create_model("vae", pretrained="vae-paper")
    shipped = pg.load_pretrained("vae-paper")
    assert not vae.training
    for key, value in shipped.state_dict().items():
        assert torch.equal(vae.state_dict()[key], value), key
    assert pg.create_model("vae", pretrained="vae-paper", latent_dim=40).config.latent_dim == 40
    with pytest.raises(ValueError, match="'vae-paper' was trained with other latent_dim"):
        pg.create_model("vae", pretrained="vae-paper", latent_dim=8)
    with pytest.raises(ValueError, match="'vae-paper' holds a 'vae' model, not 'pixelcnn'"):
        pg.create_model("pixelcnn", pretrained="vae-paper")


def test_load_pretrained_from_a_url_verifies_and_caches(tmp_path, monkeypatch):
    """A loopback server: the right sha256 loads the model and caches the file (no second
    request); a wrong sha256 or a transfer cut in half is a one-line error that leaves
    nothing in the cache."""
    import http.server
    import os
    import threading

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    source = pretrained.pretrained_path("vae-paper") / "best.pt"
    data = source.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    served = tmp_path / "served"
    served.mkdir()
    (served / "vae-paper.pt").write_bytes(data)
    requests = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(served), **kwargs)

        def log_message(self, *args):
            pass

        def do_GET(self):
            requests.append(self.path)
            if self.path == "/cut.pt":  # promises the whole file, sends half, hangs up
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data[: len(data) // 2])
                return
            super().do_GET()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}"
    cache = Path(torch.hub.get_dir()) / "checkpoints" / "pyro-genmodels"
    try:
        vae = pg.load_pretrained(f"{url}/vae-paper.pt", sha256=sha)
        shipped = pg.load_pretrained("vae-paper")
        for key, value in shipped.state_dict().items():
            assert torch.equal(vae.state_dict()[key], value), key
        pg.load_pretrained(f"{url}/vae-paper.pt", sha256=sha)
        assert requests.count("/vae-paper.pt") == 1  # the second came from the cache
        with pytest.raises(ValueError, match="could not download .*invalid hash value"):
            pg.load_pretrained(f"{url}/vae-paper.pt", sha256="0" * 64)
        with pytest.raises(ValueError, match="could not download .*cut.pt"):
            pg.load_pretrained(f"{url}/cut.pt", sha256=sha)
        assert sorted(os.listdir(cache)) == [f"{sha[:16]}-vae-paper.pt"]  # nothing partial
        with pytest.raises(ValueError, match="has sha256 .*, not the expected 1111"):
            pg.load_pretrained(source, sha256="1" * 64)  # a local file, verified too
    finally:
        server.shutdown()

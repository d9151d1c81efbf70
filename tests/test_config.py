"""Config plumbing: options generated from the config dataclasses, guide options nested,
configs built once, no Pyro setting changed on import, and small input bugs."""

import json
import subprocess
import sys

import pyro
import pytest
import torch
from test_cli import TRAIN, assert_one_line_error, run

import pyro_genmodels as pg
from pyro_genmodels import evaluation, plots, registry, runs
from pyro_genmodels.cli import build_parser
from pyro_genmodels.configargs import field_comments
from pyro_genmodels.infer import (
    OBJECTIVES,
    TrainConfig,
    fit,
    importance_estimate,
    kl_divergence,
    log_marginal,
    make_elbo,
)
from pyro_genmodels.infer.hints import InferenceHints, hint
from pyro_genmodels.models import VAEConfig
from pyro_genmodels.models.guides import family_class, list_families


def test_importing_the_library_changes_no_pyro_setting():
    code = (
        "import pyro; before = pyro.settings.get(); import pyro_genmodels, pyro_genmodels.cli; "
        "assert pyro.settings.get() == before, (before, pyro.settings.get()); print('same')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "same"


def test_train_options_are_every_field_of_every_config():
    parser = build_parser()
    train = parser._subparsers._group_actions[0].choices["train"]
    flags = {s for a in train._actions for s in a.option_strings}
    for cls in [TrainConfig, *registry.config_classes().values()]:
        for name in cls.__dataclass_fields__:
            if name not in ("image_shape", "guide_options"):
                assert "--" + name.replace("_", "-") in flags, name
    for family in list_families():
        for name in family_class(family).Options.__dataclass_fields__:
            assert "--" + name.replace("_", "-") in flags, name
    # the help of each option is the comment next to its field
    assert field_comments(TrainConfig)["lr"] == "learning rate"
    assert (
        field_comments(family_class("low-rank").Options)["rank"]
        == "rank of the covariance factor W"
    )
    for objective in OBJECTIVES[1:]:  # every name builds its ELBO
        elbo = make_elbo(objective, free_bits=0.5 if objective == "free-bits" else 0.0)
        assert isinstance(elbo, pyro.infer.ELBO), objective


def test_guide_options_nest_under_the_guide(tmp_path, capsys):
    vae = pg.create_model("vae", image_shape=(1, 8, 8), guide="low-rank", guide_options={"rank": 3})
    assert vae.posterior.rank == 3 and vae.config.guide_options.rank == 3
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['num_components'\] for guide"):
        pg.create_model("vae", guide="low-rank", guide_options={"num_components": 2})
    with pytest.raises(ValueError, match=r"unknown config key\(s\) \['rank'\] for model 'vae'"):
        pg.create_model("vae", rank=2)
    # on the command line: a generated flag or --set guide.KEY=VALUE
    out = tmp_path / "r"
    guide = ["--guide", "iaf", "--flow-steps", 1, "--set", "guide.flow_hidden=8"]
    code, _, err = run(capsys, *TRAIN, "--epochs", 1, "--limit", 64, "--out", out, *guide)
    assert code == 0, err
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    assert ckpt["metadata"]["model_config"]["guide_options"] == {"flow_steps": 1, "flow_hidden": 8}
    run_ = runs.load_run(out)
    assert run_.module.config.guide_options.flow_hidden == 8
    code, _, err = run(capsys, "train", "--model", "pixelcnn", "--dataset", "digits",
                       "--out", tmp_path / "p", "--num-components", 3)  # fmt: skip
    assert_one_line_error(code, err, "num_components: guide options, but model 'pixelcnn'")
    code, _, err = run(capsys, *TRAIN, "--out", tmp_path / "q", "--hidden-channels", 8)
    assert_one_line_error(code, err, "unknown config key(s) ['hidden_channels'] for model 'vae'")


def test_resume_changes_only_what_it_can(tmp_path, capsys):
    out = tmp_path / "r"
    assert run(capsys, *TRAIN, "--epochs", 1, "--limit", 64, "--out", out)[0] == 0
    code, _, err = run(capsys, "train", "--out", out, "--resume", "--epochs", 2, "--lr", 0.1)
    assert_one_line_error(
        code,
        err,
        "only epochs, patience, progress, accelerator, devices, num_nodes, strategy, "
        "precision, logger, compile, validate may change (got lr)",
    )
    code, _, err = run(capsys, "train", "--out", out, "--resume", "--epochs", 2, "--latent-dim", 9)
    assert_one_line_error(code, err, "drop the model settings (latent_dim)")
    code, _, err = run(capsys, "train", "--out", out, "--resume", "--epochs", 2, "--no-progress")
    assert code == 0, err
    assert [json.loads(r)["epoch"] for r in (out / "metrics.jsonl").read_text().splitlines()] == [
        1,
        2,
    ]


def test_each_config_is_built_once(tmp_path, monkeypatch):
    built = []
    real = registry.make_config
    monkeypatch.setattr(runs, "make_config", lambda *a, **k: built.append(a) or real(*a, **k))
    runs.train_run("vae", "digits", tmp_path / "r", {"latent_dim": 2, "hidden_dims": (8,)},
                   {"epochs": 1, "progress": False}, limit=32)  # fmt: skip
    assert built == [("vae",)]


def test_a_checkpoint_with_flat_guide_options_still_loads(tmp_path, capsys):
    out = tmp_path / "r"
    assert run(capsys, *TRAIN, "--epochs", 1, "--limit", 64, "--out", out,
               "--guide", "mixture", "--num-components", 3)[0] == 0  # fmt: skip
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    config = ckpt["metadata"]["model_config"]
    flat = {k: v for k, v in config.items() if k != "guide_options"}
    flat.update(
        num_components=3,
        rank=2,
        flow_steps=2,
        num_classes=10,
        temperature=0.5,
        straight_through=False,
    )  # fmt: skip  (as version 0.1.0 stored every option)
    ckpt["metadata"]["model_config"] = flat
    torch.save(ckpt, out / "checkpoint.pt")
    (out / "best.pt").unlink()
    assert runs.load_run(out).module.posterior.num_components == 3


def test_inference_hints_are_declared_once_with_defaults():
    vae = pg.create_model("vae", image_shape=(1, 8, 8))
    pixel = pg.create_model("pixelvae", image_shape=(1, 8, 8))
    assert hint(vae.model, "iw_samples_per_pass") is None and hint(pixel, "iw_samples_per_pass")
    assert hint(object(), "default_objective") == InferenceHints.default_objective == "elbo"
    assert hint(pg.create_model("vae", guide="gmvae"), "default_objective") == "enum"
    with pytest.raises(AttributeError, match="not an inference hint"):
        hint(vae, "eval_batch_size")


def _vae():
    return pg.create_model("vae", image_shape=(1, 8, 8), latent_dim=3, hidden_dims=(16,))


def test_float64_images_are_scored_in_the_models_dtype():
    vae = _vae().eval()
    x = (torch.rand(4, 1, 8, 8) < 0.5).float()
    torch.manual_seed(1)
    single = log_marginal(vae.model, vae.guide, x, 20)
    torch.manual_seed(1)
    double = log_marginal(vae.model, vae.guide, x.double(), 20)
    torch.testing.assert_close(double, single)
    assert vae.reconstruct(x.double()).dtype == torch.float32


def test_no_images_is_empty_or_a_clear_error():
    vae, x0 = _vae(), torch.zeros(0, 1, 8, 8)
    assert log_marginal(vae.model, vae.guide, x0, 5).shape == (0,)
    assert kl_divergence(vae.model, vae.guide, x0).shape == (0,)
    assert importance_estimate(vae.model, vae.guide, x0, 5).log_marginal.shape == (0,)
    with pytest.raises(ValueError, match="no images to evaluate"):
        evaluation.evaluate_images(vae, x0, num_samples=5, progress=False)
    with pytest.raises(ValueError, match="the validation set is empty"):
        fit(vae, (torch.rand(8, 1, 8, 8) < 0.5).float(), x0, epochs=1, progress=False)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_samples": 2.7}, "num_samples must be a positive integer, got 2.7"),
        ({"num_samples": 0}, "num_samples must be a positive integer, got 0"),
        ({"num_samples": True}, "num_samples must be a positive integer, got True"),
        ({"num_samples": 5, "chunk_size": 0}, "chunk_size must be a positive integer, got 0"),
        ({"num_samples": 5, "chunk_size": 1.5}, "chunk_size must be a positive integer"),
    ],
)
def test_sample_counts_must_be_positive_integers(kwargs, message):
    vae = _vae()
    with pytest.raises(ValueError, match=message):
        log_marginal(vae.model, vae.guide, torch.zeros(2, 1, 8, 8), **kwargs)
    assert log_marginal(vae.model, vae.guide, torch.zeros(2, 1, 8, 8), 3, chunk_size=2).shape == (
        2,
    )


def test_evaluate_json_to_an_unwritable_path_fails_before_evaluating(tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    calls = []
    monkeypatch.setattr(evaluation, "evaluate_run", lambda *a, **k: calls.append(a))
    code, _, err = run(capsys, "evaluate", tmp_path, "--json", blocker / "eval.json")
    assert_one_line_error(code, err, f"cannot write {blocker / 'eval.json'}")
    code, _, err = run(capsys, "evaluate", tmp_path, "--json", tmp_path)
    assert_one_line_error(code, err, "is a directory, not a file")
    assert calls == []  # nothing was evaluated


@pytest.mark.parametrize("command", ["sample", "plot"])
def test_interrupt_hint_names_a_checkpoint_only_for_train(command, tmp_path, capsys, monkeypatch):
    import pyro_genmodels.cli as cli

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(runs, "train_run", interrupted)
    monkeypatch.setattr(evaluation, "load_run", interrupted)
    out = tmp_path / "x.png"
    argv = {
        "sample": ["sample", tmp_path, "--num", 2, "--out", out],
        "plot": ["plot", tmp_path, "--kind", "curves", "--out", out],
    }[command]
    code, _, err = run(capsys, *argv)
    assert code == cli.EXIT_INTERRUPTED
    assert err == "pyro-genmodels: interrupted\n", err


def test_image_grid_is_torchvisions_with_an_explicit_value_range():
    from torchvision.utils import make_grid

    images = torch.rand(5, 1, 3, 4)
    grid = plots.image_grid(images, nrow=2, pad=1)
    torch.testing.assert_close(torch.from_numpy(grid), make_grid(images, 2, 1, pad_value=1.0)[0])
    # dark grey levels (all <= 1) stay dark: the range is stated, not guessed from the maximum
    dark = plots.image_grid(torch.ones(1, 1, 2, 2), pad=0, value_range=(0, 255))
    assert (dark == 1 / 255).all()
    rgb = plots.image_grid(torch.full((2, 3, 2, 2), 255.0), value_range=(0, 255))
    assert rgb.shape[-1] == 3 and rgb.max() == 1.0
    levels = pg.create_model("pixelcnn", image_shape=(1, 4, 4), likelihood="categorical")
    assert levels.likelihood.value_range == (0.0, 255.0) and _vae().likelihood.value_range == (0, 1)


def test_vae_config_documents_every_field():
    comments = field_comments(VAEConfig)
    assert set(VAEConfig.__dataclass_fields__) <= set(comments)


def test_misspelt_names_and_mistyped_values_get_a_precise_message(tmp_path, capsys):
    code, _, err = run(capsys, "train", "--model", "vea", "--dataset", "digits", "--out",
                       tmp_path / "r")  # fmt: skip
    assert_one_line_error(code, err, "--model: invalid choice 'vea' (did you mean 'vae'?); valid:")
    with pytest.raises(ValueError, match=r"unknown model 'vea' \(did you mean 'vae'\?\)"):
        pg.create_model("vea", image_shape=(1, 8, 8))
    code, _, err = run(capsys, *TRAIN, "--guide", "low-rnak", "--out", tmp_path / "r")
    assert_one_line_error(
        code, err, "--guide: invalid choice 'low-rnak' (did you mean 'low-rank'?)"
    )
    code, _, err = run(capsys, *TRAIN, "--prior", "vampprior", "--out", tmp_path / "r")
    assert_one_line_error(code, err, "valid: auto, standard, mixture, vamp, categorical")
    code, _, err = run(capsys, *TRAIN, "--set", "latnt_dim=4", "--out", tmp_path / "r")
    assert_one_line_error(code, err, "['latnt_dim'] for model 'vae' (did you mean 'latent_dim'?)")
    code, _, err = run(capsys, *TRAIN, "--set", "latent_dim=four", "--out", tmp_path / "r")
    assert_one_line_error(code, err, "latent_dim must be an int, got 'four'")
    with pytest.raises(ValueError, match="gaussian_scale must be a number, got 'small'"):
        pg.create_model("vae", image_shape=(1, 8, 8), gaussian_scale="small")


def test_evaluation_commands_take_their_options_and_defaults_from_the_dataclasses():
    import dataclasses

    from pyro_genmodels.cli import _options

    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    owners = {"evaluate": evaluation.EvalConfig, "bdmc": evaluation.BDMCConfig,
              "sample": evaluation.SampleConfig, "plot": evaluation.PlotConfig}  # fmt: skip
    needed = {"sample": ["--num", "4"], "plot": ["--kind", "curves"]}
    for command, cls in owners.items():
        flags = {s for a in commands[command]._actions for s in a.option_strings}
        shared = [evaluation.RunOptions]
        if command in ("evaluate", "plot"):
            shared.append(evaluation.DataOptions)
        for owner in (cls, *shared):
            for f in dataclasses.fields(owner):
                assert "--" + f.name.replace("_", "-") in flags, (command, f.name)
        argv = [command, "run", *(["--out", "x.png"] if command in ("sample", "plot") else [])]
        config, run_options, data = _options(parser.parse_args(argv + needed.get(command, [])), cls)
        # nothing given: exactly the dataclasses' own defaults
        expected = {"sample": {"num": 4}, "plot": {"kind": "curves"}}.get(command, {})
        assert config == cls(**expected)
        assert (run_options, data) == (evaluation.RunOptions(), evaluation.DataOptions())
    given = parser.parse_args(["evaluate", "r", "--num-samples", "7", "--checkpoint", "last",
                               "--limit", "3", "--no-progress"])  # fmt: skip
    config, run_options, data = _options(given, evaluation.EvalConfig)
    assert (config.num_samples, config.progress, run_options.checkpoint, data.limit) == (
        7, False, "last", 3)  # fmt: skip


def test_evaluation_options_are_checked_and_named_where_they_were_given(tmp_path, capsys):
    with pytest.raises(ValueError, match="unknown evaluation option 'num_sample'"):
        evaluation.evaluate_run(tmp_path, num_sample=3)
    with pytest.raises(ValueError, match="ais_chains must be a positive integer, got 0"):
        evaluation.EvalConfig(ais_chains=0)
    with pytest.raises(ValueError, match="limit must be a positive integer"):
        evaluation.DataOptions(limit=-1)
    code, _, err = run(capsys, "evaluate", tmp_path, "--batch-size", 0)
    assert_one_line_error(code, err, "--batch-size must be a positive integer, got 0")
    code, _, err = run(capsys, "sample", tmp_path, "--out", tmp_path / "x.png")
    assert_one_line_error(code, err, "the following arguments are required: --num")
    vae = pg.create_model("vae", image_shape=(1, 8, 8), latent_dim=2, hidden_dims=(8,))
    x = (torch.rand(3, 1, 8, 8) < 0.5).float()
    # the dataclass and its fields as keywords give the same numbers
    torch.manual_seed(0)
    a = evaluation.evaluate_images(vae, x, evaluation.EvalConfig(num_samples=8, progress=False))
    b = evaluation.evaluate_images(vae, x, num_samples=8, progress=False)
    assert a["per_image_nll"] == b["per_image_nll"]


def test_train_help_groups_its_options_and_its_examples_parse():
    import shlex

    from pyro_genmodels.cli import TRAIN_EXAMPLES
    from pyro_genmodels.presets import list_presets

    parser = build_parser()
    train = parser._subparsers._group_actions[0].choices["train"]
    groups = {g.title: {s for a in g._group_actions for s in a.option_strings}
              for g in train._action_groups}  # fmt: skip
    by_flag = {flag: title for title, flags in groups.items() for flag in flags}
    assert by_flag["--latent-dim"].startswith("model")
    assert by_flag["--guide"].startswith("guide") and by_flag["--rank"].startswith("guide")
    assert by_flag["--binarization"] == "data" and by_flag["--lr"] == "training"
    assert by_flag["--precision"].startswith("engine") and by_flag["--out"] == "run"
    lines = TRAIN_EXAMPLES.replace("\\\n", " ").splitlines()[1:]
    commands = " ".join(line for line in lines if not line.strip().startswith("#"))
    examples = [shlex.split(c) for c in commands.split("pyro-genmodels")[1:]]
    assert len([e for e in examples if e[0] == "train"]) == 3
    for argv in examples:
        args = parser.parse_args(argv)  # every example is a valid command line
        if getattr(args, "preset", None):
            assert args.preset in list_presets()

"""The built wheel carries the shipped checkpoints: installed outside the checkout, a
shipped model loads by name and the command line samples from it."""

import json
import subprocess
import sys
import tarfile
import zipfile

import numpy as np
import pytest
from conftest import ROOT

from pyro_genmodels.evaluation import evaluate_run

#: the checkpoints the package ships, as list_pretrained() names them
SHIPPED = ["gated-pixelcnn-mnist", "iwae-k5-paper", "pixelvae-mnist", "vae-paper",
           "vae-vampprior-paper"]  # fmt: skip


@pytest.mark.slow
def test_the_wheel_installed_elsewhere_loads_a_shipped_model(tmp_path):
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path / "dist"), str(ROOT)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("pyro_genmodels-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert any(".dist-info/" in n and n.endswith("LICENSE") for n in names)  # MIT, shipped
    for name in SHIPPED:
        for part in ("best.pt", "README.md", "evaluation.json", "metrics.jsonl"):
            assert f"pyro_genmodels/checkpoints/{name}/{part}" in names, (name, part)
    assert "pyro_genmodels/presets/vae-paper.toml" in names
    site = tmp_path / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site),
         str(wheel)], capture_output=True, text=True,
    )  # fmt: skip
    assert install.returncode == 0, install.stderr[-2000:]
    # a few binarized-MNIST images in the data directory, for evaluate by name
    data = tmp_path / "data"
    data.mkdir()
    images = (np.random.default_rng(0).random((6, 28, 28)) < 0.2).astype(np.uint8)
    np.savez(data / "binarized_mnist.npz", train=images, valid=images, test=images)
    script = (
        f"import sys; sys.path.insert(0, {str(site)!r}); import pyro_genmodels as pg; "
        f"assert pg.__file__.startswith({str(site)!r}), pg.__file__; "
        "print(pg.list_pretrained()); vae = pg.load_pretrained('vae-paper'); "
        "print(type(vae).__name__, vae.config.latent_dim); "
        "from pyro_genmodels.cli import main; "
        "assert main(['sample', 'vae-paper', '--num', '4', '--out', PNG]) == 0; "
        "sys.exit(main(['evaluate', 'vae-paper', '--num-samples', '20', '--no-progress', "
        "'--json', JSON]))"
    )
    script = script.replace("PNG", repr(str(tmp_path / "s.png")))
    script = script.replace("JSON", repr(str(tmp_path / "e.json")))
    env = {"PYTHONNOUSERSITE": "1", "PATH": "/usr/bin:/bin", "PYRO_GENMODELS_DATA": str(data),
           "PYRO_GENMODELS_NO_DOWNLOAD": "1"}  # fmt: skip
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True,
                          text=True, env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert lines[:2] == [str(SHIPPED), "VAE 40"]
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"
    result = json.loads((tmp_path / "e.json").read_text())
    assert (result["model"], result["num_examples"], result["num_samples"]) == ("vae", 6, 20)
    # the installed model scores these images as the checkout's does, image by image
    here = evaluate_run("vae-paper", num_samples=20, progress=False, data_dir=str(data))
    assert result["per_image_nll"] == pytest.approx(here["per_image_nll"], abs=1e-6)


def test_the_sdist_carries_the_checkpoints_and_project_files(tmp_path):
    build = subprocess.run(
        [sys.executable, "-c", "import sys; from setuptools import build_meta; "
         "print(build_meta.build_sdist(sys.argv[1]))", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr[-2000:]
    with tarfile.open(tmp_path / build.stdout.split()[-1]) as sdist:
        names = {n.split("/", 1)[1] for n in sdist.getnames() if "/" in n}
    for name in SHIPPED:
        assert f"pyro_genmodels/checkpoints/{name}/best.pt" in names, name
    assert {"LICENSE", "README.md", "CHANGELOG.md", "CITATION.cff", "pyproject.toml"} <= names


def test_version_and_project_files(capsys):
    import pyro_genmodels as pg
    from pyro_genmodels.cli import main

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out == f"pyro-genmodels {pg.__version__}\n"
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert f'version = "{pg.__version__}"' in pyproject
    assert f"## {pg.__version__} " in (ROOT / "CHANGELOG.md").read_text()
    assert f'version: "{pg.__version__}"' in (ROOT / "CITATION.cff").read_text()
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")

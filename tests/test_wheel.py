"""The built wheel carries the shipped checkpoints: installed outside the checkout, a
shipped model loads by name and the command line samples from it."""

import subprocess
import sys
import zipfile

import pytest
from conftest import ROOT


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
    for name in ("vae-paper", "vae-vampprior-paper", "iwae-k5-paper"):
        for part in ("best.pt", "README.md", "evaluation.json", "metrics.jsonl"):
            assert f"pyro_genmodels/checkpoints/{name}/{part}" in names, (name, part)
    assert "pyro_genmodels/presets/vae-paper.toml" in names
    site = tmp_path / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site),
         str(wheel)], capture_output=True, text=True,
    )  # fmt: skip
    assert install.returncode == 0, install.stderr[-2000:]
    script = (
        f"import sys; sys.path.insert(0, {str(site)!r}); import pyro_genmodels as pg; "
        f"assert pg.__file__.startswith({str(site)!r}), pg.__file__; "
        "print(pg.list_pretrained()); vae = pg.load_pretrained('vae-paper'); "
        "print(type(vae).__name__, vae.config.latent_dim); "
        "from pyro_genmodels.cli import main; "
        f"sys.exit(main(['sample', 'vae-paper', '--num', '4', '--out', PNG]))"
    ).replace("PNG", repr(str(tmp_path / "s.png")))  # fmt: skip
    env = {"PYTHONNOUSERSITE": "1", "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True,
                          text=True, env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert lines[:2] == ["['iwae-k5-paper', 'vae-paper', 'vae-vampprior-paper']", "VAE 40"]
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"


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

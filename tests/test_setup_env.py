"""scripts/setup_env.sh: the shared torch folder and the disk check before any install."""

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
SETUP = REPO / "scripts" / "setup_env.sh"


def test_the_venv_takes_torch_from_the_shared_folder_after_its_own_packages():
    site = sysconfig.get_paths()["purelib"]
    layer = Path(site, "cutdiffusion-torch.pth").read_text().strip()
    assert Path(torch.__file__).is_relative_to(layer)
    assert not Path(torch.__file__).is_relative_to(sys.prefix)   # one copy of torch for all venvs
    # A package the venv installs itself must shadow the shared folder's copy of it.
    assert sys.path.index(site) < sys.path.index(layer)


def _fake_df(folder: Path, free_mb: int) -> None:
    """A `df -P -m` that reports `free_mb` free on one disk mounted at /fake."""
    script = folder / "df"
    script.write_text("#!/bin/sh\n"
                      "echo 'Filesystem 1048576-blocks Used Available Capacity Mounted on'\n"
                      f"echo '/dev/fake 100000 {100000 - free_mb} {free_mb} 99% /fake'\n")
    script.chmod(0o755)


def _setup(tmp_path: Path, free_mb: int, layer: Path) -> subprocess.CompletedProcess:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    _fake_df(bin_dir, free_mb)
    env = {k: v for k, v in os.environ.items() if k not in ("CUTDIFF_COMFYUI",)}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env['PATH']}", CUTDIFF_VENV=str(tmp_path / "venv"),
               CUTDIFF_TORCH_LAYER=str(layer))
    return subprocess.run(["bash", str(SETUP)], env=env, capture_output=True, text=True, timeout=60)


def _needed_mb(result: subprocess.CompletedProcess) -> int:
    return int(result.stderr.split("about ")[1].split(" MB")[0])


def test_a_short_disk_is_refused_before_anything_is_installed(tmp_path):
    result = _setup(tmp_path, free_mb=300, layer=tmp_path / "torch")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "not enough disk for the venv" in result.stderr
    assert "and the shared torch folder" in result.stderr          # both are missing: both counted
    assert "/fake has 300 MB free" in result.stderr
    assert not (tmp_path / "venv").exists() and not (tmp_path / "torch").exists()


def test_with_the_shared_folder_in_place_only_the_venv_is_counted(tmp_path):
    layer = tmp_path / "torch"
    layer.mkdir()
    (layer / ".cutdiff-ready").touch()
    result = _setup(tmp_path, free_mb=300, layer=layer)
    assert result.returncode == 2, result.stdout + result.stderr
    needed = _needed_mb(result)
    assert "shared torch folder" not in result.stderr
    assert needed < 2000    # the venv alone; torch's 5.6 GB is already there
    result = _setup(tmp_path, free_mb=300, layer=tmp_path / "missing")
    assert _needed_mb(result) > needed + 5000

"""What an installed wsm carries: its recipes and reference split list inside the package, and the torchvision fix
for a CPU torch applied to a plain `import timm` in its environment."""
from __future__ import annotations

import subprocess
import sys
import sysconfig
import venv
from importlib import resources
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_recipes_and_the_reference_split_list_are_package_data():
    from archive_client.importer import SPLITS_REFERENCE
    from wsm.config.pipeline import PIPELINES_DIR, known_pipelines

    package = Path(str(resources.files("wsm")))
    assert PIPELINES_DIR == package / "pipelines" and SPLITS_REFERENCE.parent == package / "manifests"
    assert {"default", "classic", "cam-only", "mbdcnn"} <= set(known_pipelines())
    assert SPLITS_REFERENCE.is_file()
    for top in ("pipelines", "manifests"):            # the checkout's top-level folders lead to the same files
        assert (REPO / top).resolve() == (package / top).resolve()


def test_a_missing_reference_is_an_error_not_a_guess(tmp_path):
    from archive_client.errors import InvalidInputError
    from archive_client.importer import reference_split

    with pytest.raises(InvalidInputError, match="missing from this installation"):
        reference_split("ISIC_0012086", "isic2017", reference=tmp_path / "challenge_splits.csv")


_CHECK_INSTALLED = """
import sys
from pathlib import Path
import wsm
from archive_client.importer import reference_split
from wsm.config.pipeline import find_pipeline, known_pipelines
assert Path(wsm.__file__).is_relative_to(Path(sys.argv[1])), wsm.__file__
assert reference_split("ISIC_0012086", "isic2017") == "test"
assert find_pipeline("default").is_relative_to(Path(sys.argv[1]))
print(",".join(known_pipelines()))
"""


@pytest.mark.slow
def test_the_wheel_installed_into_a_fresh_environment_has_its_recipes_and_splits(tmp_path):
    """pip install of the built wheel (not editable) into a new venv whose dependencies come from this one."""
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(wheels), str(REPO)], check=True, cwd=tmp_path, capture_output=True)
    fresh = tmp_path / "fresh"
    venv.create(fresh, with_pip=True)
    python = fresh / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                    str(next(wheels.glob("wsm-*.whl")))], check=True, capture_output=True)
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    # the dependencies (torch, timm, ...) from the test's environment, as a plain path: its .pth files, among
    # them the editable install of this checkout, are not read
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n", encoding="utf8")
    check = subprocess.run([str(python), "-c", _CHECK_INSTALLED, str(site)], capture_output=True, text=True,
                           cwd=tmp_path)
    assert check.returncode == 0, check.stderr
    assert "default" in check.stdout.split(",")
    helped = subprocess.run([str(fresh / "bin" / "wsm"), "fit", "--help"], capture_output=True, text=True,
                            cwd=tmp_path)
    assert helped.returncode == 0 and "cam-only, classic, default, mbdcnn" in " ".join(helped.stdout.split())


def test_the_import_hook_makes_torchvision_and_timm_import(tmp_path):
    """With the hook installed (what the .pth file does at start-up), torchvision, timm and pytorch_grad_cam import
    on this machine's torch whether or not torchvision's compiled operators match it."""
    code = ("import wsm._compat as c; c.install_import_hook(); import timm, pytorch_grad_cam, torchvision; "
            "import torchvision.transforms.functional; print(torchvision.__name__)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "torchvision", done.stderr


def test_the_hook_file_runs_the_hook_at_start_up(tmp_path):
    from wsm._compat import HOOK_FILE, write_hook_file

    path = write_hook_file(tmp_path)
    assert path == tmp_path / HOOK_FILE
    line = path.read_text(encoding="utf8")
    assert line.startswith("import ") and line.count("\n") == 1     # site.py runs .pth lines that start so
    code = f"import site, sys; site.addsitedir({str(tmp_path)!r}); import wsm._compat as c; " \
           "print(any(type(f).__name__ == '_TorchvisionFinder' for f in sys.meta_path))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert done.stdout.strip() == "True", done.stderr
    installed = Path(sysconfig.get_paths()["purelib"]) / HOOK_FILE
    if installed.exists():            # `make install` put it in this environment: a bare `import timm` works
        bare = subprocess.run([sys.executable, "-c", "import timm, torchvision"], capture_output=True, text=True,
                              cwd=tmp_path, timeout=300)
        assert bare.returncode == 0, bare.stderr

"""What a careless user, a damaged folder or a failing disk gets: one line that says what was wrong and what to do,
exit code 2, never a Python traceback."""
from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from datafactory import make_data
from wsm.cli import main
from paths import REPO



def one_line_error(capsys) -> str:
    """The command's stderr, checked to be a single `wsm: error:` line."""
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1 and err.startswith("wsm: error: "), err
    return err


@pytest.fixture(scope="module")
def folders(classic_maps, tmp_path_factory):
    """classic_maps, and a DATA folder without masks."""
    bare = make_data(tmp_path_factory.mktemp("bare") / "BARE", n_images=4, with_masks=False, seed=0)
    return {**classic_maps, "bare": bare}


# ------------------------------------------------------------------------------------- damaged Parquet manifests

def _damaged_copy(folders, tmp_path, folder: str, name: str) -> Path:
    """A copy of DATA or WSM whose manifest ``name`` is cut in half, as a full disk or a killed copy leaves it."""
    copy = tmp_path / folder.upper()
    shutil.copytree(folders[folder], copy)
    manifest = copy / name
    manifest.write_bytes(manifest.read_bytes()[: manifest.stat().st_size // 2])
    return copy


DAMAGED = [  # (which folder's file, the file, the command with that folder as DATA or WSM, the command that rewrites)
    ("data", "manifest.parquet", ["fit", "--pipeline", "classic", "-d", "{data}", "-o", "{out}"], "wsm download"),
    ("data", "gt_manifest.parquet", ["fit", "--pipeline", "classic", "-d", "{data}", "-o", "{out}"], "--challenge"),
    ("data", "manifest.parquet", ["generate", "-d", "{data}", "--bundle", "{bundle}", "-o", "{out}"], "wsm download"),
    ("data", "gt_manifest.parquet", ["generate", "-d", "{data}", "--bundle", "{bundle}", "-o", "{out}"],
     "--challenge"),
    ("data", "manifest.parquet", ["report", "-d", "{data}", "-m", "{wsm}", "-o", "{out}"], "wsm download"),
    ("data", "gt_manifest.parquet", ["report", "-d", "{data}", "-m", "{wsm}", "-o", "{out}"], "--challenge"),
    ("data", "manifest.parquet", ["train", "-d", "{data}", "-o", "{out}"], "wsm download"),
    ("data", "gt_manifest.parquet", ["train", "-d", "{data}", "-o", "{out}"], "--challenge"),
    ("wsm", "manifest.parquet", ["report", "-d", "{data}", "-m", "{wsm}", "-o", "{out}"], "wsm generate"),
    ("wsm", "manifest.parquet", ["train", "-d", "{data}", "--labels", "weak", "-m", "{wsm}", "-o", "{out}"],
     "wsm generate"),
    ("wsm", "manifest.parquet", ["generate", "-d", "{data}", "--bundle", "{bundle}", "-o", "{wsm}", "-j", "1"],
     "wsm generate"),
]


@pytest.mark.parametrize("folder, name, command, rewrite", DAMAGED,
                         ids=[f"{c[0]}-{f}-{n}" for f, n, c, _ in DAMAGED])
def test_a_damaged_manifest_names_the_file_and_the_command_that_rewrites_it(folders, tmp_path, capsys, folder, name,
                                                                           command, rewrite):
    paths = {**folders, folder: _damaged_copy(folders, tmp_path, folder, name), "out": tmp_path / "out"}
    assert main(["-q", *(word.format(**paths) for word in command)]) == 2
    err = one_line_error(capsys)
    assert f"{paths[folder] / name} is damaged" in err and rewrite in err and "move it aside" in err


# ------------------------------------------------------------------------------------- wrong folders and flags

def test_a_maps_folder_given_as_data_says_which_folder_to_give(folders, tmp_path, capsys):
    assert main(["-q", "generate", "-d", str(folders["wsm"]), "--bundle", str(folders["bundle"]),
                 "-o", str(tmp_path / "W")]) == 2
    assert "is a folder of maps written by `wsm generate`, not DATA" in one_line_error(capsys)


def test_the_classic_pipeline_fits_on_data_without_masks(folders, tmp_path, capsys):
    out = tmp_path / "B"
    assert main(["-q", "fit", "--pipeline", "classic", "-d", str(folders["bare"]), "-o", str(out)]) == 0
    assert (out / "provenance.json").is_file()


def test_a_pipeline_with_nothing_to_fit_on_data_without_masks_is_refused(folders, tmp_path, capsys):
    out = tmp_path / "B"
    assert main(["-q", "fit", "-d", str(folders["bare"]), "-o", str(out)]) == 2
    assert "no network to fit" in one_line_error(capsys) and not out.exists()


BAD_FLAGS = [
    (["generate", "-j", "-1"], "-j/--workers: '-1': give a whole number of at least 0"),
    (["generate", "-b", "0"], "-b/--batch-size: '0': give a whole number of at least 1"),
    (["generate", "--limit", "-2"], "--limit: '-2': give a whole number of at least 0"),
    (["train", "--size", "0"], "--size: '0': give a whole number of at least 32 that is a multiple of 32"),
    (["train", "--size", "100"], "--size: '100': give a whole number of at least 32 that is a multiple of 32"),
    (["train", "-e", "0"], "-e/--epochs: '0': give a whole number of at least 1"),
    (["train", "--lr", "-1"], "--lr: '-1': give a number of at least 0"),
    (["train", "--lr", "nan"], "--lr: 'nan': give a number of at least 0"),
    (["train", "-b", "0"], "-b/--batch-size: '0': give a whole number of at least 1"),
    (["train", "--accumulate", "0"], "--accumulate: '0': give a whole number of at least 1"),
    (["train", "--weight-decay", "-0.1"], "--weight-decay: '-0.1': give a number of at least 0"),
]


@pytest.mark.parametrize("args, message", BAD_FLAGS, ids=[" ".join(a) for a, _ in BAD_FLAGS])
def test_a_number_out_of_range_is_a_usage_error(args, message, folders, tmp_path, capsys):
    command, *flags = args
    extra = ["--bundle", str(folders["bundle"])] if command == "generate" else []
    assert main([command, "-d", str(folders["data"]), "-o", str(tmp_path / "out"), *extra, *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", [["fit"], ["train", "-e", "1", "--eval-split", "none"]])
def test_a_weights_file_that_holds_no_weights_is_refused(command, folders, tmp_path, capsys):
    text = tmp_path / "weights.txt"
    text.write_text("these are not weights\n")
    assert main(["-q", *command, "-d", str(folders["data"]), "-o", str(tmp_path / "out"),
                 "--weights", str(text)]) == 2
    err = one_line_error(capsys)
    assert f"weights file {text} could not be loaded" in err and "leave out --weights" in err


# ------------------------------------------------------------------------------------- full and read-only disks

@pytest.fixture()
def failing_disk(monkeypatch):
    """``fail(folder, code)``: creating any file or folder inside ``folder`` fails with OSError(code), as on a full
    (ENOSPC) or read-only (EROFS) disk; root ignores file modes, so the error is forced where files are created."""
    real_open, real_mkdir = os.open, os.mkdir

    def fail(folder: Path, code: int) -> None:
        def inside(path) -> bool:
            return Path(os.fsdecode(path)).absolute().is_relative_to(folder.absolute())

        def fake_open(path, flags, *args, **kwargs):
            if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and inside(path):
                raise OSError(code, os.strerror(code), os.fsdecode(path))
            return real_open(path, flags, *args, **kwargs)

        def fake_mkdir(path, *args, **kwargs):
            if inside(path) and not os.path.exists(path):
                raise OSError(code, os.strerror(code), os.fsdecode(path))
            return real_mkdir(path, *args, **kwargs)

        monkeypatch.setattr(os, "open", fake_open)
        monkeypatch.setattr(os, "mkdir", fake_mkdir)

    return fail


def _command(name: str, folders, out: Path, request) -> list[str]:
    data, wsm, bundle = str(folders["data"]), str(folders["wsm"]), str(folders["bundle"])
    if name == "download":      # from the archive emulator, on loopback
        return ["download", "--api-url", request.getfixturevalue("emulator").api_url, "--limit", "2", "-o", str(out)]
    return {
        "import": ["import", "-i", f"{data}/images", "-o", str(out)],
        "fit": ["fit", "--pipeline", "classic", "-d", data, "-o", str(out)],
        "generate": ["generate", "-d", data, "--bundle", bundle, "-j", "1", "-o", str(out)],
        "report": ["report", "-d", data, "-m", wsm, "-o", str(out)],
        "train": ["train", "-d", data, "-e", "1", "-o", str(out)],
    }[name]


@pytest.mark.parametrize("command", ["download", "import", "fit", "generate", "report", "train"])
def test_a_read_only_output_folder_is_one_line(command, folders, failing_disk, tmp_path, capsys, request):
    out = tmp_path / "ro" / "out"
    failing_disk(tmp_path / "ro", errno.EROFS)
    assert main(["-q", *_command(command, folders, out, request)]) == 2
    err = one_line_error(capsys)
    assert "is on a read-only file system; give --out a folder on a writable disk" in err and str(out) in err


@pytest.mark.parametrize("command", ["download", "fit", "generate", "report"])
def test_a_full_disk_is_one_line_with_the_space_left(command, folders, failing_disk, tmp_path, capsys, request):
    out = tmp_path / "full" / "out"
    out.mkdir(parents=True)                   # the folder exists; nothing more fits
    failing_disk(out, errno.ENOSPC)
    assert main(["-q", *_command(command, folders, out, request)]) == 2
    err = one_line_error(capsys)
    assert f"no space left writing {out}" in err and "MB free" in err and "rerun the same command" in err


def test_a_disk_error_under_other_errors_is_found_and_named_by_the_command_out(tmp_path):
    """torch.save reports a full disk as its own RuntimeError raised while handling the OSError; download's own
    disk-full error may be followed by a second one as it saves its manifest."""
    from wsm.cli.common import os_error_line
    from wsm.errors import disk_error

    full = OSError(errno.ENOSPC, "No space left on device")
    try:
        try:
            raise full
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598") from None
    except RuntimeError as err:
        assert disk_error(err) is full
    assert disk_error(RuntimeError("other")) is None and disk_error(OSError(errno.ENOENT, "x")) is None
    line = os_error_line(full, tmp_path / "BUNDLE")
    assert line.startswith(f"no space left writing {tmp_path / 'BUNDLE'} (") and "MB free" in line
    temporary = OSError(errno.EROFS, "Read-only file system", str(tmp_path / ".pipeline.toml.k2x9a1b3.tmp"))
    assert os_error_line(temporary, None).startswith(f"{tmp_path / 'pipeline.toml'} is on a read-only")


def test_checkpoints_and_weights_report_a_full_disk_as_an_os_error(tmp_path, monkeypatch):
    import safetensors.torch
    import torch

    from wsm.errors import disk_error
    from wsm.learn import loop

    def no_space(*args, **kwargs):
        raise safetensors.SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(loop, "save_model", no_space)
    with pytest.raises(OSError) as info:
        loop.save_weights(torch.nn.Linear(2, 2), tmp_path / "model.safetensors")
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(tmp_path / "model.safetensors")

    class FullFile:                 # what torch.save writes a checkpoint through (a Python file object)
        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        def flush(self):
            pass

    with pytest.raises(Exception) as info:
        torch.save({"w": torch.zeros(1000)}, FullFile())
    assert disk_error(info.value) is not None


def test_a_full_disk_in_a_generate_worker_stops_the_run_instead_of_failing_each_image():
    from wsm.generate import workers

    full = OSError(errno.ENOSPC, "No space left on device", "WSM/.ISIC_0000001.png.x.tmp")
    with pytest.raises(OSError) as info:
        workers.failed("ISIC_0000001", full)
    assert info.value is full
    assert workers.failed("ISIC_0000001", ValueError("cannot decode"))["status"] == "failed"


# ------------------------------------------------------------------------------------- Ctrl-C

def _workers_of(pid: int) -> list[int]:
    """The worker processes a process has spawned so far (Linux)."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    return [int(c) for c in children if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds the worker processes in /proc")
def test_ctrl_c_while_generate_starts_its_workers_prints_one_line_and_no_traceback(folders, tmp_path):
    data = make_data(tmp_path / "DATA", n_images=60, with_masks=False, seed=3)
    command = [sys.executable, "-m", "wsm", "-q", "generate", "-d", str(data), "--bundle", str(folders["bundle"]),
               "-j", "2", "-o", str(tmp_path / "WSM")]
    # a terminal's Ctrl-C: SIGINT to the whole process group, while the workers are still importing
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               start_new_session=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 120
        while len(_workers_of(process.pid)) < 2 and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert process.poll() is None, "generate ended before it could be interrupted"
        os.killpg(process.pid, signal.SIGINT)
        output, _ = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    text = output.decode()
    assert process.returncode == 130, text
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text
    assert text.strip().splitlines() == ["wsm: interrupted; rerun the same command to resume"]


def test_both_families_of_errors_share_one_root():
    from archive_client.errors import ArchiveError, InvalidIdError
    from wsm.errors import UserError, WsmError

    assert issubclass(ArchiveError, UserError) and issubclass(WsmError, UserError)
    assert issubclass(InvalidIdError, ValueError)        # callers that catch ValueError still do

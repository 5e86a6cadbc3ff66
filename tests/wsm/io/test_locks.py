"""One writer per output folder: fit's BUNDLE, train's RUN and report's REPORT are locked while written, like DATA
and WSM; a second writer is refused with one line, and the folder is left as the first writer leaves it."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from wsm.cli import main
from wsm.errors import LockedError
from wsm.io.lock import exclusive_lock, locks_output, output_lock

HOLD = """
import sys, time
from wsm.io.lock import exclusive_lock
with exclusive_lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(120)
"""


@pytest.fixture()
def other_writer():
    """``hold(folder)``: another process holds the folder's lock, as a running wsm command does."""
    processes = []

    def hold(folder: Path) -> None:
        process = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
        processes.append(process)
        assert process.stdout.readline().strip() == "locked"

    yield hold
    for process in processes:
        process.kill()
        process.wait()


@pytest.fixture(scope="module")
def folders(classic_maps):
    return {name: str(path) for name, path in classic_maps.items()}


COMMANDS = {
    "fit": ["fit", "--pipeline", "classic", "-d", "{data}"],
    "report": ["report", "-d", "{data}", "-m", "{wsm}"],
    "report --attributes": ["report", "--attributes", "{wsm}", "-d", "{data}"],
    "train": ["train", "-d", "{data}", "-e", "1", "--size", "32"],
    "train --pipeline mbdcnn": ["train", "--pipeline", "mbdcnn", "-d", "{data}", "-e", "1", "--size", "32"],
    "train --task attributes": ["train", "--task", "attributes", "-d", "{data}", "-e", "1", "--size", "32"],
}


@pytest.mark.parametrize("command", COMMANDS)
def test_a_second_writer_of_an_output_folder_is_refused(command, folders, other_writer, tmp_path, capsys):
    out = tmp_path / "out"
    (out / "kept.txt").parent.mkdir()
    (out / "kept.txt").write_text("the first writer's\n")
    other_writer(out)
    assert main(["-q", *(word.format(**folders) for word in COMMANDS[command]), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"wsm: error: {out} is being written by another wsm process; wait for it to finish or stop it"
    assert sorted(p.name for p in out.iterdir()) == [".wsm", "kept.txt"]


def test_two_fits_into_one_bundle_one_after_the_other_both_write(folders, tmp_path):
    out = tmp_path / "BUNDLE"
    for _ in range(2):
        assert main(["-q", "fit", "--pipeline", "classic", "-d", folders["data"], "-o", str(out)]) == 0
    assert (out / "provenance.json").is_file()


def test_a_command_that_fails_before_writing_leaves_no_folder_behind(tmp_path):
    with pytest.raises(ValueError), output_lock(tmp_path / "new"):
        raise ValueError("a wrong flag")
    assert not (tmp_path / "new").exists()
    with pytest.raises(ValueError), output_lock(tmp_path / "started"):
        (tmp_path / "started" / "config.json").write_text("{}")
        raise ValueError("training failed")
    assert (tmp_path / "started" / "config.json").is_file()
    (tmp_path / "old").mkdir()
    with pytest.raises(ValueError), output_lock(tmp_path / "old"):
        raise ValueError("a wrong flag")
    assert (tmp_path / "old").is_dir()


def test_under_torchrun_only_rank_0_locks_the_run_folder(tmp_path, monkeypatch):
    @locks_output("out", torchrun=True)
    def write(out: Path) -> str:
        return "written"

    with exclusive_lock(tmp_path):
        monkeypatch.setenv("RANK", "1")
        assert write(tmp_path) == "written"         # the other ranks write nothing; rank 0 holds the lock
        monkeypatch.setenv("RANK", "0")
        with pytest.raises(LockedError):
            write(out=tmp_path)

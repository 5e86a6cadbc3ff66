"""The command line's shared behaviour: where flags go, and one-line errors for input a user can fix."""
from __future__ import annotations

import pytest

from wsm.cli import build_parser, main
from paths import REPO


def test_output_flags_work_before_and_after_the_command():
    parser = build_parser()
    assert parser.parse_args(["-q", "report", "-m", "p", "-d", "d", "-o", "o"]).quiet
    after = parser.parse_args(["report", "--maps", "p", "--data", "d", "--out", "o", "-q", "-v"])
    assert after.quiet and after.verbose == 1
    plain = parser.parse_args(["report", "--maps", "p", "--data", "d", "--out", "o"])
    assert not plain.quiet and plain.verbose == 0


@pytest.mark.parametrize("device, message", [("gpu", "give cpu, cuda or cuda:N"), ("cuda:x", "give cpu, cuda"),
                                             ("cuda:99", "cuda")])
def test_an_unusable_device_is_refused_before_any_work(device, message, tmp_path, capsys):
    out = tmp_path / "bundle"
    assert main(["-q", "fit", "--data", str(tmp_path), "--out", str(out), "--device", device]) == 2
    assert message in capsys.readouterr().err and not out.exists()


def test_a_file_where_a_folder_belongs_is_a_one_line_error(tmp_path, capsys):
    from wsm.demo import SAMPLE

    occupied = tmp_path / "taken"
    occupied.write_text("keep me")
    assert main(["-q", "import", "--images", str(SAMPLE / "images"), "--out", str(occupied)]) == 2
    assert "is a file; give a folder path" in capsys.readouterr().err
    assert occupied.read_text() == "keep me"


@pytest.mark.slow
def test_demo_runs_and_a_rerun_finishes_without_redoing_work(tmp_path, capsys):
    """`wsm demo` end to end on the embedded sample (what `make demo` runs), then again on the same folder."""
    import json

    out = tmp_path / "demo"
    assert main(["-q", "demo", "--out", str(out)]) == 0
    first = capsys.readouterr().out + capsys.readouterr().err
    metrics = json.loads((out / "report" / "metrics.json").read_text())
    assert (out / "report" / "report.html").exists() and metrics
    assert main(["-q", "demo", "--out", str(out)]) == 0
    again = capsys.readouterr()
    assert "0 maps written" in again.out + again.err, first[-2000:]


def test_an_ids_file_with_junk_is_refused_with_its_line(tmp_path, capsys):
    from wsm.selection import read_id_list

    good = tmp_path / "good.txt"
    good.write_text("# held-out fold\nISIC_0000001\n\n  ISIC_0000002  \n")
    assert read_id_list(good) == {"ISIC_0000001", "ISIC_0000002"}
    csv = tmp_path / "ids.csv"
    csv.write_text("isic_id,fold\nISIC_0000003,1\n")
    assert read_id_list(csv) == {"ISIC_0000003"}
    junk = tmp_path / "junk.txt"
    junk.write_text("ISIC_0000001\nISIC_0000004,extra\n")
    assert main(["-q", "fit", "--data", str(tmp_path), "--out", str(tmp_path / "b"), "--exclude", str(junk)]) == 2
    err = capsys.readouterr().err
    assert "entry 2 'ISIC_0000004,extra' is not an image id" in err and not (tmp_path / "b").exists()


@pytest.mark.parametrize("args, message", [
    (["download", "--splits", "train"], "--splits: only used with --challenge"),
    (["download", "--inputs"], "--inputs: only used with --challenge"),
    (["download", "--challenge", "isic2018", "--limit", "2", "--search", "x"], "--search, --limit: archive image"),
    (["generate", "--data", "d", "--images", "i", "--bundle", "b"], "not both"),
])
def test_flags_the_chosen_mode_would_ignore_are_refused(args, message, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["-q", *args, "--out", str(out)]) == 2
    assert message in capsys.readouterr().err and not out.exists()


def _readme_first_run() -> list[list[str]]:
    """The `wsm ...` lines of the README's "First run" block, split as a shell would."""
    import re
    import shlex

    readme = (REPO / "README.md").read_text(encoding="utf8")
    block = re.search(r"## First run\n.*?```sh\n(.*?)```", readme, re.S).group(1)
    return [shlex.split(line)[1:] for line in block.splitlines() if line.startswith("wsm ")]


@pytest.mark.slow
def test_the_readme_first_run_ends_with_a_report_with_real_numbers(tmp_path, monkeypatch, capsys):
    """The README's first example, as written (from a folder where wsm/sample is the embedded sample)."""
    import json
    import math

    from wsm.demo import SAMPLE

    commands = _readme_first_run()
    assert [c[0] for c in commands] == ["import", "fit", "generate", "report"]
    (tmp_path / "wsm").mkdir()
    (tmp_path / "wsm" / "sample").symlink_to(SAMPLE)
    monkeypatch.chdir(tmp_path)
    for command in commands:
        assert main(command) == 0, command
    err = capsys.readouterr().err
    assert "next: wsm fit" in err and "next: wsm generate" in err and "next: wsm report" in err
    metrics = json.loads((tmp_path / "out/first/REPORT/metrics.json").read_text())
    headline = metrics["headline"]["uncertain_as_background"]
    assert metrics["counts"]["headline"] > 0 and headline["n_images"] == metrics["counts"]["headline"]
    assert all(math.isfinite(headline[k]) for k in ("jaccard", "threshold_jaccard", "dice"))


def test_old_spellings_still_work_and_say_what_to_use(capsys):
    parser = build_parser()
    args = parser.parse_args(["train", "--data", "d", "--out", "o", "--wsm", "w", "--split-train", "labeled"])
    assert (str(args.maps), args.train_split) == ("w", "labeled")
    assert str(parser.parse_args(["report", "--pred", "p", "-d", "d", "-o", "o"]).maps) == "p"
    assert parser.parse_args(["download", "-o", "d", "--workers", "3"]).connections == 3
    err = capsys.readouterr().err
    assert "--wsm is now --maps" in err and "--split-train is now --train-split" in err
    assert "--pred is now --maps" in err and "--workers is now --connections" in err


def test_the_new_and_the_old_spelling_of_weak_labels_are_the_same_run():
    from wsm.cli.train import options
    from wsm.train.run_folder import run_identity

    parser = build_parser()
    new, _ = options(parser.parse_args(["train", "-d", "d", "-o", "o", "--labels", "weak", "-m", "w"]))
    old, _ = options(parser.parse_args(["train", "-d", "d", "-o", "o", "--labels", "w"]))
    assert run_identity(new) == run_identity(old)           # so --resume accepts a run started either way

"""`advface data ...` through typer's CliRunner (and once through the real entry point)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from advface.cli.main import app
from advface.data.lfw import open_lfw
from advface.data.splits import ClosedSetSplit, make_closed_set_split
from advface.data.synthetic import make_tiny_lfw
from advface.errors import ConfigError, DataError

runner = CliRunner()


def test_info(tiny_root: Path, cache: Path) -> None:
    result = runner.invoke(app, ["data", "info", "--data", str(tiny_root), "--cache", str(cache)])
    assert result.exit_code == 0, result.output
    out = result.output
    expected = make_closed_set_split(open_lfw(tiny_root, cache).records)
    assert "people:      6" in out and "validation:  OK" in out and "problems:    0" in out
    assert f"people:       {len(expected.identities)}" in out
    assert f"probes:       {len(expected.probes)}" in out and expected.hash in out


def test_info_options_and_config(tiny_root: Path, cache: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "data.yaml"
    cfg.write_text(f"data_dir: {tiny_root}\ncache_dir: {cache}\nseed: 4\nmin_images: 3\n")
    result = runner.invoke(app, ["data", "info", "--config", str(cfg), "--no-distractors"])
    assert result.exit_code == 0, result.output
    assert "min_images=3" in result.output and "seed=4" in result.output
    assert "distractors=off" in result.output and "distractors:  0 images" in result.output
    result = runner.invoke(app, ["data", "info", "--config", str(cfg), "--min-images", "2"])
    assert "min_images=2" in result.output and "seed=4" in result.output


def test_split_writes_loadable_file(tiny_root: Path, cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "split.json"
    result = runner.invoke(app, ["data", "split", "--out", str(out), "--data", str(tiny_root),
                                 "--cache", str(cache), "--seed", "5"])
    assert result.exit_code == 0, result.output
    split = ClosedSetSplit.load(out)
    expected = make_closed_set_split(open_lfw(tiny_root, cache).records, seed=5)
    assert split == expected and json.loads(out.read_text())["hash"] in result.output


def test_validate_clean_and_broken(tmp_path: Path, cache: Path, tiny_root: Path) -> None:
    ok = runner.invoke(app, ["data", "validate", "--data", str(tiny_root), "--cache", str(cache)])
    assert ok.exit_code == 0, ok.output
    assert "validation: OK" in ok.output and "checksums" in ok.output
    broken = make_tiny_lfw(tmp_path / "b", broken=True)
    res = runner.invoke(app, ["data", "validate", "--data", str(broken), "--cache", str(cache),
                              "--verify-images"])
    assert res.exit_code == 1
    assert "Empty_Person" in res.output and "notes.txt" in res.output
    assert "Ada_Quill_0005.jpg" in res.output and "unreadable" in res.output


def test_user_errors_are_advface_errors(tmp_path: Path, cache: Path) -> None:
    res = runner.invoke(app, ["data", "info", "--data", str(tmp_path / "none"),
                              "--cache", str(cache)])
    assert isinstance(res.exception, DataError)
    bad = tmp_path / "bad.yaml"
    bad.write_text("min_imags: 3\n")
    res = runner.invoke(app, ["data", "info", "--config", str(bad)])
    assert isinstance(res.exception, ConfigError) and "min_images" in str(res.exception)


def test_download_command(tmp_path: Path) -> None:
    from advface.data.download import LFW_REQUIRED

    full = tmp_path / "full"
    full.mkdir()
    for name in LFW_REQUIRED:
        (full / name).write_text("x")
    res = runner.invoke(app, ["data", "download", "--data", str(full)])
    assert res.exit_code == 0 and "already present" in res.output
    (full / "pairs.txt").unlink()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    res = runner.invoke(app, ["data", "download", "--data", str(full),
                              "--base-url", f"http://127.0.0.1:{port}/"])
    assert isinstance(res.exception, DataError)
    assert "pairs.txt" in (res.exception.fix or "") and "people.txt" not in res.exception.fix


def test_entry_point_prints_one_clear_message(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", "from advface.cli.main import main; main()", "data", "info",
         "--data", str(tmp_path / "missing"), "--cache", str(tmp_path / "c")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: data directory not found")
    assert "fix:" in proc.stderr and "Traceback" not in proc.stderr

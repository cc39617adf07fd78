"""The `advface` entry point: user-fixable problems end in one message and exit status 2."""

from __future__ import annotations

import errno

import pytest

from advface.cli import main as entry


@pytest.mark.parametrize("err", [
    NotADirectoryError(errno.ENOTDIR, "Not a directory", "afile/x.json"),
    IsADirectoryError(errno.EISDIR, "Is a directory", "out"),
    FileExistsError(errno.EEXIST, "File exists", "photos/blair.jpg"),
])
def test_a_path_that_cannot_be_written_is_a_message_not_a_traceback(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        err: OSError) -> None:
    def failing() -> None:
        raise err

    monkeypatch.setattr(entry, "app", failing)
    with pytest.raises(SystemExit) as stop:
        entry.main()
    assert stop.value.code == 2
    said = capsys.readouterr().err
    assert said.startswith(f"error: {err.strerror}") and f"file: {err.filename}" in said
    assert "fix:" in said


def test_other_errors_are_not_hidden(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug stays a traceback: only the user's own paths are turned into messages."""
    def failing() -> None:
        raise ValueError("a bug")

    monkeypatch.setattr(entry, "app", failing)
    with pytest.raises(ValueError, match="a bug"):
        entry.main()


@pytest.mark.parametrize(("args", "match"), [
    (["train", "adhoc", "--config", "c.yaml", "--time-budget", "0"], "positive number"),
    (["train", "adhoc", "--config", "c.yaml", "--threads", "0"], "--threads"),
    (["defend", "advtrain", "--config", "c.yaml", "--time-budget", "-1"], "positive number"),
])
def test_training_options_out_of_range_are_refused_before_anything(args: list[str],
                                                                   match: str) -> None:
    """--time-budget 0 once meant 'unlimited' and was saved into the run's config.yaml, which
    then failed to load; --threads 0 crashed inside torch."""
    from typer.testing import CliRunner

    res = CliRunner().invoke(entry.app, args)
    assert res.exit_code == 2 and match in res.output

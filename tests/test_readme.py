"""The README's Python API block runs as written (on a few real LFW photos)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_readme_python_block_runs(lfw_bits, tmp_path, monkeypatch, capsys):
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    assert len(blocks) == 1
    shutil.copytree(lfw_bits["gallery"], tmp_path / "my_gallery")
    shutil.copy(lfw_bits["photos"] / "Abdullah_Gul" / "Abdullah_Gul_0001.jpg",
                tmp_path / "me.jpg")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ADVFACE_CACHE", str(lfw_bits["cache"]))
    exec(compile(blocks[0], "README.md", "exec"), {"__name__": "readme"})
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("('Abdullah_Gul',") and printed[0].endswith("fooled: True")
    assert printed[1].startswith("tensor([True])")
    assert (tmp_path / "out" / "panel.png").is_file()


"""Config loading: every user mistake is one ConfigError naming file, line, key and fix."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import Field

from advface.config import DataConfig, StrictModel, load_yaml, parse_config, to_yaml
from advface.errors import ConfigError


class Section(StrictModel):
    name: str = "x"
    size: int = 1


class Experiment(StrictModel):
    data: DataConfig = DataConfig()
    sections: list[Section] = Field(default_factory=list)
    title: str


def _err(tmp_path: Path, text: str, model: type = DataConfig) -> ConfigError:
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_yaml(path, model)
    assert info.value.path == path and info.value.fix
    return info.value


def test_defaults_and_values(tmp_path: Path) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text("min_images: 3\nprobe_fraction: 0.25\ndistractors: false\nseed: 7\n")
    cfg = load_yaml(path, DataConfig)
    assert cfg.split_kwargs() == {"min_images": 3, "probes_per_person": 1,
                                  "probe_fraction": 0.25, "distractors": False, "seed": 7}
    path.write_text("")
    assert load_yaml(path, DataConfig) == DataConfig()


def test_relative_paths_resolve_against_the_config_file(tmp_path: Path) -> None:
    sub = tmp_path / "configs"
    sub.mkdir()
    path = sub / "cfg.yaml"
    path.write_text("data_dir: ../lfw\ncache_dir: /abs/cache\n")
    cfg = load_yaml(path, DataConfig)
    assert cfg.data_dir == sub / "../lfw" and cfg.cache_dir == Path("/abs/cache")
    assert "data_dir: " in to_yaml(cfg)


def test_yaml_syntax_error_names_line(tmp_path: Path) -> None:
    err = _err(tmp_path, "min_images: 3\nseed: [1, 2\n")
    assert "YAML syntax error" in err.message and "line 3" in err.message


def test_unknown_key_suggests_closest(tmp_path: Path) -> None:
    err = _err(tmp_path, "min_images: 3\nmin_imags: 4\n")
    assert "line 2" in err.message and "'min_imags'" in err.message
    assert "did you mean 'min_images'" in err.message and "min_images" in (err.fix or "")


def test_nested_unknown_and_ill_typed_keys(tmp_path: Path) -> None:
    err = _err(tmp_path, "title: t\ndata:\n  seed: many\n  distractor: true\n"
                         "sections:\n  - name: a\n    sise: 2\n", Experiment)
    msg = err.message
    assert "3 problems" in msg
    assert "line 3: key 'data.seed': expected an integer, got 'many'" in msg
    assert "did you mean 'data.distractors'" in msg
    assert "unknown key 'sections[0].sise'" in msg and "sections[0].size" in msg
    assert msg.index("line 3") < msg.index("line 4") < msg.index("line 7")


def test_missing_required_key_and_range_checks(tmp_path: Path) -> None:
    err = _err(tmp_path, "data: {min_images: 1, probe_fraction: 2}\n", Experiment)
    assert "required key 'title' is missing" in err.message
    assert "'data.min_images': expected a number >= 2, got 1" in err.message
    assert "'data.probe_fraction'" in err.message and "< 1" in err.message


def test_non_mapping_and_missing_file(tmp_path: Path) -> None:
    err = _err(tmp_path, "- a\n- b\n")
    assert "mapping" in err.message and "min_images" in (err.fix or "")
    with pytest.raises(ConfigError, match="not found"):
        load_yaml(tmp_path / "absent.yaml", DataConfig)


def test_parse_config_without_file() -> None:
    assert parse_config({"seed": 2}, DataConfig).seed == 2
    with pytest.raises(ConfigError) as info:
        parse_config({"sed": 2}, DataConfig)
    assert info.value.path is None and "did you mean 'seed'" in info.value.message

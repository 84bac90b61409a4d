from dataclasses import dataclass

import pytest

from bench.config import read_yaml, resolve_config
from bench.errors import BenchError


@dataclass(frozen=True)
class Example:
    name: str = "a"
    rate: float = 0.1
    epochs: int | None = None
    tags: tuple[str, ...] = ()


def test_precedence_cli_over_yaml_over_defaults():
    config = resolve_config(Example, {"name": "yaml", "rate": 2}, {"name": "cli", "rate": None}, source="x.yaml")
    assert config == Example(name="cli", rate=2.0)


def test_unset_cli_flags_do_not_override_yaml():
    config = resolve_config(Example, {"epochs": 5}, {"epochs": None}, source="x.yaml")
    assert config.epochs == 5


def test_yaml_lists_become_tuples():
    assert resolve_config(Example, {"tags": ["a", "b"]}, {}, source="x").tags == ("a", "b")


def test_unknown_yaml_key_is_named_with_a_suggestion():
    with pytest.raises(BenchError, match=r"x.yaml: unknown key 'epoch'; did you mean 'epochs'\?"):
        resolve_config(Example, {"epoch": 3}, {}, source="x.yaml")


def test_wrong_type_names_the_field():
    with pytest.raises(BenchError, match="x.yaml: rate: expected float"):
        resolve_config(Example, {"rate": "fast"}, {}, source="x.yaml")


def test_malformed_yaml_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("a: [1, 2\n")
    with pytest.raises(BenchError, match="bad.yaml: malformed YAML"):
        read_yaml(path)


def test_missing_yaml_file(tmp_path):
    with pytest.raises(BenchError, match="does not exist"):
        read_yaml(tmp_path / "none.yaml")

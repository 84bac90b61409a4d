import pytest

from bench.errors import BenchError
from bench.registry import Registry


def test_duplicate_name_raises():
    registry = Registry("thing")
    registry.add("a", 1)
    with pytest.raises(ValueError, match="already registered"):
        registry.add("a", 2)


def test_unknown_name_suggests_close_matches_and_names_the_flag():
    registry = Registry("method")
    for name in ("combiner", "clip4cir", "blip2"):
        registry.add(name, name)
    with pytest.raises(BenchError) as error:
        registry.get("combinr", flag="--method")
    message = str(error.value)
    assert message.startswith("--method: unknown method 'combinr'")
    assert "did you mean combiner" in message
    assert "\n" not in message


def test_decorator_registers_and_returns_the_target():
    registry = Registry("thing")

    @registry.register("f")
    def f():
        return 3

    assert registry.get("f") is f
    assert list(registry) == ["f"]

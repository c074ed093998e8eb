"""Tests for tinysora.config: typed dataclass configs with a strict JSON / TOML round trip."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from tinysora.config import Config, ConfigError, WorldConfig, atomic_write_text

# ----------------------------------------------------------------------------- fixtures
# Module-level classes: Config.from_dict resolves the (string) annotations with
# typing.get_type_hints, which needs the names to live in module globals.


@dataclass
class Inner(Config):
    depth: int = 2
    rates: list[float] = field(default_factory=lambda: [0.1, 0.2])


@dataclass
class Recipe(Config):
    name: str  # required
    size: tuple[int, int, int] = (17, 64, 64)
    lr: float = 1e-3
    note: str | None = None
    mode: Literal["a", "b"] = "a"
    counts: dict[str, int] = field(default_factory=dict)
    ema: bool = True
    steps: int = 100
    inner: Inner = field(default_factory=Inner)


@dataclass
class Outer(Config):
    recipe: Recipe  # required, nested two levels deep
    blocks: list[Inner] = field(default_factory=list)


def sample_recipe() -> Recipe:
    """A Recipe with every field away from its default."""
    return Recipe(
        name="tiny",
        size=(9, 32, 48),
        lr=0.25,
        note="hello",
        mode="b",
        counts={"x": 1, "y": -3},
        ema=False,
        steps=7,
        inner=Inner(depth=5, rates=[1.5, 2.0, 0.0]),
    )


def sample_outer() -> Outer:
    return Outer(recipe=sample_recipe(), blocks=[Inner(depth=1, rates=[]), Inner()])


def error_of(cls: type[Config], data: object) -> str:
    with pytest.raises(ConfigError) as info:
        cls.from_dict(data)  # type: ignore[arg-type]
    return str(info.value)


def recipe_data(**changes: object) -> dict:
    data = sample_recipe().to_dict()
    data.update(changes)
    return data


# ----------------------------------------------------------------------------- round trips


def test_to_dict_is_plain_json_data():
    data = sample_outer().to_dict()
    assert data["recipe"]["size"] == [9, 32, 48]  # tuples become lists
    assert data["recipe"]["inner"] == {"depth": 5, "rates": [1.5, 2.0, 0.0]}
    assert data["blocks"] == [{"depth": 1, "rates": []}, {"depth": 2, "rates": [0.1, 0.2]}]
    assert list(data["recipe"]) == [
        "name",
        "size",
        "lr",
        "note",
        "mode",
        "counts",
        "ema",
        "steps",
        "inner",
    ]
    assert json.loads(json.dumps(data)) == data


def test_dict_round_trip_restores_types():
    original = sample_outer()
    restored = Outer.from_dict(original.to_dict())
    assert restored == original
    assert isinstance(restored.recipe, Recipe)
    assert isinstance(restored.recipe.inner, Inner)
    assert all(isinstance(b, Inner) for b in restored.blocks)
    assert isinstance(restored.recipe.size, tuple)
    assert isinstance(restored.recipe.inner.rates, list)


def test_defaults_round_trip():
    original = Recipe(name="defaults")
    assert Recipe.from_dict(original.to_dict()) == original
    assert Recipe.from_json(original.to_json()) == original


def test_json_round_trip():
    original = sample_outer()
    text = original.to_json()
    assert text.endswith("\n")
    assert json.loads(text) == original.to_dict()
    assert Outer.from_json(text) == original


def test_partial_dict_uses_defaults():
    cfg = Recipe.from_dict({"name": "only-name"})
    assert cfg == Recipe(name="only-name")


def test_float_field_accepts_int_and_stores_float():
    cfg = Recipe.from_dict({"name": "n", "lr": 2})
    assert cfg.lr == 2.0
    assert type(cfg.lr) is float
    inner = Inner.from_dict({"rates": [1, 2.5]})
    assert inner.rates == [1.0, 2.5]
    assert all(type(r) is float for r in inner.rates)


def test_optional_field_accepts_none_and_str():
    assert Recipe.from_dict({"name": "n", "note": None}).note is None
    assert Recipe.from_dict({"name": "n", "note": "hi"}).note == "hi"


def test_literal_accepts_allowed_values():
    assert Recipe.from_dict({"name": "n", "mode": "b"}).mode == "b"


def test_save_and_load_json(tmp_path):
    original = sample_outer()
    path = tmp_path / "run" / "nested" / "config.json"  # parents do not exist yet
    returned = original.save(path)
    assert returned == path
    assert path.read_text() == original.to_json()
    assert Outer.load(path) == original
    assert Outer.load(str(path)) == original
    assert sorted(p.name for p in path.parent.iterdir()) == ["config.json"]


def test_save_overwrites(tmp_path):
    path = tmp_path / "config.json"
    Recipe(name="first").save(path)
    Recipe(name="second", steps=3).save(path)
    assert Recipe.load(path) == Recipe(name="second", steps=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]


def test_load_toml(tmp_path):
    path = tmp_path / "recipe.toml"
    path.write_text(
        """
name = "from-toml"
size = [5, 40, 56]
lr = 3                 # an int for a float field
note = "toml note"
mode = "b"
ema = false
steps = 12

[counts]
a = 1
b = 2

[inner]
depth = 4
rates = [0.5, 1]
"""
    )
    cfg = Recipe.load(path)
    assert cfg == Recipe(
        name="from-toml",
        size=(5, 40, 56),
        lr=3.0,
        note="toml note",
        mode="b",
        counts={"a": 1, "b": 2},
        ema=False,
        steps=12,
        inner=Inner(depth=4, rates=[0.5, 1.0]),
    )
    assert type(cfg.lr) is float


def test_load_toml_array_of_tables(tmp_path):
    path = tmp_path / "outer.toml"
    path.write_text(
        """
[recipe]
name = "x"

[[blocks]]
depth = 1

[[blocks]]
depth = 3
rates = []
"""
    )
    cfg = Outer.load(path)
    assert cfg == Outer(recipe=Recipe(name="x"), blocks=[Inner(depth=1), Inner(depth=3, rates=[])])


# ----------------------------------------------------------------------------- errors


def test_config_error_is_value_error():
    assert issubclass(ConfigError, ValueError)


def test_unknown_key_names_it_and_lists_valid_keys():
    message = error_of(Recipe, {"name": "n", "lerning_rate": 0.1})
    assert "'lerning_rate'" in message
    assert "valid keys" in message
    for name in ("name", "size", "lr", "note", "mode", "counts", "ema", "steps", "inner"):
        assert name in message.split("valid keys")[1]


def test_several_unknown_keys_are_all_named():
    message = error_of(Recipe, {"name": "n", "zz": 1, "aa": 2})
    assert "'aa'" in message and "'zz'" in message


def test_nested_unknown_key_shows_dotted_path():
    data = {"recipe": {"name": "n", "inner": {"dept": 3}}}
    message = error_of(Outer, data)
    assert "Outer.recipe.inner" in message
    assert "'dept'" in message
    assert "depth" in message and "rates" in message


def test_unknown_key_in_list_item_shows_index():
    message = error_of(Outer, {"recipe": {"name": "n"}, "blocks": [{}, {"width": 1}]})
    assert "Outer.blocks[1]" in message
    assert "'width'" in message


@pytest.mark.parametrize(
    ("changes", "where"),
    [
        ({"steps": "100"}, "Recipe.steps"),  # str for int
        ({"steps": True}, "Recipe.steps"),  # bool for int
        ({"steps": 1.5}, "Recipe.steps"),  # float for int
        ({"lr": "fast"}, "Recipe.lr"),
        ({"lr": True}, "Recipe.lr"),  # bool for float
        ({"ema": 1}, "Recipe.ema"),  # int for bool
        ({"name": 3}, "Recipe.name"),
        ({"size": [1, 2]}, "Recipe.size"),  # wrong tuple length
        ({"size": [1, 2, 3, 4]}, "Recipe.size"),
        ({"size": 64}, "Recipe.size"),  # not a list
        ({"size": [1, 2, "3"]}, "Recipe.size[2]"),  # wrong item type
        ({"mode": "c"}, "Recipe.mode"),  # Literal value not allowed
        ({"note": 5}, "Recipe.note"),  # str | None
        ({"counts": [1]}, "Recipe.counts"),
        ({"counts": {"a": 1.5}}, "Recipe.counts['a']"),
        ({"inner": {"rates": ["x"]}}, "Recipe.inner.rates[0]"),
        ({"inner": {"depth": "2"}}, "Recipe.inner.depth"),
        ({"inner": [1, 2]}, "Recipe.inner"),  # a list where a table is expected
    ],
)
def test_wrong_type_names_the_field(changes, where):
    message = error_of(Recipe, recipe_data(**changes))
    assert message.startswith(where + ":"), message


def test_literal_error_lists_allowed_values():
    message = error_of(Recipe, {"name": "n", "mode": "c"})
    assert "'c'" in message and "'a'" in message and "'b'" in message


def test_tuple_length_error_gives_counts():
    message = error_of(Recipe, {"name": "n", "size": [1, 2]})
    assert "3" in message and "2" in message


def test_missing_required_field():
    message = error_of(Recipe, {"steps": 3})
    assert "name" in message
    message = error_of(Outer, {})
    assert "recipe" in message


def test_missing_required_nested_field():
    message = error_of(Outer, {"recipe": {"steps": 3}})
    assert "Outer.recipe" in message and "name" in message


def test_non_dict_data():
    assert "expected a table/object" in error_of(Recipe, [1, 2])
    with pytest.raises(ConfigError, match="expected a table/object"):
        Recipe.from_json("[1, 2]")


def test_invalid_json_text():
    with pytest.raises(ConfigError, match="invalid JSON"):
        Recipe.from_json('{"name": ')


def test_invalid_json_file_names_the_file(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"name": "x",}')
    with pytest.raises(ConfigError, match="invalid JSON") as info:
        Recipe.load(path)
    assert str(path) in str(info.value)


def test_invalid_toml_file_names_the_file(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text('name = "x"\nsteps = = 3\n')
    with pytest.raises(ConfigError, match="invalid TOML") as info:
        Recipe.load(path)
    assert str(path) in str(info.value)


def test_unknown_key_in_file_names_the_file(tmp_path):
    path = tmp_path / "typo.toml"
    path.write_text('name = "x"\n[inner]\ndept = 3\n')
    with pytest.raises(ConfigError) as info:
        Recipe.load(path)
    message = str(info.value)
    assert f"{path}.inner" in message and "'dept'" in message


def test_missing_file(tmp_path):
    path = tmp_path / "nope.json"
    with pytest.raises(ConfigError) as info:
        Recipe.load(path)
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)


def test_directory_instead_of_file(tmp_path):
    with pytest.raises(ConfigError):
        Recipe.load(tmp_path)


def test_non_utf8_file_is_config_error(tmp_path):
    path = tmp_path / "latin1.json"
    path.write_bytes(b'{"name": "caf\xe9"}')
    with pytest.raises(ConfigError):
        Recipe.load(path)


# ----------------------------------------------------------------------------- atomic write


def test_atomic_write_text_creates_and_overwrites(tmp_path):
    path = tmp_path / "out.txt"
    atomic_write_text(path, "first\n")
    assert path.read_text() == "first\n"
    atomic_write_text(path, "second, longer text\n")
    assert path.read_text() == "second, longer text\n"
    atomic_write_text(path, "")
    assert path.read_text() == ""
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_atomic_write_text_failure_keeps_old_file_and_no_temp(tmp_path):
    path = tmp_path / "out.txt"
    atomic_write_text(path, "old\n")
    with pytest.raises(UnicodeEncodeError):
        atomic_write_text(path, "bad \ud800 surrogate")  # cannot be encoded: write fails
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_saved_config_respects_umask(tmp_path):
    path = Recipe(name="n").save(tmp_path / "config.json")
    assert path.stat().st_mode & 0o777 == 0o666 & ~_current_umask()


# ----------------------------------------------------------------------------- WorldConfig


def test_world_config_defaults():
    cfg = WorldConfig()
    assert (cfg.height, cfg.width, cfg.frames, cfg.fps) == (64, 64, 17, 8.0)
    assert cfg.to_dict() == {"height": 64, "width": 64, "frames": 17, "fps": 8.0}


def test_world_config_round_trip(tmp_path):
    cfg = WorldConfig.from_dict({"height": 48, "width": 96, "frames": 9, "fps": 12})
    assert cfg == WorldConfig(48, 96, 9, 12.0)
    assert type(cfg.fps) is float
    assert WorldConfig.load(cfg.save(tmp_path / "world.json")) == cfg
    toml = tmp_path / "world.toml"
    toml.write_text("frames = 33\n")
    assert WorldConfig.load(toml) == WorldConfig(frames=33)


def test_world_config_rejects_typo():
    message = error_of(WorldConfig, {"heigth": 32})
    assert "'heigth'" in message and "height, width, frames, fps" in message


def test_path_types_accepted(tmp_path):
    path: Path = tmp_path / "w.json"
    WorldConfig().save(str(path))
    assert WorldConfig.load(path) == WorldConfig()

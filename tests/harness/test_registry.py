import pytest

from harness.errors import UnknownName
from harness.registry import Registry


def test_register_get_and_list():
    things = Registry("thing")

    @things.register("alpha")
    class Alpha:
        pass

    assert things.get("alpha") is Alpha
    assert "alpha" in things and things.names() == ["alpha"]


def test_duplicates_are_rejected():
    things = Registry("thing")
    things.add("alpha", 1)
    with pytest.raises(ValueError, match="registered twice"):
        things.add("alpha", 2)


def test_unknown_name_suggests_close_matches():
    things = Registry("mixer")
    for name in ("kda", "gdn", "mamba2", "mla"):
        things.add(name, name)
    with pytest.raises(UnknownName, match=r"unknown mixer 'mamba'; did you mean: mamba2"):
        things.get("mamba")
    with pytest.raises(UnknownName, match="known: gdn, kda, mamba2, mla"):
        things.get("transformer")

"""chirond/tomltable.py: the one TOML table reader behind the config, [users] and scenarios. Every
error names the file (or not, with on_error), the key path (quoted where TOML quotes, array items
as [i]) and the reason."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NoReturn

import pytest

from chirond.tomltable import REQUIRED, Table, TableError, key_path, read_toml, show


class Boom(ValueError):
    pass


def table(data: Any, valid: tuple[str, ...] | None = None, **kw: Any) -> Table:
    return Table(data, valid, file="f.toml", parts=("root",), error=Boom, **kw)


def message(fn: Any) -> str:
    with pytest.raises(Boom) as e:
        fn()
    return str(e.value)


def test_key_paths_quote_what_toml_quotes_and_index_arrays() -> None:
    assert key_path("models", "llama-3.1-8b", "slo", "ttft_s") == 'models."llama-3.1-8b".slo.ttft_s'
    assert key_path("models", "m", "workload", 2, "kind") == "models.m.workload[2].kind"
    assert key_path("a b", 'x"y') == '"a b"."x\\"y"'


def test_values_are_shown_as_toml_writes_them() -> None:
    assert [show(True), show("x"), show(3), show(0.5), show({}), show([1, "a"]), show([])] == [
        "true", "'x'", "3", "0.5", "a table", "[1, 'a']", "an array"
    ]
    assert show([{"a": 1}]) == "an array" and show(list(range(20))) == "an array"


def test_unknown_keys_list_the_valid_ones() -> None:
    assert message(lambda: table({"tick": 1}, ("tick_s", "policy"))) == (
        "f.toml: root.tick: unknown key (valid: tick_s, policy)"
    )
    assert message(lambda: table({"x": 1}, ())) == "f.toml: root.x: unknown key (valid: none)"
    assert table({"anything": 1}, None).data == {"anything": 1}


def test_a_dotted_name_gets_a_hint_to_quote_it() -> None:
    # [models.llama-3.1-8b] is read as models -> "llama-3" -> "1-8b"
    models = Table({"llama-3": {"1-8b": {"slo": {}}}}, None, file="f.toml", parts=("models",), error=Boom)
    msg = message(lambda: models.sub("llama-3", ("slo",), named=True))
    assert msg == ('f.toml: models.llama-3.1-8b: unknown key (valid: slo); '
                   'a name containing "." must be quoted: [models."llama-3.1-8b"]')


def test_not_a_table() -> None:
    assert message(lambda: table(5)) == "f.toml: root: must be a table, got 5"
    t = table({"sub": [1]})
    assert message(lambda: t.sub("sub", ())) == "f.toml: root.sub: must be a table, got [1]"
    assert message(lambda: t.sub("gone", (), required=True)) == "f.toml: root.gone: required"
    assert t.sub("gone", ()).data == {}


@pytest.mark.parametrize(
    ("call", "data", "expected"),
    [
        (lambda t: t.integer("k", 1, 1, 9), {"k": 0}, "root.k: must be an integer in 1..9, got 0"),
        (lambda t: t.integer("k", 1, 2), {"k": True}, "root.k: must be an integer >= 2, got true"),
        (lambda t: t.integer("k", 0, note="0 = off"), {"k": -1}, "root.k: must be an integer >= 0 (0 = off), got -1"),
        (lambda t: t.positive_integer("k"), {"k": 2.5}, "root.k: must be a positive integer, got 2.5"),
        (lambda t: t.number("k"), {"k": 0}, "root.k: must be a positive number, got 0"),
        (lambda t: t.number("k", sign="non-negative"), {"k": -1}, "root.k: must be a non-negative number, got -1"),
        (lambda t: t.number("k", sign="any"), {"k": "x"}, "root.k: must be a number, got 'x'"),
        (lambda t: t.number("k"), {"k": float("inf")}, "root.k: must be a positive number, got inf"),
        (lambda t: t.number("k"), {}, "root.k: required"),
        (lambda t: t.string("k", "a", ("a", "b")), {"k": "c"}, "root.k: must be one of a, b, got 'c'"),
        (lambda t: t.string("k"), {"k": " "}, "root.k: must be a non-empty string, got ' '"),
        (lambda t: t.optional_string("k"), {"k": 1}, "root.k: must be a string, got 1"),
        (lambda t: t.boolean("k", False), {"k": "yes"}, "root.k: must be true or false, got 'yes'"),
        (lambda t: t.strings("k"), {"k": "a"}, "root.k: must be an array of strings, got 'a'"),
        (lambda t: t.strings("k"), {"k": ["a", 2]}, "root.k[1]: must be a string, got 2"),
        (lambda t: t.item("k", 0, ("a",)), {"k": [{"b": 1}]}, "root.k[0].b: unknown key (valid: a)"),
        (lambda t: t.existing_file("k", "the key file"), {}, "root.k: required: the key file"),
    ],
)
def test_getters_name_the_key_path(call: Any, data: dict[str, Any], expected: str) -> None:
    assert message(lambda: call(table(data))) == f"f.toml: {expected}"


def test_getters_return_values_and_defaults() -> None:
    t = table({"i": 3, "n": 2, "s": "x", "b": False, "l": ["a"]})
    assert (t.integer("i", 0), t.number("n"), t.string("s"), t.boolean("b", True), t.strings("l")) == (
        3, 2.0, "x", False, ("a",)
    )
    assert isinstance(t.number("n"), float)
    assert (t.integer("gone", None), t.number("gone", 1.5), t.strings("gone"), t.optional_string("gone")) == (
        None, 1.5, (), ""
    )
    assert t.get("gone", 7) == 7 and t.get("i", REQUIRED) == 3


def test_files_resolve_from_the_files_directory(tmp_path: Path) -> None:
    (tmp_path / "key").write_text("k")
    t = Table({"k": "key", "gone": "nope"}, None, file=tmp_path / "c.toml", error=Boom)
    assert t.existing_file("k") == (tmp_path / "key").resolve()
    assert t.resolved_path("gone") == (tmp_path / "nope").resolve()
    msg = message(lambda: t.existing_file("gone"))
    assert msg == f"{tmp_path / 'c.toml'}: gone: no such file: {(tmp_path / 'nope').resolve()} " \
                  "(relative paths start at the directory of c.toml)"


def test_on_error_raises_its_own_way_without_the_file() -> None:
    def fail(where: str, reason: str) -> NoReturn:
        raise KeyError(f"{where} | {reason}")

    t = Table({"q": {"a": -1}}, ("q",), parts=("users",), on_error=fail)
    with pytest.raises(KeyError, match=r"users\.q\.a \| must be an integer >= 0"):
        t.sub("q", ("a",)).integer("a", 0)


def test_read_toml_names_the_file(tmp_path: Path) -> None:
    p = tmp_path / "x.toml"
    with pytest.raises(TableError, match=f"^{p}: no such file$"):
        read_toml(p)
    p.write_text("a = \n")
    with pytest.raises(Boom, match=f"^{p}: invalid TOML: "):
        read_toml(p, Boom, invalid="invalid TOML")
    p.write_bytes(b"\xff")
    with pytest.raises(TableError, match=f"^{p}: not UTF-8 text"):
        read_toml(p)
    p.write_text("a = 1\n")
    assert read_toml(p) == {"a": 1}

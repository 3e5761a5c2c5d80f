"""Any value in any field of the config: a Config, or a ConfigError naming the field
(#14). Never another exception (an OverflowError on a rate of .inf, a ValueError on a
malformed IPv6 literal were tracebacks with exit 1 before).

Starts from the config that sets every field (tests/test_config_show.py) and puts a
hostile value at one place in it: each field's own validation is what is exercised.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.config import ConfigError, parse_config
from tests.fuzzing import examples
from tests.test_config_show import ENV, files, full_config  # noqa: F401 - a fixture


def leaves(tree: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value (and to each dict, list) in ``tree``."""
    out = [path]
    if isinstance(tree, dict):
        for key, value in tree.items():
            out += leaves(value, (*path, key))
    elif isinstance(tree, list):
        for i, value in enumerate(tree):
            out += leaves(value, (*path, i))
    return out


PATHS = leaves(full_config())[1:]
HOSTILE = st.one_of(
    st.sampled_from([float("inf"), float("-inf"), float("nan"), 1e308, -1e308, 10**30,
                     -(10**30), 2**63, -1, 0, True, None, "", " ", "\x00", "\r\n",
                     "https://[::1", "https://a b.example", "http://x:99999", "1e400s",
                     "-1s", "9" * 400, "NaNs", "infs", "${HOME}", "é" * 300, [], {}, [[]],
                     {"": None}, ["\x00"], "x" * 100_000]),
    st.text(max_size=30), st.integers(), st.floats(),
    st.lists(st.text(max_size=5), max_size=3),
    st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=2))


def put(tree: Any, path: tuple[Any, ...], value: Any) -> Any:
    out = copy.deepcopy(tree)
    node = out
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return out


@settings(max_examples=examples(600), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(where=st.sampled_from(PATHS), value=HOSTILE)
def test_a_hostile_value_anywhere_is_a_config_or_a_config_error(
        files: Path, where: tuple[Any, ...], value: Any) -> None:  # noqa: F811
    raw = put(full_config(), where, value)
    try:
        parse_config(raw, ENV, base_dir=files)
    except ConfigError as exc:  # anything else fails the test
        # Each problem names a field of the config (under the section that was changed,
        # or one that depends on it: a route names its integration).
        assert exc.problems and all(str(p.field) for p in exc.problems), exc


@pytest.mark.parametrize("where", [("server", "shutdown_grace"),
                                   ("integrations", "payments", "base_url")])
def test_the_leaves_cover_the_fields_that_broke(where: tuple[str, ...]) -> None:
    assert where in PATHS

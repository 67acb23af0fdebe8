"""``qbench.config.check_options``: a component's options checked against its own schema,
one line per problem in config validation's words, located under the options' place."""

from __future__ import annotations

import pytest
from qbench.config import check_options
from qbench.errors import ConfigError

SCHEMA = {
    "type": ["object", "null"],
    "properties": {
        "top_k": {"type": "integer", "minimum": 1},
        "roles": {"type": "array", "items": {"enum": ["weight", "input"]}},
    },
    "additionalProperties": False,
}


@pytest.mark.parametrize("options", [None, {}, {"top_k": 3, "roles": ["input"]}])
def test_good_options_pass(options) -> None:
    check_options(SCHEMA, options, "evaluation.toy")
    check_options(None, {"anything": 1}, "evaluation.toy")  # no schema: nothing to check


def test_every_problem_is_one_line_naming_the_key() -> None:
    with pytest.raises(ConfigError) as info:
        check_options(SCHEMA, {"top_k": 0, "topk": 5, "roles": ["weights"]}, "evaluation.toy")
    assert info.value.problems == [
        "evaluation.toy.roles: found 'weights' (did you mean 'weight'?); allowed: weight, input",
        "evaluation.toy.top_k: found 0; must be >= 1",
        "evaluation.toy: unknown key 'topk' (did you mean 'top_k'?); allowed keys: roles, top_k",
    ]


def test_types_are_strict_as_in_config_files() -> None:
    with pytest.raises(ConfigError, match=r"^evaluation.toy.top_k: found boolean true; expected"):
        check_options(SCHEMA, {"top_k": True}, "evaluation.toy")
    with pytest.raises(ConfigError, match=r"^found list \[1\]; expected object or null$"):
        check_options(SCHEMA, [1], "")

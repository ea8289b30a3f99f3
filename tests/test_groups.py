"""Parameter-group rules: parsing (one-line errors), canonical text, first-match lookups."""

import pytest

from potluck.groups import GroupError, GroupRule, GroupRules, parse_rule

NAMES = ["transformer.wte.weight", "transformer.h.0.attn.c_attn.weight", "transformer.h.0.mlp.c_fc.weight",
         "transformer.h.1.attn.c_attn.weight", "transformer.ln_f.bias"]  # fmt: skip


def test_parse_and_canonical_text():
    rule = parse_rule("transformer.h.*.attn.*:max_rank=8,freeze,strategy=ties,max_density=0.05")
    assert rule == GroupRule("transformer.h.*.attn.*", "ties", True, 0.05, 8)
    assert rule.text() == "transformer.h.*.attn.*:strategy=ties,freeze,max_density=0.05,max_rank=8"
    assert parse_rule(rule.text()) == rule
    assert (
        parse_rule("x:strategy=my.pkg:Merge").strategy == "my.pkg:Merge"
    )  # a spec's colon is the strategy's


@pytest.mark.parametrize(
    ("text", "says"),
    [("freeze", "expected PATTERN:OPTION"), (":freeze", "expected PATTERN:OPTION"), ("a:", "bad option"),
     ("a:thaw", "bad option 'thaw'"), ("a:freeze=1", "bad option"), ("a:max_rank=0", "max_rank"),
     ("a:max_rank=2.5", "max_rank"), ("a:max_density=0", "max_density"), ("a:max_density=nan", "max_density"),
     ("a:freeze,freeze", "given twice"), ("a b:freeze", "whitespace"), ("a:strategy=", "bad option")],
)  # fmt: skip
def test_bad_syntax_is_one_line(text, says):
    with pytest.raises(GroupError, match=says) as info:
        parse_rule(text)
    assert "\n" not in str(info.value)


def test_first_matching_rule_decides():
    rules = GroupRules(["*.h.0.*:freeze", "*.h.*:strategy=ties,max_rank=4", "*.wte.*:max_density=0.1"])
    assert rules.frozen(NAMES) == {"transformer.h.0.attn.c_attn.weight", "transformer.h.0.mlp.c_fc.weight"}
    assert rules.limits(NAMES, "max_rank") == {"transformer.h.1.attn.c_attn.weight": 4}
    assert rules.limits(NAMES, "max_density") == {"transformer.wte.weight": 0.1}
    strategies = rules.strategies(NAMES, "weighted_mean")
    assert strategies["transformer.h.1.attn.c_attn.weight"] == "ties"
    assert strategies["transformer.h.0.mlp.c_fc.weight"] == "weighted_mean"  # its rule names none
    assert rules.split_strategies("weighted_mean") and not rules.split_strategies("ties")
    assert not GroupRules() and not GroupRules(["*:freeze"]).split_strategies("mean")

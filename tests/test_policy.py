"""Rule lookup: the indexed lookup gives what the plain definition gives (the most specific matching pattern, of
equally specific ones the first written), for any patterns and paths."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from envlock.model import Policy, Rule
from envlock.policy import _matches, _specificity, explicit_rule, rule_for

SEGMENT = st.sampled_from(["a", "b", "c", "*", "a*", "*b"])
PATTERN = st.builds(lambda parts, deep: ".".join(parts + (["**"] if deep else [])),
                    st.lists(SEGMENT, min_size=1, max_size=4), st.booleans())
PATH = st.lists(st.sampled_from(["a", "b", "c", "ab", "cb"]), min_size=1, max_size=5).map(".".join)
RULES = st.sampled_from([Rule(rule="exact"), Rule(rule="min"), Rule(rule="ignore"), Rule(rule="exact",
                                                                                        severity="warn")])


def plain_rule(policy: Policy, path: str) -> Rule | None:
    best: tuple[tuple[int, int, int, int], Rule] | None = None
    for pattern, rule in policy.rules.items():
        if _matches(pattern, path):
            score = _specificity(pattern)
            if best is None or score > best[0]:
                best = (score, rule)
    return best[1] if best else None


@settings(max_examples=400)
@given(st.dictionaries(PATTERN, RULES, max_size=8), st.lists(PATH, min_size=1, max_size=10))
def test_the_indexed_lookup_is_the_plain_definition(rules: dict[str, Rule], paths: list[str]) -> None:
    policy = Policy(rules=rules)
    for path in paths:
        assert explicit_rule(policy, path) is plain_rule(policy, path)


def test_the_most_specific_pattern_wins_and_unmatched_paths_are_exact_errors() -> None:
    policy = Policy(rules={"packages.**": Rule(rule="ignore"), "packages.*.version": Rule(rule="min"),
                           "packages.torch.version": Rule(rule="exact", severity="warn")})
    assert rule_for(policy, "packages.torch.version") == Rule(rule="exact", severity="warn")
    assert rule_for(policy, "packages.numpy.version") == Rule(rule="min")
    assert rule_for(policy, "packages.numpy.files") == Rule(rule="ignore")
    assert rule_for(policy, "python.version") == Rule(rule="exact", severity="error")

"""Policies and the automated train -> analyse -> edit -> retrain loop."""

from dataloupe.loop._policy import Policy, RuleSpec, list_policies, load_policy
from dataloupe.loop._loop import LoopResult, run_loop, summary_table
from dataloupe.loop._rules import RuleContext, RuleOutput, get_rule, list_rules, rule
from dataloupe.loop._review import (EXCLUDE, answer_from_oracle, apply_answers, list_strategies, read_oracle,
                                    review_queue)

__all__ = ["EXCLUDE", "answer_from_oracle", "apply_answers", "list_strategies", "read_oracle", "review_queue",
           "LoopResult", "run_loop", "summary_table", "Policy", "RuleContext", "RuleOutput", "RuleSpec", "get_rule", "list_policies",
           "list_rules", "load_policy", "rule"]

"""Policies and the automated train -> analyse -> edit -> retrain loop."""

from dataloupe.loop._policy import Policy, RuleSpec, list_policies, load_policy
from dataloupe.loop._rules import RuleContext, RuleOutput, get_rule, list_rules

__all__ = ["Policy", "RuleContext", "RuleOutput", "RuleSpec", "get_rule", "list_policies",
           "list_rules", "load_policy"]

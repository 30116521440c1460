"""The fleet's service graph (who may reach which service on which host) and what is
generated from it: the tailnet policy (fleet.policy.tailnet) and its offline evaluator
(fleet.policy.evaluate). docs/tailnet-policy.md describes all three."""

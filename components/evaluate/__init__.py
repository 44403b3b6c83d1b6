"""HumanEval evaluation: an isolated execution sandbox, the unbiased pass@k estimator and sample scoring."""

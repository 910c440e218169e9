"""The chain every other /v1 path goes through: limits, budget, usage
and the embeddings cache."""

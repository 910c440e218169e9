"""Understanding messages over the local embedding: the vector index,
the standalone classifier, the pair verifier, routing by example."""

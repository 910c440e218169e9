"""The stage pipeline: core types, registry, and one module per stage."""

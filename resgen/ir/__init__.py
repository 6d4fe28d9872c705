"""The block IR: dtypes, nodes, the builder, the printer and the verifier."""

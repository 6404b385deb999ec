"""Model artifacts: the manifest, the repository on disk or remote, and the pieces of an artifact both
`gateway serve` and `converters/` read (external-data references, named features to tensors, float
parsing)."""

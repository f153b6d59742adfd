"""The API over real HTTP, on both backends: identify, contacts, errors, access, normalization,
the OpenAPI contract and its fuzzing, observability, history and erasure, the reference model."""

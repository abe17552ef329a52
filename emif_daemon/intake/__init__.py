"""Prompts files from queue/ to plans: parse, validate, allocate indices, accept, finish
(docs/architecture.md#the-data-path)."""

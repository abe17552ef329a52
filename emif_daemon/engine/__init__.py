"""The stage runner: worker threads per stage, claims, heartbeats, outcomes and `--once`
(docs/architecture.md#the-engine). Knows stages only through their contract (`stage.py`)."""

"""What a person reads: status, progress, ETAs, reports, metrics, notifications and the
log as lines (docs/architecture.md#what-a-person-sees)."""

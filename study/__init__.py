"""The study service: spec, exactly-once grid scheduling, workers, launcher, export, CLI."""

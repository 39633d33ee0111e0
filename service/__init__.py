"""The prunesearch service: job spec, job runner, CLI (and later REST server, store, scheduler)."""

"""The prunesearch service: job spec, pipeline, REST server and dashboard, job store, runner, scheduler and CLI."""

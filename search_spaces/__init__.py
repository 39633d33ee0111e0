"""What can be pruned and how: models, data, the pruning space of a model, plans and artifacts."""

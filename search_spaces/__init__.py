"""What can be pruned and how: models, data, the pruning space of a model, plans and artifacts."""

from search_spaces import kinds as kinds  # first: it registers the space kinds before anything uses them

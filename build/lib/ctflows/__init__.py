"""The `ctflows` command: the operator's view of the models one installation trains."""

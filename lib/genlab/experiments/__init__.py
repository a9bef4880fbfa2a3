"""Experiments that produce the numbers and figures in the README; each runs as
``python -m genlab.experiments.<name>`` and prints the command's results."""

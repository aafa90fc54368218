"""What a run leaves behind: callbacks, results, the sweep summary, figures, loggers."""

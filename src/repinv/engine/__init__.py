"""How a run is built from config and how it steps: the composition root, the step module and its parts."""

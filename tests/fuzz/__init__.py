"""Coverage-guided fuzzing (atheris) of every parser a peer's bytes reach; see ``targets.py``."""

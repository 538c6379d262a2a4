"""The attacks, each a small class with one `run(view) -> guess` and a stated attacker model."""

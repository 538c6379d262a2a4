"""Attack and defense evaluation: what an honest-but-curious server, aggregator or model user
recovers from a run, and what each defense costs in perplexity and states in epsilon.

Nothing in the product imports this package; `splitfed attack` and the benchmarks use it.
"""

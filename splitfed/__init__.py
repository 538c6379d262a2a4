"""SplitFed: split federated fine-tuning of LLMs with privacy."""

__version__ = "0.1.0"

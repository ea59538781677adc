"""traincheck_rewrite: trace PyTorch training runs by rewriting their source, for TrainCheck."""

__version__ = "0.1.0"

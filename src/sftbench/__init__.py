"""sftbench: ms-swift's fine-tuning benchmark as a pytest regression suite."""

__version__ = "0.1.0"

"""robustode: adversarial robustness seen through ODEs."""

__version__ = "0.1.0"

"""advface: adversarial robustness evaluation of closed-set face identification."""

__version__ = "0.1.0"

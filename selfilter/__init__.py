"""Self-Filter data selection for visual instruction tuning."""
__version__ = "0.1.0"

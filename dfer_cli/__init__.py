"""dfer: dynamic facial expression recognition in video."""
__version__ = "0.1.0"

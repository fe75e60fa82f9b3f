"""dfer's bundled checkpoints (``*.safetensors``) and their model cards, as package data.

Nothing to import: ``dfer_cli.weights.bundled_dir()`` finds this folder.
"""

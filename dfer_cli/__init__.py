"""dfer: dynamic facial expression recognition in video."""
__version__ = "0.2.0"

# Public names served lazily, so `import dfer_cli` (and `dfer --help`) does not import
# torch. Add an entry here to re-export another library function: name -> module.
_LAZY = {
    "create_model": "dfer_cli.models",
    "load_model": "dfer_cli.checkpoint",
    "predict_video": "dfer_cli.predict",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'dfer_cli' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))

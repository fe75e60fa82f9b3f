"""The `dfer` command: flag parsing and output only, one module per command group; the work
is done by the library. Nothing outside this package imports it."""

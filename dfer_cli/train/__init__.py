"""Training: the configuration and recipes (`config`), what a run is built from (`setup`),
batch order (`batches`), the loop (`loop`), the run folder (`run_folder`), the optimiser with
SAM (`optim`), losses and distillation."""

"""Video input: decoding files and live streams into timestamped RGB frames (`decode`, `live`),
finding the videos a command names (`inputs`), and every frame-index and window sampling
scheme (`sampling`)."""

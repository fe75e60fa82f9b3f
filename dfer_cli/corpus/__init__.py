"""Corpus runs: what to do (`plan`), the output folder and its manifests (`store`), the
classifier shared by concurrent videos (`shared`), progress (`progress`), the run itself
(`run`) and its Ray backend (`on_ray`)."""

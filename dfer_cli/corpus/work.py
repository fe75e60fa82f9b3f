"""TODO docstring (corpus.work)."""
from __future__ import annotations

import time
from typing import Callable

from dfer_cli.corpus.store import (
    render_result,
)
from dfer_cli.messages import one_line


def process_video(model, path: str, key: str, fmt: str, opts: dict, predict: Callable | None = None) -> dict:
    """Predict one video and render its result file; never raises for a bad video.

    The file is opened by its resolved path (`key`: a Ray worker's working folder is not the
    driver's) and the records name it as given (`path`). Returns {"status": "ok" | "no face" |
    "failed", "text": result file text or None, "error": one-line reason or None, "seconds"}.
    """
    if predict is None:
        from dfer_cli.predict import predict_video as predict
    t0 = time.perf_counter()
    try:
        result = predict(model, key, **opts)
        result.video = path
        for clip in result.clips:
            clip.video = path
        text = render_result(result, fmt, list(model.classes))
        out = {"status": result.status, "text": text, "error": None}
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as e:  # one bad file must not stop the corpus
        out = {"status": "failed", "text": None, "error": one_line(e, key, path)}
    out["seconds"] = round(time.perf_counter() - t0, 3)
    return out

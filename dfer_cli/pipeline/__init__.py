"""The stages of `predict_video`, each pulling from the one before (generators), so a video
streams through with memory bounded by one window:

    decode    GridDecoder     (grid slot, Frame) for the slots of the sampling grid
    detect    DetectStage     distinct frames, cut marks, detector on its schedule -> FrameBatch
    track     TrackStage      track ids, landmarks interpolated between detections
              CutDetector     (asked by the detect stage: a frame at a cut is detected)
    align     AlignStage      each located face warped onto the model's template
    window    WindowStage     per-track windows -> ClipJob (crops (T, S, S, 3) uint8)
    classify  ClipClassifier  batched forward passes -> probabilities per clip
    emit      ClipEmitter     clips to on_clip in (start, track) order

docs/architecture.md describes what each stage owns.
"""
from dfer_cli.pipeline.align import AlignStage
from dfer_cli.pipeline.classify import ClipClassifier
from dfer_cli.pipeline.decode import GridDecoder
from dfer_cli.pipeline.detect import DetectStage
from dfer_cli.pipeline.emit import ClipEmitter
from dfer_cli.pipeline.frames import AlignedFace, FrameBatch, GridFrame
from dfer_cli.pipeline.track import CutDetector, TrackStage, interpolate_faces
from dfer_cli.pipeline.window import ClipJob, WindowStage, WindowStep

__all__ = ["AlignStage", "AlignedFace", "ClipClassifier", "ClipEmitter", "ClipJob", "CutDetector", "DetectStage",
           "FrameBatch", "GridDecoder", "GridFrame", "TrackStage", "WindowStage", "WindowStep", "interpolate_faces"]

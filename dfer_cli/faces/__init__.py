"""Faces in frames: the MTCNN networks (`mtcnn`), full and key-frame detectors (`detect`,
`keyframe`), alignment onto a template (`align`) and tracking across frames and cuts (`track`)."""

import pytest

# under DFER_CI=1 a skip for any reason but CUDA or root fails the test (tests/ci_skips.py)
from ci_skips import pytest_make_collect_report, pytest_runtest_makereport  # noqa: F401


@pytest.fixture(scope="session")
def ckpt(tmp_path_factory):
    """A tiny checkpoint (1-block LOGO-Former, dim 32, 8 frames of 32 px, dfer's 7 classes,
    random weights from seed 0), saved once per session as ``tiny_face_model.safetensors``:
    the model name the records carry is ``tiny_face_model``."""
    import torch

    from dfer_cli.checkpoint import save_checkpoint
    from dfer_cli.labels import CLASSES
    from dfer_cli.models import create_model
    from dfer_cli.preprocess import Preprocessing

    torch.manual_seed(0)
    model = create_model("logo_former", dim=32, depth=1, heads=2, input_size=32, num_frames=8)
    pre = Preprocessing(input_size=32, num_frames=8)
    path = tmp_path_factory.mktemp("ckpt") / "tiny_face_model.safetensors"
    return save_checkpoint(path, model, classes=CLASSES, preprocessing=pre, provenance={"test": True})


def pytest_collection_modifyitems(config, items):
    """GPU tests (marked `gpu`) are skipped on machines without CUDA."""
    try:
        import torch
        has_cuda = torch.cuda.is_available()
    except Exception:  # pragma: no cover
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)

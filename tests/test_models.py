"""Model registry, shapes, gradients, trunk loading, lazy import, cost counting."""
import json
import subprocess
import sys
import warnings

import pytest
import torch

from dfer_cli.models import available_models, create_model, get_config
from dfer_cli.models.backbone import ResNetTrunk, grid_size, load_backbone_weights
from dfer_cli.models.cost import model_cost

MODELS = ["logo_former", "stt", "joint", "space_only"]  # the transformers
POOL = "trunk_pool"  # the CNN baseline: no attention
TINY = dict(dim=16, heads=2, depth=2, dropout=0.0, drop_path=0.0)


def test_registry_and_paper_defaults():
    assert available_models() == [*MODELS, POOL]
    assert get_config(POOL).block == "pool"
    for name in MODELS:
        c = get_config(name)
        assert (c.num_frames, c.input_size, c.dim, c.depth, c.heads, c.num_classes) == (16, 112, 512, 4, 8, 7)
        assert c.dim * c.mlp_ratio == 2048
    assert [get_config(n).block for n in MODELS] == ["logo", "divided", "joint", "space"]
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        create_model("nope")
    with pytest.raises(TypeError, match="unknown config field"):
        create_model("stt", dimm=3)
    c = get_config("logo_former", window=[1, 2, 3])
    assert c.window == (1, 2, 3)
    assert type(c).from_dict(json.loads(json.dumps(c.to_dict()))) == c


@pytest.mark.parametrize("size,grid", [(112, 7), (64, 4), (48, 3), (32, 2)])
def test_trunk_grid(size, grid):
    trunk = ResNetTrunk().eval()
    with torch.no_grad():
        out = trunk(torch.randn(2, 3, size, size))
    assert out.shape == (2, 256, grid, grid)
    assert grid_size(size) == grid


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("size,frames,T", [(48, 8, 8), (48, 8, 5), (64, 4, 1), (32, 16, 16)])
def test_shapes(name, size, frames, T):
    torch.manual_seed(0)
    model = create_model(name, input_size=size, num_frames=frames, num_classes=5, **TINY).eval()
    x = torch.randn(3, T, 3, size, size)
    with torch.no_grad():
        feats = model.forward_features(x)
        logits = model(x)
    assert feats.shape == (3, 16)
    assert logits.shape == (3, 5)
    torch.testing.assert_close(model.forward_head(feats), logits)
    assert torch.isfinite(logits).all()
    assert model.model_name == name and model.config.input_size == size
    assert isinstance(model.backbone, ResNetTrunk)
    assert model.pos_space.shape[2] == grid_size(size) ** 2 and model.pos_time.shape[1] == frames


def test_paper_config_shapes_and_window():
    model = create_model("logo_former").eval()
    # local in space and time: 2 frames x 4x4 cells of the 7x7 grid (padded to 8x8)
    assert model.config.window == (2, 4, 4) and model.window == (2, 4, 4) and model.grid_hw == (7, 7)
    with torch.no_grad():
        assert model(torch.randn(1, 16, 3, 112, 112)).shape == (1, 7)
    # 48 px: the window is clamped to the 3x3 grid (whole frames); the s1 stem's 6x6 grid keeps it
    assert create_model("logo_former", input_size=48, **TINY).window == (2, 3, 3)
    assert create_model("logo_former", input_size=48, stem="s1", **TINY).window == (2, 4, 4)
    assert get_config("logo_former", input_size=48, num_frames=1).effective_window() == (1, 3, 3)


@pytest.mark.parametrize("name,layers", [*((n, 3) for n in MODELS), (POOL, 3), (POOL, 4)])
def test_every_parameter_gets_a_gradient(name, layers):
    torch.manual_seed(0)
    model = create_model(name, input_size=32, num_frames=4, num_classes=3, window=(2, 1, 2),
                         trunk_layers=layers, **TINY)
    model.train()
    x = torch.randn(2, 4, 3, 32, 32)
    loss = model(x).logsumexp(1).sum() + model(x)[:, 0].sum()
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert missing == []
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_bad_inputs_are_refused():
    model = create_model("stt", input_size=32, num_frames=4, **TINY)
    with pytest.raises(ValueError, match="at most 4"):
        model(torch.randn(1, 5, 3, 32, 32))
    with pytest.raises(ValueError, match="takes 32x32"):
        model(torch.randn(1, 4, 3, 48, 48))
    with pytest.raises(ValueError, match=r"\(B, T, 3, H, W\)"):
        model(torch.randn(4, 3, 32, 32))


@pytest.mark.parametrize("name", ["logo_former", "stt"])
def test_short_clip_uses_the_first_temporal_embeddings(name):
    # a T-frame clip on a num_frames model is embedded with pos_time[:, :T] (the documented
    # choice, no resampling): the same as a T-frame model holding those first T embeddings
    torch.manual_seed(0)
    long = create_model(name, input_size=32, num_frames=6, **TINY).eval()
    short = create_model(name, input_size=32, num_frames=3, **TINY).eval()
    state = long.state_dict()
    state["pos_time"] = state["pos_time"][:, :3]
    short.load_state_dict(state)
    x = torch.randn(2, 3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(long(x), short(x), atol=0, rtol=0)
        f = long.trunk_features(torch.randn(1, 6, 3, 32, 32))
        with pytest.raises(ValueError, match="at most 6"):
            long.forward_tokens(torch.cat([f, f[:, :1]], dim=1))   # 7 frames: refused, not sliced


def test_temporal_order_matters():
    # the temporal position embedding makes every model sensitive to frame order
    torch.manual_seed(0)
    x = torch.randn(1, 4, 3, 32, 32)
    for name in MODELS:
        model = create_model(name, input_size=32, num_frames=4, **TINY).eval()
        with torch.no_grad():
            a, b = model(x), model(x.flip(1))
        assert not torch.allclose(a, b, atol=1e-6), name


def _resnet18_file(tmp_path, wrap=True):
    from torchvision.models import resnet18

    torch.manual_seed(1)
    full = resnet18(weights=None, num_classes=8631).state_dict()
    state = {"module." + k: v for k, v in full.items()}
    path = tmp_path / "resnet18_msceleb.pth.tar"
    torch.save({"epoch": 3, "state_dict": state} if wrap else state, path)
    return path, full


def test_backbone_weights_load_strip_module_and_ignore_fc(tmp_path, caplog):
    path, full = _resnet18_file(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing missing -> no warning
        model = create_model("logo_former", backbone_weights=str(path), input_size=32, **TINY)
    own = model.backbone.state_dict()
    for k in ("conv1.weight", "layer3.1.bn2.running_mean", "layer2.0.downsample.0.weight"):
        assert torch.equal(own[k], full[k])


def test_backbone_weights_report_missing_and_unexpected_in_one_line(tmp_path):
    path, full = _resnet18_file(tmp_path, wrap=False)
    state = torch.load(path, weights_only=True)
    del state["module.layer1.0.conv1.weight"]
    state["module.extra.weight"] = torch.zeros(3)
    torch.save(state, path)
    with pytest.warns(UserWarning) as rec:
        report = load_backbone_weights(ResNetTrunk(), path)
    msg = str(rec[0].message)
    assert "\n" not in msg and "missing 1 (layer1.0.conv1.weight)" in msg and "unexpected 1 (extra.weight)" in msg
    assert report["missing"] == ["layer1.0.conv1.weight"] and report["unexpected"] == ["extra.weight"]


def test_backbone_weights_unreadable_file(tmp_path):
    bad = tmp_path / "broken.pth"
    bad.write_bytes(b"not a torch file at all")
    with pytest.raises(ValueError, match=r"broken\.pth: cannot read backbone weights") as e:
        load_backbone_weights(ResNetTrunk(), bad)
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="not found"):
        load_backbone_weights(ResNetTrunk(), tmp_path / "absent.pth")


def test_import_dfer_cli_does_not_import_torch():
    code = ("import sys, dfer_cli; assert 'torch' not in sys.modules; "
            "f = dfer_cli.create_model; assert 'torch' in sys.modules; "
            "from dfer_cli.checkpoint import load_model; assert dfer_cli.load_model is load_model")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cost_growth_joint_quadratic_logo_near_linear():
    small = dict(input_size=112, dim=64, heads=2, depth=1)
    mix = {n: [model_cost(n, t, **small)["mixing_gflops"] for t in (8, 32)] for n in ("joint", "logo_former")}
    assert mix["joint"][1] / mix["joint"][0] == pytest.approx(16, rel=0.05)   # 4x frames -> 16x
    # LOGO: local step linear, global step quadratic with one key per 32-slot window
    assert mix["logo_former"][1] / mix["logo_former"][0] < 8                  # 4x frames -> < 8x
    assert mix["logo_former"][1] < mix["joint"][1] / 8
    cost = model_cost("logo_former", 16)
    assert cost["params"] == sum(p.numel() for p in create_model("logo_former").parameters())
    assert cost["backbone_gflops"] < cost["gflops"]
    assert cost["attention_gflops"] > cost["mixing_gflops"] > 0


def test_models_command_json():
    from typer.testing import CliRunner

    from dfer_cli.cli.main import app

    result = CliRunner().invoke(app, ["models", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert [m["model"] for m in data["models"]] == [*MODELS, POOL]
    for m in data["models"]:
        assert [g["num_frames"] for g in m["growth"]] == [8, 16, 32, 64]
        if m["model"] == POOL:  # the trunk and a linear classifier: no attention at all
            assert m["attention_gflops"] == 0 and m["gflops"] > 0
            continue
        assert m["params"] > 1e7 and m["gflops"] > m["attention_gflops"] > 0
    # the window actually used (after clamping to the grid), LOGO only
    assert [m["window"] for m in data["models"]] == [[2, 4, 4], None, None, None, None]
    table = CliRunner().invoke(app, ["models"])
    assert table.exit_code == 0 and "window used: 2x4x4" in table.output, table.output


def test_trunk_is_torchvision_resnet18_to_layer3():
    # dfer builds its own ResNet-18 (torchvision's import pulls in torch._dynamo); its keys
    # and arithmetic must be torchvision's so that ResNet-18 state dicts load and mean the same
    from torchvision.models import resnet18

    torch.manual_seed(0)
    ref = resnet18(weights=None).eval()
    trunk = ResNetTrunk().eval()
    want = {k: v for k, v in ref.state_dict().items() if not k.startswith(("layer4.", "fc."))}
    assert list(trunk.state_dict()) == list(want)
    trunk.load_state_dict(want)
    x = torch.randn(2, 3, 80, 80)
    with torch.no_grad():
        r = ref.layer3(ref.layer2(ref.layer1(ref.maxpool(ref.relu(ref.bn1(ref.conv1(x)))))))
        assert torch.allclose(trunk(x), r, atol=1e-5)
        assert trunk(x).shape == (2, 256, 5, 5)
    # the same initialisation scheme: conv weights Kaiming-normal with fan_out
    w = ResNetTrunk().layer3[0].conv1.weight
    assert abs(float(w.detach().std()) - (2.0 / (256 * 9)) ** 0.5) < 0.002


def test_trunk_with_layer4_is_torchvision_resnet18_without_fc():
    # trunk_layers=4 (the CNN member): every torchvision key but the classifier, same maps
    from torchvision.models import resnet18

    torch.manual_seed(0)
    ref = resnet18(weights=None).eval()
    trunk = ResNetTrunk(layers=4).eval()
    want = {k: v for k, v in ref.state_dict().items() if not k.startswith("fc.")}
    assert list(trunk.state_dict()) == list(want)
    trunk.load_state_dict(want)
    x = torch.randn(2, 3, 80, 80)
    with torch.no_grad():
        r = ref.maxpool(ref.relu(ref.bn1(ref.conv1(x))))
        r = ref.layer4(ref.layer3(ref.layer2(ref.layer1(r))))
        assert trunk(x).shape == (2, 512, 3, 3) and torch.allclose(trunk(x), r, atol=1e-5)
    assert trunk.out_channels == 512 and ResNetTrunk().out_channels == 256
    assert grid_size(80, layers=4) == 3 and grid_size(48, "s1", 4) == 3 and grid_size(64, "s1", 4) == 4
    with pytest.raises(ValueError, match="trunk layers must be one of 3, 4"):
        ResNetTrunk(layers=5)
    with pytest.raises(ValueError, match="trunk_layers must be one of 3, 4"):
        get_config(POOL, trunk_layers=2)


def test_backbone_weights_load_layer4_when_the_trunk_has_it(tmp_path):
    path, full = _resnet18_file(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing missing -> no warning
        report = load_backbone_weights(ResNetTrunk(layers=4), path)
    assert "layer4.1.conv2.weight" in report["loaded"] and report["missing"] == []
    assert not any(k.startswith("layer4.") for k in load_backbone_weights(ResNetTrunk(), path)["loaded"])


def test_trunk_pool_with_layer4_classifies_from_the_512_channel_maps():
    torch.manual_seed(0)
    model = create_model(POOL, input_size=48, num_frames=2, num_classes=4, dim=16, stem="s1", trunk_layers=4).eval()
    assert model.grid_hw == (3, 3) and model.proj.in_channels == 512
    x = torch.randn(2, 2, 3, 48, 48)
    with torch.no_grad():
        maps = model.backbone(x.flatten(0, 1))                                   # (4, 512, 3, 3)
        assert maps.shape == (4, 512, 3, 3)
        pooled = maps.reshape(2, 2, 512, 9).mean(dim=(1, 3))                     # (2, 512)
        expected = model.head(model.norm(pooled @ model.proj.weight[:, :, 0, 0].T + model.proj.bias))
        torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-5)
    cost = model_cost(POOL, input_size=48, stem="s1", trunk_layers=4, dim=512)
    assert cost["params"] > 11e6 and cost["backbone_gflops"] > model_cost(POOL, input_size=48, stem="s1", dim=512)["backbone_gflops"]


@pytest.mark.parametrize("stem,layers", [("standard", 3), ("s1", 3), ("s1", 4)])
def test_folded_trunk_gives_the_eval_maps(stem, layers):
    from dfer_cli.models.backbone import fold_batchnorm

    torch.manual_seed(0)
    trunk = ResNetTrunk(stem, layers)
    for m in trunk.modules():  # trained-looking statistics, so that folding has work to do
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    trunk.eval()
    x = torch.randn(3, 3, 48, 48)
    # the reference: each conv, then BatchNorm's eval formula written out, block by block
    def bn(y, m):
        return (y - m.running_mean.view(1, -1, 1, 1)) / torch.sqrt(m.running_var.view(1, -1, 1, 1) + m.eps) \
            * m.weight.view(1, -1, 1, 1) + m.bias.view(1, -1, 1, 1)

    def block(y, b):
        short = y if b.downsample is None else bn(b.downsample[0](y), b.downsample[1])
        z = torch.relu(bn(b.conv1(y), b.bn1))
        return torch.relu(bn(b.conv2(z), b.bn2) + short)

    with torch.no_grad():
        ref = trunk.maxpool(torch.relu(bn(trunk.conv1(x), trunk.bn1)))
        for layer in (trunk.layer1, trunk.layer2, trunk.layer3, *([trunk.layer4] if layers == 4 else [])):
            for b in layer:
                ref = block(ref, b)
        before = trunk(x)
        folded = fold_batchnorm(trunk)
        got = folded(x)
    assert torch.allclose(before, ref, atol=1e-4, rtol=1e-4)
    assert got.shape == ref.shape and torch.allclose(got, ref, atol=1e-4, rtol=1e-4)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert folded.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert isinstance(trunk.bn1, torch.nn.BatchNorm2d) and torch.equal(trunk(x), before)  # original untouched


def test_folding_for_inference_is_an_explicit_step_with_the_eval_outputs():
    from dfer_cli.models.folding import fold_for_inference, inference_copy

    model = create_model("logo_former", input_size=48, num_frames=4)
    for m in model.backbone.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_var.fill_(3.0)
            m.running_mean.fill_(0.2)
    model.eval()
    x = torch.randn(2, 4, 3, 48, 48)
    with torch.inference_mode():
        want = model(x)
        assert not model.folded and model.backbone.layer1[0].bn1.__class__ is torch.nn.BatchNorm2d  # no hidden switch
    folded = inference_copy(model)
    assert folded is not model and not model.folded and folded.folded          # the caller's model is left alone
    assert inference_copy(folded) is folded
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.backbone.modules())
    assert not any(p.requires_grad for p in folded.parameters())
    with torch.inference_mode():
        assert torch.allclose(folded(x), want, atol=1e-4, rtol=1e-4)
    with pytest.raises(RuntimeError, match="folded for inference"):
        folded.train()
    assert fold_for_inference(model) is model and model.folded                 # in place when asked


def test_weights_changed_after_folding_change_the_outputs_nothing_is_cached():
    from dfer_cli.models.folding import fold_for_inference

    model = fold_for_inference(create_model("logo_former", input_size=48, num_frames=4))
    x = torch.randn(1, 4, 3, 48, 48)
    with torch.inference_mode():
        before = model(x).clone()
    conv = model.backbone.layer1[0].conv1
    conv.weight.data.mul_(0.0)                       # edited through .data, as weight averaging does
    with torch.inference_mode():
        after = model(x)
        assert not torch.allclose(after, before, atol=1e-4)
        assert torch.equal(after, model.forward_head(model.forward_tokens(model.backbone(x[0])[None])))


def test_a_checkpoint_loaded_for_inference_is_folded_once_and_used_as_it_is(tmp_path):
    from dfer_cli.checkpoint import load_model, save_checkpoint
    from dfer_cli.models.folding import inference_copy
    from dfer_cli.preprocess import Preprocessing

    path = save_checkpoint(tmp_path / "m.safetensors", create_model("logo_former", input_size=48, num_frames=4),
                           classes=[str(i) for i in range(7)], preprocessing=Preprocessing(input_size=48, num_frames=4))
    plain, ready = load_model(path), load_model(path, for_inference=True)
    assert not plain.folded and ready.folded
    assert inference_copy(ready) is ready                   # predict_video makes no copy of it
    x = torch.randn(1, 4, 3, 48, 48)
    with torch.inference_mode():
        assert torch.allclose(ready(x), plain(x), atol=1e-4, rtol=1e-4)


def test_a_folded_model_cannot_be_saved(tmp_path):
    from dfer_cli.checkpoint import save_checkpoint
    from dfer_cli.models.folding import fold_for_inference
    from dfer_cli.preprocess import Preprocessing

    model = fold_for_inference(create_model("logo_former", input_size=48, num_frames=4))
    with pytest.raises(ValueError, match="folded for inference"):
        save_checkpoint(tmp_path / "m.safetensors", model, classes=[str(i) for i in range(7)],
                        preprocessing=Preprocessing(input_size=48, num_frames=4))
    assert not (tmp_path / "m.safetensors").exists()


def test_trunk_pool_is_the_mean_of_the_projected_trunk_maps():
    # reference written out: per frame trunk -> 1x1 conv; mean over frames and grid cells;
    # LayerNorm; linear classifier
    torch.manual_seed(0)
    model = create_model(POOL, input_size=32, num_frames=3, num_classes=4, dim=16).eval()
    x = torch.randn(2, 3, 3, 32, 32)
    with torch.no_grad():
        maps = model.backbone(x.flatten(0, 1))                                  # (6, 256, 2, 2)
        proj = torch.nn.functional.conv2d(maps, model.proj.weight, model.proj.bias)  # (6, 16, 2, 2)
        pooled = proj.reshape(2, 3, 16, 4).mean(dim=(1, 3))                     # (2, 16)
        mu = pooled.mean(-1, keepdim=True)
        var = pooled.var(-1, unbiased=False, keepdim=True)
        normed = (pooled - mu) / torch.sqrt(var + model.norm.eps) * model.norm.weight + model.norm.bias
        expected = normed @ model.head.weight.T + model.head.bias
        torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-5)
        # frame order cannot matter to a mean; a transformer's output depends on it
        torch.testing.assert_close(model(x.flip(1)), expected, rtol=1e-4, atol=1e-5)
    assert not hasattr(model, "pos_space") and len(model.blocks) == 0


def test_a_trunk_pool_run_initialises_a_transformer_trunk(tmp_path):
    # trunk pre-training: the pooled CNN's checkpoint is a --backbone-weights file for LOGO-Former
    from dfer_cli.checkpoint import load_model, save_checkpoint
    from dfer_cli.labels import CLASSES
    from dfer_cli.preprocess import Preprocessing

    torch.manual_seed(0)
    cnn = create_model(POOL, input_size=32, num_frames=1, dim=16).eval()
    path = save_checkpoint(tmp_path / "cnn.safetensors", cnn, classes=CLASSES,
                           preprocessing=Preprocessing(input_size=32, num_frames=1, grayscale=True))
    loaded = load_model(path)
    x = torch.randn(2, 1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), cnn(x))
    former = create_model("logo_former", input_size=32, num_frames=4, backbone_weights=str(path), **TINY)
    for key, value in cnn.backbone.state_dict().items():
        assert torch.equal(former.backbone.state_dict()[key], value), key


def _trunk_param_count(width: int, stem: str, layers: int) -> int:
    """ResNet-18's trunk parameters written out from its layer list (no bias in convs, two per
    BatchNorm channel), for a first stage of ``width`` channels."""
    def conv(ci, co, k):
        return ci * co * k * k

    def bn(c):
        return 2 * c

    def block(ci, co, stride):
        n = conv(ci, co, 3) + bn(co) + conv(co, co, 3) + bn(co)
        return n + (conv(ci, co, 1) + bn(co) if stride != 1 or ci != co else 0)

    n = conv(3, width, 3 if stem == "s1" else 7) + bn(width)
    chans = [width, 2 * width, 4 * width, 8 * width][:layers]
    c_in = width
    for i, c in enumerate(chans):
        n += block(c_in, c, 1 if i == 0 else 2) + block(c, c, 1)
        c_in = c
    return n


@pytest.mark.parametrize("width,stem,layers", [(64, "standard", 3), (64, "s1", 4), (32, "s1", 4), (16, "standard", 3)])
def test_trunk_width_sets_every_stage(width, stem, layers):
    trunk = ResNetTrunk(stem, layers, width).eval()
    assert sum(p.numel() for p in trunk.parameters()) == _trunk_param_count(width, stem, layers)
    assert trunk.out_channels == (4 if layers == 3 else 8) * width
    with torch.no_grad():
        out = trunk(torch.randn(2, 3, 48, 48))
    assert out.shape == (2, trunk.out_channels, grid_size(48, stem, layers), grid_size(48, stem, layers))


def test_trunk_width_reaches_the_model_and_its_checkpoint(tmp_path):
    from dfer_cli.checkpoint import load_model, save_checkpoint
    from dfer_cli.labels import CLASSES
    from dfer_cli.preprocess import Preprocessing
    from dfer_cli.train.config import parse_model_opts

    assert parse_model_opts(["trunk_width=32"], POOL) == {"trunk_width": 32}
    assert get_config(POOL).trunk_width == 64  # ResNet-18's own width unless asked
    torch.manual_seed(0)
    model = create_model(POOL, input_size=48, num_frames=1, dim=16, stem="s1", trunk_layers=4, trunk_width=32).eval()
    assert model.backbone.layer4[1].conv2.weight.shape == (256, 256, 3, 3) and model.proj.in_channels == 256
    path = save_checkpoint(tmp_path / "w32.safetensors", model, classes=CLASSES,
                           preprocessing=Preprocessing(input_size=48, num_frames=1, grayscale=True), provenance={})
    back = load_model(str(path))
    assert back.config.trunk_width == 32
    x = torch.randn(2, 1, 3, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(back(x), model(x))
    # a narrower trunk costs less: 2.56 of ResNet-18's 10.09 GFLOPs per 16 frames at 48 px (s1, layer4)
    narrow = model_cost(POOL, input_size=48, stem="s1", trunk_layers=4, trunk_width=32, dim=512)
    full = model_cost(POOL, input_size=48, stem="s1", trunk_layers=4, dim=512)
    assert 0.2 < narrow["backbone_gflops"] / full["backbone_gflops"] < 0.3


def test_bad_trunk_width_is_refused(tmp_path):
    for bad in (0, 12, 64.0, True):
        with pytest.raises(ValueError, match="trunk width must be a multiple of 8"):
            get_config(POOL, trunk_width=bad)
    path, _ = _resnet18_file(tmp_path)
    with pytest.raises(ValueError, match="fit a trunk of width 64, not 32; drop --backbone-weights"):
        create_model(POOL, input_size=32, num_frames=1, dim=16, trunk_width=32, backbone_weights=str(path))


def test_a_backbone_file_pickled_with_another_protocol_is_refused_by_dfer_alone(tmp_path):
    # torch warns about a pickle protocol other than its own under weights_only=True, a warning
    # a user cannot act on: dfer's one-line refusal is all they see
    import warnings

    from dfer_cli.models.backbone import ResNetTrunk, load_backbone_weights

    path = tmp_path / "msceleb.pth"
    torch.save(ResNetTrunk().state_dict(), path, pickle_protocol=4)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with pytest.raises(ValueError, match="cannot read backbone weights"):
            load_backbone_weights(ResNetTrunk(), path)
    assert not [w for w in seen if "pickle protocol" in str(w.message)]

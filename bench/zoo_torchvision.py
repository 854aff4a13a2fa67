"""The zoo against torchvision's own model definitions: do torchvision checkpoints load, and do they
compute the same function?

    pip download --no-deps torchvision -d /tmp/tv && unzip -q /tmp/tv/torchvision-*.whl -d /tmp/tv/site
    python bench/zoo_torchvision.py --torchvision /tmp/tv/site --out bench/results/zoo_torchvision.json

Users load torchvision checkpoints with ``--weights`` (docs/zoo.md), and a network that loads but
computes something else loses accuracy silently. For every zoo name that torchvision also builds,
this script:

1. builds torchvision's network as torchvision builds it for its published weights (GoogLeNet and
   Inception-v3 with ``transform_input=True`` and their auxiliary heads), seeds it, and randomises
   every BatchNorm's statistics and affine so that an eps or an ordering difference shows;
2. saves its state dict and loads it through edgekit's own ``--weights`` path
   (:func:`edgekit.models.create_model`);
3. compares keys, and both networks' outputs on two random inputs (max |difference|, top-1).

torchvision is not an edgekit dependency and its wheels do not match the CPU torch pinned here:
its compiled operators (``torchvision::nms``...) fail to register. Only the model definitions are
needed, so ``--torchvision DIR`` points at an unpacked wheel and the module that registers those
operators' meta kernels is replaced by an empty one. Writes JSON; exits 1 when a network differs.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

TOLERANCE = 1e-4   # max |difference| relative to the output's max |value|: float summation order only


def import_torchvision(site: str | None):
    if site:
        sys.path.insert(0, site)
    # the wheel's compiled ops are built against another torch; the model definitions do not need them
    sys.modules.setdefault("torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations"))
    from torchvision import models

    return models


def randomised(tvm, name: str) -> torch.nn.Module:
    kwargs = {"aux_logits": True, "init_weights": False, "transform_input": True} \
        if name in ("googlenet", "inception_v3") else {}
    torch.manual_seed(0)
    net = getattr(tvm, name)(**kwargs).eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return net


def compare(tvm, name: str, work: Path) -> dict:
    from edgekit.models import create_model

    theirs = randomised(tvm, name)
    sd = theirs.state_dict()
    path = work / f"{name}.pth"
    torch.save(sd, path)
    try:
        ours = create_model(name, weights=path)
    except Exception as exc:  # noqa: BLE001 - the row records the failure
        return {"model": name, "ok": False, "error": f"{type(exc).__name__}: {exc}"}
    own = ours.state_dict()
    size = 299 if name == "inception_v3" else 224
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = theirs(x), ours(x)
    b = b[0] if isinstance(b, (tuple, list)) else b
    diff = (a - b).abs().max().item()
    scale = a.abs().max().item()
    row = {"model": name, "keys_only_in_torchvision": sorted(set(sd) - set(own)),
           "keys_only_in_edgekit": sorted(set(own) - set(sd)), "max_abs_diff": diff, "output_max_abs": scale,
           "top1_agree": (a.argmax(1) == b.argmax(1)).float().mean().item()}
    row["ok"] = not row["keys_only_in_torchvision"] and diff <= TOLERANCE * max(scale, 1e-12)
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="*", help="zoo names (default: every name torchvision builds too)")
    ap.add_argument("--torchvision", help="an unpacked torchvision wheel (its site folder)")
    ap.add_argument("--out", default="bench/results/zoo_torchvision.json")
    args = ap.parse_args(argv)
    from edgekit.models import list_models

    tvm = import_torchvision(args.torchvision)
    names = args.models or [n for n in list_models() if hasattr(tvm, n)]
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgekit-zoo-tv-") as work:
        for name in names:
            row = compare(tvm, name, Path(work))
            rows.append(row)
            print(f"{name:20s} {'ok  ' if row['ok'] else 'DIFF'} "
                  + (row["error"] if "error" in row else
                     f"max|diff| {row['max_abs_diff']:.2e} of {row['output_max_abs']:.3g}, "
                     f"keys only in torchvision {len(row['keys_only_in_torchvision'])}, "
                     f"only in edgekit {len(row['keys_only_in_edgekit'])}"), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    import torchvision

    out.write_text(json.dumps({"torchvision": torchvision.__version__, "torch": torch.__version__,
                               "tolerance": TOLERANCE, "rows": rows}, indent=1))
    print(f"wrote {out}")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

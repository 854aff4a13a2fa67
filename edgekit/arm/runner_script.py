"""The one piece of edgekit that runs inside the aarch64 userland (copied to /opt/edgekit/run.py).

Standalone on purpose: it imports only the standard library, NumPy and the runtime named in
the job, never edgekit. Usage: ``python run.py JOBDIR``. JOBDIR holds ``job.json``::

    {"runtime": "onnxruntime" | "ncnn", "threads": 1, "inputs": [names],
     "feeds": N, "models": [{"key": "m0", "path": "m0.onnx", "precision": "int8",
                             "output_shapes": [[1, 1000]]}]}

and ``feeds/{i:04d}_{j}.npy`` (feed i, input j). It writes ``out/{key}/{i:04d}_{k}.npy`` and
``result.json``: the CPU features the kernel reports (AT_HWCAP/AT_HWCAP2, the bits the runtimes
read to choose kernels), the runtime's version, and each model's output names and run time.
"""
import ctypes
import json
import os
import platform
import sys
import time

import numpy as np

AT_HWCAP, AT_HWCAP2 = 16, 26
# arch/arm64/include/uapi/asm/hwcap.h
HWCAP = {"fp": 0, "asimd": 1, "aes": 3, "pmull": 4, "sha1": 5, "sha2": 6, "crc32": 7, "atomics": 8, "fphp": 9,
         "asimdhp": 10, "asimdrdm": 12, "jscvt": 13, "fcma": 14, "lrcpc": 15, "dcpop": 16, "sha3": 17, "sm3": 18,
         "sm4": 19, "asimddp": 20, "sha512": 21, "sve": 22, "asimdfhm": 23, "dit": 24, "uscat": 25, "ilrcpc": 26,
         "flagm": 27, "ssbs": 28, "sb": 29, "paca": 30, "pacg": 31}
HWCAP2 = {"dcpodp": 0, "sve2": 1, "sveaes": 2, "svepmull": 3, "svebitperm": 4, "svesha3": 5, "svesm4": 6,
          "flagm2": 7, "frint": 8, "svei8mm": 9, "svef32mm": 10, "svef64mm": 11, "svebf16": 12, "i8mm": 13,
          "bf16": 14, "dgh": 15, "rng": 16, "bti": 17, "mte": 18}


def cpu_features():
    try:
        libc = ctypes.CDLL(None)
        libc.getauxval.restype = ctypes.c_ulong
        h1, h2 = libc.getauxval(AT_HWCAP), libc.getauxval(AT_HWCAP2)
    except (OSError, AttributeError):
        return []
    return [n for n, b in HWCAP.items() if h1 >> b & 1] + [n for n, b in HWCAP2.items() if h2 >> b & 1]


def kernels(runtime, feats):
    """Which INT8/FP16 kernel family the runtime's own dispatch picks for these features."""
    f = set(feats)
    if runtime == "onnxruntime":  # MLAS platform dispatch: NEON, then UDOT/SDOT, then UMMLA/SMMLA
        q = "UMMLA/SMMLA (i8mm)" if "i8mm" in f else "UDOT/SDOT (dot-product)" if "asimddp" in f else \
            "NEON widening multiply-add (no dot-product)"
        return f"MLAS INT8 GEMM/conv: {q}; FP16 vector: {'yes' if 'asimdhp' in f else 'no'}"
    if runtime == "ncnn":
        q = "i8mm" if "i8mm" in f else "asimddp" if "asimddp" in f else "plain NEON"
        return f"ncnn INT8 kernels: {q}; fp16 arithmetic available: {'yes' if 'asimdhp' in f else 'no'}"
    return ""


def load_feeds(job, folder):
    return [[np.load(os.path.join(folder, "feeds", f"{i:04d}_{j}.npy")) for j in range(len(job["inputs"]))]
            for i in range(job["feeds"])]


def run_onnxruntime(job, model, feeds):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = job.get("threads") or 1
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(model["path"], so, providers=["CPUExecutionProvider"])
    types = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(uint8)": np.uint8,
             "tensor(int8)": np.int8, "tensor(int64)": np.int64, "tensor(int32)": np.int32}
    ins = sess.get_inputs()
    names = [o.name for o in sess.get_outputs()]
    outs = []
    for arrays in feeds:
        feed = {i.name: np.asarray(a, dtype=types.get(i.type, np.float32)) for i, a in zip(ins, arrays)}
        outs.append([np.asarray(o, dtype=np.float32) for o in sess.run(names, feed)])
    return names, outs, ort.__version__


def run_ncnn(job, model, feeds):
    import ncnn

    files = sorted(os.listdir(model["path"]))
    param = [f for f in files if f.endswith(".ncnn.param")][0]
    weights = [f for f in files if f.endswith(".ncnn.bin")][0]
    net = ncnn.Net()
    fp16 = model.get("precision") == "fp16"  # ncnn's defaults are FP16: plain FP32 unless asked
    net.opt.use_fp16_storage = net.opt.use_fp16_packed = net.opt.use_fp16_arithmetic = fp16
    net.opt.use_bf16_storage = False
    net.opt.use_vulkan_compute = False
    net.opt.num_threads = job.get("threads") or 1
    if net.load_param(os.path.join(model["path"], param)) != 0 or \
            net.load_model(os.path.join(model["path"], weights)) != 0:
        raise SystemExit(f"ncnn cannot load {model['path']}")
    in_blobs, out_blobs = list(net.input_names()), list(net.output_names())
    shapes = model.get("output_shapes") or []
    outs = []
    for arrays in feeds:
        per_row = []
        for r in range(arrays[0].shape[0]):
            ex = net.create_extractor()
            keep = []
            for blob, a in zip(in_blobs, arrays):
                row = np.ascontiguousarray(a[r], dtype=np.float32)
                mat = ncnn.Mat(row)
                keep.append((row, mat))
                ex.input(blob, mat)
            res = []
            for blob in out_blobs:
                ret, mat = ex.extract(blob)
                if ret != 0:
                    raise SystemExit(f"ncnn extract('{blob}') failed with code {ret}")
                res.append(np.array(mat, dtype=np.float32, copy=True))
            per_row.append(res)
            del keep
        stacked = []
        for k in range(len(out_blobs)):
            rows = [row[k] for row in per_row]
            if k < len(shapes):
                rows = [x.reshape(shapes[k][1:]) for x in rows]
            stacked.append(np.stack(rows))
        outs.append(stacked)
    return out_blobs, outs, getattr(ncnn, "__version__", "?")


RUNNERS = {"onnxruntime": run_onnxruntime, "ncnn": run_ncnn}


def main(folder):
    with open(os.path.join(folder, "job.json")) as fh:
        job = json.load(fh)
    feats = cpu_features()
    result = {"machine": platform.machine(), "python": platform.python_version(),
              "qemu_cpu": os.environ.get("QEMU_CPU", "(qemu default)"), "features": feats,
              "kernels": kernels(job["runtime"], feats), "models": {}}
    feeds = load_feeds(job, folder)
    for model in job["models"]:
        model = dict(model, path=os.path.join(folder, model["path"]))
        t0 = time.perf_counter()
        names, outs, version = RUNNERS[job["runtime"]](job, model, feeds)
        result["runtime_version"] = version
        out_dir = os.path.join(folder, "out", model["key"])
        os.makedirs(out_dir, exist_ok=True)
        for i, arrays in enumerate(outs):
            for k, a in enumerate(arrays):
                np.save(os.path.join(out_dir, f"{i:04d}_{k}.npy"), a)
        result["models"][model["key"]] = {"outputs": names, "seconds": round(time.perf_counter() - t0, 2)}
    with open(os.path.join(folder, "result.json"), "w") as fh:
        json.dump(result, fh, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])

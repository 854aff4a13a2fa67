"""Each MIL op the interpreter executes, against PyTorch, on small random tensors.

The programs are written with coremltools' MIL builder, saved as real ``.mlpackage``
folders (weights in ``weight.bin``) and executed by :mod:`exporters.coreml.mil` — so every
case checks the op's serialized form as well as its arithmetic. One FP32 program holds
the iOS17 cases, one the iOS18 weight-compression op, and the same cases are run again
with every op computing in FP16 (coremltools' ``add_fp16_cast`` pass).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

ct = pytest.importorskip("coremltools", reason="the Core ML target needs coremltools (pip install 'edgekit[coreml]')")

from exporters.coreml.mil import Interpreter, MilError, supported_ops  # noqa: E402
from exporters.coreml.mil.program import Op, Program, Var  # noqa: E402

pytestmark = pytest.mark.coreml

RNG = np.random.default_rng(7)
X = RNG.standard_normal((1, 6, 9, 9)).astype(np.float32)
Y = RNG.standard_normal((1, 6, 9, 9)).astype(np.float32)
P = (np.abs(RNG.standard_normal((1, 6, 9, 9))) + 0.1).astype(np.float32)
V = RNG.standard_normal((2, 5, 12)).astype(np.float32)
FEEDS = {"x": X, "y": Y, "p": P, "v": V}


def w(*shape, scale=0.3):
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


W1, B1 = w(8, 6, 3, 3), w(8)
WD, WG, W5, W4, WM, WA = w(6, 1, 3, 3), w(9, 2, 1, 1), w(4, 6, 5, 5), w(4, 6, 4, 4), w(12, 1, 3, 3), w(5, 6, 2, 3)
BN = [w(6), np.abs(w(6)) + 0.5, w(6), w(6)]  # mean, variance, gamma, beta
ALPHA, WL, BL, CH = np.abs(w(6)), w(7, 12), w(7), w(1, 6, 1, 1)
QW = RNG.integers(-127, 128, size=(8, 6, 3, 3)).astype(np.int8)
QZ = RNG.integers(-3, 4, size=(8,)).astype(np.int8)
QS = (np.abs(w(8)) * 0.05 + 0.01).astype(np.float32)
QSCALE = (np.abs(w(6)) * 0.05 + 0.01).astype(np.float32)
BS = (np.abs(w(8, 2, 1, 1)) * 0.05 + 0.01).astype(np.float32)   # blockwise: 2 blocks of 3 input channels
BO = RNG.integers(-3, 4, size=(8, 2, 1, 1)).astype(np.int8)


def t(a):
    return torch.from_numpy(np.asarray(a))


def deq_weight():
    return t(QS.reshape(8, 1, 1, 1) * (QW.astype(np.float32) - QZ.astype(np.float32).reshape(8, 1, 1, 1)))


def block_weight():
    scale = np.repeat(BS, 3, axis=1)
    offset = np.repeat(BO, 3, axis=1).astype(np.float32)
    return t(scale * (QW.astype(np.float32) - offset))


# name -> (MIL builder fn(mb, x, y, p, v), torch fn(x, y, p, v)); outputs in this order
CASES = {
    "conv_3x3_s2_pad_bias": (lambda mb, x, y, p, v: mb.conv(x=x, weight=W1, bias=B1, strides=[2, 2], pad_type="custom",
                                                            pad=[1, 1, 1, 1]),
                             lambda x, y, p, v: F.conv2d(x, t(W1), t(B1), 2, 1)),
    "conv_depthwise_dilated": (lambda mb, x, y, p, v: mb.conv(x=x, weight=WD, groups=6, dilations=[2, 2],
                                                              pad_type="custom", pad=[2, 2, 2, 2]),
                               lambda x, y, p, v: F.conv2d(x, t(WD), None, 1, 2, 2, 6)),
    "conv_grouped_1x1": (lambda mb, x, y, p, v: mb.conv(x=x, weight=WG, groups=3, pad_type="valid"),
                         lambda x, y, p, v: F.conv2d(x, t(WG), None, 1, 0, 1, 3)),
    "conv_same_5x5_s2": (lambda mb, x, y, p, v: mb.conv(x=x, weight=W5, strides=[2, 2], pad_type="same"),
                         lambda x, y, p, v: F.conv2d(F.pad(x, (2, 2, 2, 2)), t(W5), None, 2)),
    "conv_same_lower_4x4": (lambda mb, x, y, p, v: mb.conv(x=x, weight=W4, pad_type="same_lower"),
                            lambda x, y, p, v: F.conv2d(F.pad(x, (2, 1, 2, 1)), t(W4))),
    "conv_channel_multiplier": (lambda mb, x, y, p, v: mb.conv(x=x, weight=WM, groups=6, pad_type="custom",
                                                               pad=[1, 1, 1, 1]),
                                lambda x, y, p, v: F.conv2d(x, t(WM), None, 1, 1, 1, 6)),
    "conv_asymmetric_pad_stride": (lambda mb, x, y, p, v: mb.conv(x=x, weight=WA, strides=[1, 2], pad_type="custom",
                                                                  pad=[0, 1, 2, 0]),
                                   lambda x, y, p, v: F.conv2d(F.pad(x, (2, 0, 0, 1)), t(WA), None, (1, 2))),
    "max_pool_3x3_s2_p1": (lambda mb, x, y, p, v: mb.max_pool(x=x, kernel_sizes=[3, 3], strides=[2, 2],
                                                              pad_type="custom", pad=[1, 1, 1, 1]),
                           lambda x, y, p, v: F.max_pool2d(x, 3, 2, 1)),
    "max_pool_ceil": (lambda mb, x, y, p, v: mb.max_pool(x=x, kernel_sizes=[2, 2], strides=[2, 2], pad_type="valid",
                                                         ceil_mode=True),
                      lambda x, y, p, v: F.max_pool2d(x, 2, 2, 0, ceil_mode=True)),
    "avg_pool_include_pad": (lambda mb, x, y, p, v: mb.avg_pool(x=x, kernel_sizes=[3, 3], strides=[2, 2],
                                                                pad_type="custom", pad=[1, 1, 1, 1]),
                             lambda x, y, p, v: F.avg_pool2d(x, 3, 2, 1, count_include_pad=True)),
    "avg_pool_exclude_pad": (lambda mb, x, y, p, v: mb.avg_pool(x=x, kernel_sizes=[3, 3], strides=[2, 2],
                                                                pad_type="custom", pad=[1, 1, 1, 1],
                                                                exclude_padding_from_average=True),
                             lambda x, y, p, v: F.avg_pool2d(x, 3, 2, 1, count_include_pad=False)),
    "avg_pool_ceil_pad": (lambda mb, x, y, p, v: mb.avg_pool(x=x, kernel_sizes=[3, 3], strides=[3, 3],
                                                             pad_type="custom", pad=[1, 1, 1, 1], ceil_mode=True),
                          lambda x, y, p, v: F.avg_pool2d(x, 3, 3, 1, ceil_mode=True, count_include_pad=True)),
    "batch_norm": (lambda mb, x, y, p, v: mb.batch_norm(x=x, mean=BN[0], variance=BN[1], gamma=BN[2], beta=BN[3],
                                                        epsilon=1e-3),
                   lambda x, y, p, v: F.batch_norm(x, t(BN[0]), t(BN[1]), t(BN[2]), t(BN[3]), False, 0.0, 1e-3)),
    "relu": (lambda mb, x, y, p, v: mb.relu(x=x), lambda x, y, p, v: F.relu(x)),
    "relu6": (lambda mb, x, y, p, v: mb.relu6(x=mb.mul(x=x, y=4.0)), lambda x, y, p, v: F.relu6(x * 4)),
    "clip": (lambda mb, x, y, p, v: mb.clip(x=x, alpha=-0.5, beta=0.7), lambda x, y, p, v: x.clamp(-0.5, 0.7)),
    "sigmoid": (lambda mb, x, y, p, v: mb.sigmoid(x=x), lambda x, y, p, v: torch.sigmoid(x)),
    "sigmoid_hard": (lambda mb, x, y, p, v: mb.sigmoid_hard(x=mb.mul(x=x, y=4.0), alpha=1 / 6, beta=0.5),
                     lambda x, y, p, v: F.hardsigmoid(x * 4)),
    "thresholded_relu": (lambda mb, x, y, p, v: mb.thresholded_relu(x=x, alpha=0.3),
                         lambda x, y, p, v: torch.where(x >= 0.3, x, torch.zeros_like(x))),
    "silu": (lambda mb, x, y, p, v: mb.silu(x=x), lambda x, y, p, v: F.silu(x)),
    "tanh": (lambda mb, x, y, p, v: mb.tanh(x=x), lambda x, y, p, v: torch.tanh(x)),
    "leaky_relu": (lambda mb, x, y, p, v: mb.leaky_relu(x=x, alpha=0.1), lambda x, y, p, v: F.leaky_relu(x, 0.1)),
    "elu": (lambda mb, x, y, p, v: mb.elu(x=x, alpha=0.7), lambda x, y, p, v: F.elu(x, 0.7)),
    "gelu_exact": (lambda mb, x, y, p, v: mb.gelu(x=x, mode="EXACT"), lambda x, y, p, v: F.gelu(x)),
    "gelu_tanh": (lambda mb, x, y, p, v: mb.gelu(x=x, mode="TANH_APPROXIMATION"),
                  lambda x, y, p, v: F.gelu(x, approximate="tanh")),
    "softplus": (lambda mb, x, y, p, v: mb.softplus(x=x), lambda x, y, p, v: F.softplus(x)),
    "prelu": (lambda mb, x, y, p, v: mb.prelu(x=x, alpha=ALPHA), lambda x, y, p, v: F.prelu(x, t(ALPHA))),
    "add_broadcast": (lambda mb, x, y, p, v: mb.add(x=x, y=CH), lambda x, y, p, v: x + t(CH)),
    "sub": (lambda mb, x, y, p, v: mb.sub(x=x, y=y), lambda x, y, p, v: x - y),
    "mul": (lambda mb, x, y, p, v: mb.mul(x=x, y=y), lambda x, y, p, v: x * y),
    "real_div": (lambda mb, x, y, p, v: mb.real_div(x=x, y=p), lambda x, y, p, v: x / p),
    "maximum": (lambda mb, x, y, p, v: mb.maximum(x=x, y=y), lambda x, y, p, v: torch.maximum(x, y)),
    "minimum": (lambda mb, x, y, p, v: mb.minimum(x=x, y=y), lambda x, y, p, v: torch.minimum(x, y)),
    "pow": (lambda mb, x, y, p, v: mb.pow(x=p, y=1.7), lambda x, y, p, v: p ** 1.7),
    "sqrt": (lambda mb, x, y, p, v: mb.sqrt(x=p), lambda x, y, p, v: torch.sqrt(p)),
    "rsqrt": (lambda mb, x, y, p, v: mb.rsqrt(x=p), lambda x, y, p, v: torch.rsqrt(p + 1e-12)),
    "exp": (lambda mb, x, y, p, v: mb.exp(x=x), lambda x, y, p, v: torch.exp(x)),
    "log": (lambda mb, x, y, p, v: mb.log(x=p), lambda x, y, p, v: torch.log(p)),
    "abs": (lambda mb, x, y, p, v: mb.abs(x=x), lambda x, y, p, v: torch.abs(x)),
    "reduce_mean_hw": (lambda mb, x, y, p, v: mb.reduce_mean(x=x, axes=[-2, -1], keep_dims=True),
                       lambda x, y, p, v: x.mean((-2, -1), keepdim=True)),
    "reduce_sum_c": (lambda mb, x, y, p, v: mb.reduce_sum(x=x, axes=[1]), lambda x, y, p, v: x.sum(1)),
    "reduce_max_hw": (lambda mb, x, y, p, v: mb.reduce_max(x=x, axes=[2, 3]), lambda x, y, p, v: x.amax((2, 3))),
    "softmax_last": (lambda mb, x, y, p, v: mb.softmax(x=v, axis=-1), lambda x, y, p, v: torch.softmax(v, -1)),
    "softmax_channels": (lambda mb, x, y, p, v: mb.softmax(x=x, axis=1), lambda x, y, p, v: torch.softmax(x, 1)),
    "linear": (lambda mb, x, y, p, v: mb.linear(x=v, weight=WL, bias=BL), lambda x, y, p, v: F.linear(v, t(WL), t(BL))),
    "matmul_transpose_y": (lambda mb, x, y, p, v: mb.matmul(x=v, y=v, transpose_y=True),
                           lambda x, y, p, v: v @ v.transpose(-1, -2)),
    "reshape_minus1": (lambda mb, x, y, p, v: mb.reshape(x=x, shape=[1, -1, 9]),
                       lambda x, y, p, v: x.reshape(1, -1, 9)),
    "reshape_zero": (lambda mb, x, y, p, v: mb.reshape(x=x, shape=[0, 3, 2, 81]),
                     lambda x, y, p, v: x.reshape(1, 3, 2, 81)),
    "transpose": (lambda mb, x, y, p, v: mb.transpose(x=x, perm=[0, 2, 3, 1]),
                  lambda x, y, p, v: x.permute(0, 2, 3, 1)),
    "concat": (lambda mb, x, y, p, v: mb.concat(values=[x, y, p], axis=1), lambda x, y, p, v: torch.cat([x, y, p], 1)),
    "concat_interleave": (lambda mb, x, y, p, v: mb.concat(values=[x, y], axis=1, interleave=True),
                          lambda x, y, p, v: torch.stack([x, y], 2).reshape(1, 12, 9, 9)),
    "split_first": (lambda mb, x, y, p, v: mb.split(x=x, split_sizes=[2, 4], axis=1)[0], lambda x, y, p, v: x[:, :2]),
    "split_second": (lambda mb, x, y, p, v: mb.split(x=x, num_splits=3, axis=1)[2], lambda x, y, p, v: x[:, 4:]),
    "slice_by_index": (lambda mb, x, y, p, v: mb.slice_by_index(x=x, begin=[0, 1, 2, 0], end=[1, 5, 9, 9],
                                                                stride=[1, 2, 3, 1],
                                                                end_mask=[False, False, True, True]),
                       lambda x, y, p, v: x[:, 1:5:2, 2::3, :]),
    "slice_by_index_squeeze": (lambda mb, x, y, p, v: mb.slice_by_index(x=x, begin=[0, 2, 0, 0], end=[1, 3, 9, 9],
                                                                        squeeze_mask=[False, True, False, False]),
                               lambda x, y, p, v: x[:, 2]),
    "slice_by_size": (lambda mb, x, y, p, v: mb.slice_by_size(x=x, begin=[0, 1, 2, 3], size=[1, -1, 4, 5]),
                      lambda x, y, p, v: x[:, 1:, 2:6, 3:8]),
    "squeeze": (lambda mb, x, y, p, v: mb.squeeze(x=mb.reduce_mean(x=x, axes=[2, 3], keep_dims=True), axes=[2, 3]),
                lambda x, y, p, v: x.mean((2, 3))),
    "expand_dims": (lambda mb, x, y, p, v: mb.expand_dims(x=v, axes=[1]), lambda x, y, p, v: v.unsqueeze(1)),
    "pad_constant": (lambda mb, x, y, p, v: mb.pad(x=x, pad=[1, 2, 0, 1], mode="constant", constant_val=0.5),
                     lambda x, y, p, v: F.pad(x, (0, 1, 1, 2), value=0.5)),
    "pad_reflect": (lambda mb, x, y, p, v: mb.pad(x=x, pad=[2, 1, 1, 2], mode="reflect"),
                    lambda x, y, p, v: F.pad(x, (1, 2, 2, 1), mode="reflect")),
    "pad_replicate": (lambda mb, x, y, p, v: mb.pad(x=x, pad=[0, 3, 1, 0], mode="replicate"),
                      lambda x, y, p, v: F.pad(x, (1, 0, 0, 3), mode="replicate")),
    "tile": (lambda mb, x, y, p, v: mb.tile(x=v, reps=[1, 2, 1]), lambda x, y, p, v: v.repeat(1, 2, 1)),
    "cast_fp16_roundtrip": (lambda mb, x, y, p, v: mb.cast(x=mb.cast(x=x, dtype="fp16"), dtype="fp32"),
                            lambda x, y, p, v: x.half().float()),
    "cast_int32": (lambda mb, x, y, p, v: mb.cast(x=mb.mul(x=x, y=3.0), dtype="int32"),
                   lambda x, y, p, v: (x * 3).to(torch.int32)),
    "quantize_dequantize_uint8": (
        lambda mb, x, y, p, v: mb.dequantize(input=mb.quantize(input=x, scale=np.float32(0.02),
                                                               zero_point=np.uint8(128), output_dtype="uint8"),
                                             scale=np.float32(0.02), zero_point=np.uint8(128)),
        lambda x, y, p, v: torch.fake_quantize_per_tensor_affine(x, 0.02, 128, 0, 255)),
    "quantize_dequantize_per_channel_int8": (
        lambda mb, x, y, p, v: mb.dequantize(input=mb.quantize(input=x, scale=QSCALE, zero_point=np.zeros(6, np.int8),
                                                               axis=1, output_dtype="int8"),
                                             scale=QSCALE, zero_point=np.zeros(6, np.int8), axis=1),
        lambda x, y, p, v: torch.fake_quantize_per_channel_affine(x, t(QSCALE), torch.zeros(6, dtype=torch.int32), 1,
                                                                  -128, 127)),
    "constexpr_affine_dequantize_conv": (
        lambda mb, x, y, p, v: mb.conv(x=x, weight=mb.constexpr_affine_dequantize(quantized_data=QW, zero_point=QZ,
                                                                                  scale=QS, axis=0),
                                       pad_type="valid"),
        lambda x, y, p, v: F.conv2d(x, deq_weight())),
}
# integer results and quantization round at value boundaries; FP16 moves values across them
NOT_FP16 = {"cast_int32", "quantize_dequantize_uint8", "quantize_dequantize_per_channel_int8"}
IOS18_CASES = {
    "constexpr_blockwise_shift_scale_conv": (
        lambda mb, x, y, p, v: mb.conv(x=x, weight=mb.constexpr_blockwise_shift_scale(data=QW, scale=BS, offset=BO),
                                       pad_type="valid"),
        lambda x, y, p, v: F.conv2d(x, block_weight())),
}


def build_package(path, cases: dict, opset, fp16: bool = False):
    from coremltools.converters.mil import Builder as mb

    from exporters.coreml.mil.quiet import quiet_logs

    specs = [mb.TensorSpec(shape=a.shape) for a in (X, Y, P, V)]

    @mb.program(input_specs=specs, opset_version=opset)
    def prog(x, y, p, v):
        return tuple(build(mb, x, y, p, v) for build, _ in cases.values())

    pipeline = ct.PassPipeline(pass_names=["common::add_fp16_cast"]) if fp16 else ct.PassPipeline.EMPTY
    import contextlib
    import io

    with quiet_logs("coremltools"), contextlib.redirect_stderr(io.StringIO()):
        model = ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=opset, pass_pipeline=pipeline,
                           compute_precision=ct.precision.FLOAT16 if fp16 else ct.precision.FLOAT32,
                           skip_model_load=True)
        model.save(str(path))
    return path


def run_cases(path, cases: dict):
    interp = Interpreter(path)
    assert [v.name for v in interp.program.inputs] == ["x", "y", "p", "v"]
    got = interp.run(FEEDS)
    outs = interp.program.outputs
    assert len(outs) == len(cases)
    with torch.no_grad():
        ref = {name: fn(t(X), t(Y), t(P), t(V)).numpy() for name, (_, fn) in cases.items()}
    return {name: (ref[name], got[o]) for name, o in zip(cases, outs)}, interp


@pytest.fixture(scope="module")
def fp32_results(tmp_path_factory):
    path = build_package(tmp_path_factory.mktemp("ops") / "ops32.mlpackage", CASES, ct.target.iOS17)
    return run_cases(path, CASES)


@pytest.fixture(scope="module")
def fp16_results(tmp_path_factory):
    cases = {k: v for k, v in CASES.items() if k not in NOT_FP16}
    path = build_package(tmp_path_factory.mktemp("ops") / "ops16.mlpackage", cases, ct.target.iOS17, fp16=True)
    return run_cases(path, cases)


@pytest.mark.parametrize("case", list(CASES))
def test_op_fp32_matches_torch(fp32_results, case):
    ref, got = fp32_results[0][case]
    assert got.shape == ref.shape
    if ref.dtype.kind in "iu":
        assert got.dtype.kind in "iu" and np.array_equal(got, ref)
        return
    assert got.dtype == np.float32
    err = float(np.abs(got.astype(np.float64) - ref).max())
    assert err <= 1e-5 * max(1.0, float(np.abs(ref).max())), f"{case}: max abs error {err:.3g}"


@pytest.mark.parametrize("case", [c for c in CASES if c not in NOT_FP16])
def test_op_fp16_matches_torch(fp16_results, case):
    ref, got = fp16_results[0][case]
    assert got.shape == ref.shape
    # every op's inputs and output are FP16: errors of a few FP16 ulps of the magnitude
    scale = max(1.0, float(np.abs(ref).max()))
    err = float(np.abs(got.astype(np.float64) - ref).max())
    assert err <= 4e-3 * scale, f"{case}: max abs error {err:.3g} at scale {scale:.3g}"


def test_fp16_program_computes_in_fp16(fp16_results):
    interp = fp16_results[1]
    compute = [o for o in interp.steps if o.type not in ("cast", "quantize")]
    assert compute and all(o.outputs[0].dtype_name == "fp16" for o in compute)
    # rounding to FP16 after each op is visible: results differ from an FP32 run
    ref, got = fp16_results[0]["conv_3x3_s2_pad_bias"]
    assert 0 < float(np.abs(got - ref).max())


def test_ios18_blockwise_weights(tmp_path):
    path = build_package(tmp_path / "ops18.mlpackage", IOS18_CASES, ct.target.iOS18)
    results, interp = run_cases(path, IOS18_CASES)
    assert "constexpr_blockwise_shift_scale" in interp.program.op_counts()
    ref, got = results["constexpr_blockwise_shift_scale_conv"]
    assert float(np.abs(got - ref).max()) <= 1e-5 * max(1.0, float(np.abs(ref).max()))


def test_every_case_op_is_in_the_program(fp32_results):
    seen = set(fp32_results[1].program.op_counts())
    for op in ("conv", "max_pool", "avg_pool", "batch_norm", "quantize", "dequantize", "constexpr_affine_dequantize",
               "slice_by_index", "slice_by_size", "split", "concat", "softmax", "linear", "matmul", "cast"):
        assert op in seen
        assert op in supported_ops()


def test_unknown_op_names_op_and_model():
    prog = Program(path=None, name="toy.mlpackage", spec_version=9, opset="CoreML7",
                   inputs=(Var("x", "fp32", np.dtype(np.float32), (1, 2)),), outputs=("y",),
                   ops=[Op("frobnicate", "frob_0", {"x": ("x",)}, (Var("y", "fp32", np.dtype(np.float32), (1, 2)),))])
    with pytest.raises(MilError) as err:
        Interpreter(prog)
    assert "frobnicate" in str(err.value) and "toy.mlpackage" in str(err.value) and "frob_0" in str(err.value)


def test_shape_contradiction_is_an_error():
    prog = Program(path=None, name="toy.mlpackage", spec_version=9, opset="CoreML7",
                   inputs=(Var("x", "fp32", np.dtype(np.float32), (1, 4)),), outputs=("y",),
                   ops=[Op("relu", "relu_0", {"x": ("x",)}, (Var("y", "fp32", np.dtype(np.float32), (1, 5)),))])
    with pytest.raises(MilError, match="relu_0"):
        Interpreter(prog).run({"x": np.ones((1, 4), np.float32)})

"""TensorRT's documented ONNX-parser support, kept as data for the pre-flight lint.

Source (restated as data, not copied code):

* **10.x** — ``docs/operators.md`` of onnx/onnx-tensorrt for TensorRT 10.15 ("TensorRT 10.15
  supports operators in the inclusive range of opset 9 to opset 24"), the newest 10.x table
  published: https://github.com/onnx/onnx-tensorrt/blob/main/docs/operators.md
  Operators that the 10.1 table (tag ``release/10.1-GA``; 10.1 is the oldest TensorRT edgekit
  accepts) did not yet list as supported are in :data:`NEWER_THAN_10_1`; the lint warns about
  them for ``--trt-version 10``.
* **11.x** — the same table plus the parser change listed in the TensorRT 11.0 release notes
  (https://github.com/NVIDIA/TensorRT/releases/tag/v11.0, "Parsers: Added support for Swish
  operator"); opset range from NVIDIA's "ONNX Opset Guide"
  (https://docs.nvidia.com/deeplearning/tensorrt/latest/reference/onnx-opset-guide.html: opset 9
  and above; opset 25 arrived with 11.5, so 24 is the safe maximum for every 11.x).

Data-type names follow the table: FP32, FP16, BF16, FP8, FP4, INT4, INT8, INT32, INT64, UINT8,
BOOL. INT8/INT4/FP8/FP4 are "quantized types" (only through Q/DQ); UINT8 is allowed only as a
network input or output; DOUBLE is cast down to FLOAT by the parser (limited support).
"""
from __future__ import annotations

from types import MappingProxyType

F = ("FP32", "FP16", "BF16")
F2 = ("FP32", "FP16")
I = ("INT32", "INT64")  # noqa: E741
B = ("BOOL",)
ALL_DATA = F + I + B

# op -> data types the parser accepts (TensorRT 10.15 table, "Supported = Y" rows)
_SUPPORTED_10: dict[str, tuple[str, ...]] = {
    "Abs": F + I, "Acos": F, "Acosh": F, "Add": F + I, "And": B, "ArgMax": F + I, "ArgMin": F + I,
    "Asin": F, "Asinh": F, "Atan": F, "Atanh": F, "Attention": F + ("INT8", "FP8"), "AveragePool": F,
    "BatchNormalization": F, "BlackmanWindow": F2, "Cast": F + I + ("UINT8",) + B,
    "CastLike": F + I + ("UINT8",) + B, "Ceil": F, "Celu": F, "Clip": F, "Concat": ALL_DATA,
    "Constant": F + ("FP8", "FP4", "INT4") + I + B, "ConstantOfShape": F + ("FP8", "FP4", "INT4") + I + B,
    "Conv": F, "ConvTranspose": F, "Cos": F, "Cosh": F, "CumSum": F, "DeformConv": F2,
    "DepthToSpace": F + I, "DequantizeLinear": ("INT8", "FP8", "FP4", "INT4"), "Div": F + I, "Dropout": F,
    "Einsum": F, "Elu": F, "Equal": F + I, "Erf": F, "Exp": F, "Expand": ALL_DATA, "EyeLike": ALL_DATA,
    "Flatten": ALL_DATA, "Floor": F, "Gather": ALL_DATA, "GatherElements": ALL_DATA, "GatherND": ALL_DATA,
    "Gelu": F + ("INT8",) + I, "Gemm": F, "GlobalAveragePool": F, "GlobalLpPool": F, "GlobalMaxPool": F,
    "Greater": F + I, "GreaterOrEqual": F + I, "GridSample": F2, "GroupNormalization": F, "GRU": F,
    "HammingWindow": F2, "HannWindow": F2, "HardSigmoid": F, "HardSwish": F, "Hardmax": F,
    "Identity": ALL_DATA, "If": ALL_DATA, "ImageScaler": F, "InstanceNormalization": F, "IsInf": F,
    "IsNaN": F + I, "LayerNormalization": F, "LeakyRelu": F, "Less": F + I, "LessOrEqual": F + I, "Log": F,
    "LogSoftmax": F, "Loop": ALL_DATA, "LRN": F, "LSTM": F, "LpNormalization": F, "LpPool": F, "MatMul": F,
    "Max": F + I, "MaxPool": F, "Mean": F + ("FP8",) + I, "MeanVarianceNormalization": F, "Min": F + I,
    "Mish": F2, "Mod": F + I, "Mul": F + I, "Neg": F + I, "NonMaxSuppression": F2, "NonZero": F2, "Not": B,
    "OneHot": ALL_DATA, "Or": B, "Pad": F + I, "ParametricSoftplus": F, "Pow": F + I, "PRelu": F,
    "QuantizeLinear": F, "RandomNormal": F, "RandomNormalLike": F, "RandomUniform": F,
    "RandomUniformLike": F, "Range": F + I, "Reciprocal": F, "ReduceL1": F + I, "ReduceL2": F + I,
    "ReduceLogSum": F + I, "ReduceLogSumExp": F + I, "ReduceMax": F + I, "ReduceMean": F + I,
    "ReduceMin": F + I, "ReduceProd": F + I, "ReduceSum": F + I, "ReduceSumSquare": F + I, "Relu": F + I,
    "Reshape": ALL_DATA, "Resize": F, "ReverseSequence": ALL_DATA, "RMSNormalization": F, "RNN": F,
    "RoiAlign": F2, "RotaryEmbedding": F, "Round": F, "STFT": ("FP32",), "ScaledTanh": F, "Scan": F,
    "Scatter": F + I, "ScatterElements": F + I, "ScatterND": F + I, "Selu": F, "Shape": ALL_DATA,
    "Shrink": F + I, "Sigmoid": F, "Sign": F + I, "Sin": F, "Sinh": F, "Size": ALL_DATA, "Slice": ALL_DATA,
    "Softmax": F, "Softplus": F, "Softsign": F, "SpaceToDepth": F + I, "Split": ALL_DATA, "Sqrt": F,
    "Squeeze": ALL_DATA, "Sub": F + I, "Sum": F + I, "Tan": F, "Tanh": F, "TensorScatter": F + ("INT32",),
    "ThresholdedRelu": F, "Tile": ALL_DATA, "TopK": F + I, "Transpose": ALL_DATA, "Trilu": ALL_DATA,
    "Unsqueeze": ALL_DATA, "Upsample": F, "Where": ALL_DATA, "Xor": B,
}

# "Supported = N" rows of the same table
UNSUPPORTED: frozenset[str] = frozenset({
    "AffineGrid", "Bernoulli", "BitShift", "BitwiseAnd", "BitwiseNot", "BitwiseOr", "BitwiseXor", "Col2Im",
    "CenterCropPad", "Compress", "ConcatFromSequence", "ConvInteger", "DFT", "Det", "DynamicQuantizeLinear",
    "ImageDecoder", "MatMulInteger", "MaxRoiPool", "MaxUnpool", "MelWeightMatrix", "Multinomial",
    "NegativeLogLikelihoodLoss", "Optional", "OptionalGetElement", "OptionalHasElement", "QLinearConv",
    "QLinearMatMul", "RegexFullMatch", "SequenceAt", "SequenceConstruct", "SequenceEmpty", "SequenceErase",
    "SequenceInsert", "SequenceLength", "SequenceMap", "SoftmaxCrossEntropyLoss", "SplitToSequence",
    "StringConcat", "StringNormalizer", "StringSplit", "TfIdfVectorizer", "Unique",
})

# Supported in the 10.15 table but not (yet) in the 10.1 one: a 10.1-10.x parser may reject them.
NEWER_THAN_10_1: frozenset[str] = frozenset({
    "Attention", "BlackmanWindow", "HammingWindow", "HannWindow", "RMSNormalization", "RotaryEmbedding",
    "STFT", "TensorScatter",
})

# Restrictions the table states, as shown to the user; the lint checks those it can decide
# from the graph alone (see exporters/tensorrt/lint.py).
RESTRICTIONS: dict[str, str] = {
    "AveragePool": "2D or 3D pooling only; dilations must be empty or all ones",
    "MaxPool": "2D or 3D pooling only; the Indices output is unsupported; dilations must be empty or all ones",
    "LpPool": "dilations must be empty or all ones",
    "Constant": "sparse_value, value_string and value_strings attributes are unsupported",
    "CumSum": "axis must be a build-time constant",
    "DequantizeLinear": "x_zero_point must be zero",
    "QuantizeLinear": "y_zero_point must be 0",
    "Dropout": "is_training must be an initializer and evaluate to False",
    "LayerNormalization": "only the first output Y is supported",
    "Resize": "modes nearest/linear; coordinate modes half_pixel, pytorch_half_pixel, tf_half_pixel_for_nn, "
              "asymmetric, align_corners; no antialiasing; aspect-ratio policy stretch",
    "ScatterND": "reduction other than none is not supported",
    "TopK": "sorted must be 1; K must be less than 3840",
    "Squeeze": "axes must be resolvable to a constant",
    "Unsqueeze": "axes must be resolvable to a constant",
    "Reduce*": "axes must be an initializer",
}

SUPPORTED: MappingProxyType = MappingProxyType({
    "10": MappingProxyType(dict(_SUPPORTED_10)),
    # TensorRT 11.0 release notes, Parsers: "Added support for Swish operator" (types as its neighbours)
    "11": MappingProxyType({**_SUPPORTED_10, "Swish": F}),
})

OPSET_RANGE: dict[str, tuple[int, int]] = {"10": (9, 24), "11": (9, 24)}

SOURCES: dict[str, str] = {
    "10": "onnx/onnx-tensorrt docs/operators.md (TensorRT 10.15 table; 10.1-GA table for NEWER_THAN_10_1)",
    "11": "onnx/onnx-tensorrt docs/operators.md (10.15) + TensorRT 11.0 release notes (Swish) + "
          "TensorRT ONNX Opset Guide (opset range)",
}

VERSIONS = tuple(SUPPORTED)

# ONNX TensorProto element type -> the table's type name (None: no TensorRT type at all)
ONNX_TYPES: dict[int, str | None] = {
    1: "FP32", 2: "UINT8", 3: "INT8", 4: "UINT16", 5: "INT16", 6: "INT32", 7: "INT64", 8: "STRING",
    9: "BOOL", 10: "FP16", 11: "DOUBLE", 12: "UINT32", 13: "UINT64", 14: "COMPLEX64", 15: "COMPLEX128",
    16: "BF16", 17: "FP8", 18: "FP8E4M3FNUZ", 19: "FP8E5M2", 20: "FP8E5M2FNUZ", 21: "UINT4", 22: "INT4",
    23: "FP4",
}
# types TensorRT has no equivalent for (an error wherever they appear)
NO_TRT_TYPE = frozenset({"UINT16", "INT16", "STRING", "UINT32", "UINT64", "COMPLEX64", "COMPLEX128",
                         "FP8E4M3FNUZ", "FP8E5M2", "FP8E5M2FNUZ", "UINT4"})
QUANTIZED = frozenset({"INT8", "INT4", "FP8", "FP4"})


def supported_ops(version: str) -> MappingProxyType:
    return SUPPORTED[version]

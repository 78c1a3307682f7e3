"""Seeded random DL pipelines, ``dlrandom:SEED``: chains and residual branches of DL layers.

:mod:`.dl_random_planner` draws the plan (pure Python, seeded); this module writes it with the
zoo's layers (:mod:`perfgraph.workloads.zoo.layers`) and :mod:`.dl_layers`. Funcs are named by block
and role (``b0_conv``, ``b0_bn``, ``b0_relu``, ``b1_scores``, ``b1_attn`` ...), weights after their
layer (``b0_conv_w``, ``b1_ln_gamma`` ...); the input is ``input``. Every input and the output have
estimates. The family name, for held-out splits, is ``dlrandom``.

>>> outputs = dl_random_pipeline(3)  # in a fresh process the name is exact; Halide adds $N to repeats
>>> len(outputs), outputs[0].name().startswith(plan_dl_random_pipeline(3).output.name)
(1, True)
"""

from __future__ import annotations

from collections.abc import Callable

import halide as hl

from perfgraph.workloads import dl_layers
from perfgraph.workloads.base import WorkloadError
from perfgraph.workloads.dl_random_plan import DLOp, DLPlan
from perfgraph.workloads.dl_random_planner import REALISTIC, DLShapes, estimated_ms, plan_dl_random_pipeline
from perfgraph.workloads.zoo import layers
from perfgraph.workloads.zoo.tensor import Tensor, as_output, input_tensor


def dl_random_pipeline(seed: int, shapes: DLShapes = REALISTIC) -> list[hl.Func]:
    """The output Func of ``dlrandom:SEED`` (a fresh, unscheduled copy on every call)."""
    return build_dl_random_pipeline(plan_dl_random_pipeline(seed, shapes))


def describe_dl_random_pipeline(seed: int) -> list[str]:
    """A header line and one line per layer: what ``dlrandom:SEED`` computes, for humans."""
    plan = plan_dl_random_pipeline(seed)
    header = (
        f"dlrandom:{seed}: {plan.family}, input {'x'.join(map(str, plan.ops[0].shape))}, {plan.stages} Funcs "
        f"({plan.rows} Halide stages), {plan.work.macs / 1e6:.1f} M MACs, ~{estimated_ms(plan):.1f} ms estimated"
    )
    return [header, *plan.describe()]


def build_dl_random_pipeline(plan: DLPlan, layers_at_root: bool = False) -> list[hl.Func]:
    """Write a plan as Halide Funcs and return the output, with estimates set.

    ``layers_at_root`` schedules every layer's result ``compute_root`` (its helpers, such as a
    softmax's sums, keep Halide's default): a simple schedule that runs any plan, where Halide's
    default alone recomputes every reduction for each point of its consumer, layer after layer.
    Leave it off for the autoschedulers.
    """
    tensors: list[Tensor] = []
    for op in plan.ops:
        tensor = _LAYERS[op.kind](op, [tensors[i] for i in op.inputs])
        if tensor.shape != op.shape:  # the planner's arithmetic and the layer disagree
            raise WorkloadError(f"dlrandom:{plan.seed}: {op.name} was planned {op.shape} but built {tensor.shape}")
        if layers_at_root and isinstance(tensor.source, hl.Func):
            tensor.source.compute_root()
        tensors.append(tensor)
    return [as_output(tensors[-1])]


def _activation(layer: Callable[..., Tensor]) -> Callable[[DLOp, list[Tensor]], Tensor]:
    return lambda op, src: layer(src[0], name=op.name)


def _conv(op: DLOp, src: list[Tensor]) -> Tensor:
    p = op.params
    return layers.conv2d(
        src[0], op.shape[2], kernel=p["kernel"], stride=p["stride"], padding=p["padding"], bias=p["bias"], name=op.name
    )


def _depthwise(op: DLOp, src: list[Tensor]) -> Tensor:
    p = op.params
    return layers.depthwise_conv2d(src[0], kernel=p["kernel"], stride=p["stride"], padding=p["padding"], name=op.name)


def _scores(op: DLOp, src: list[Tensor]) -> Tensor:
    p = op.params
    return dl_layers.attention_scores(
        src[0],
        src[1],
        heads=p["heads"],
        head_dim=p["head_dim"],
        q_offset=p["q_offset"],
        k_offset=p["k_offset"],
        name=op.name,
    )


def _context(op: DLOp, src: list[Tensor]) -> Tensor:
    p = op.params
    return dl_layers.attention_context(src[0], src[1], head_dim=p["head_dim"], v_offset=p["v_offset"], name=op.name)


_LAYERS: dict[str, Callable[[DLOp, list[Tensor]], Tensor]] = {
    "input": lambda op, src: input_tensor(op.name, op.shape),
    "conv": _conv,
    "depthwise": _depthwise,
    "pointwise": lambda op, src: layers.pointwise_conv2d(src[0], op.shape[2], name=op.name),
    "batch_norm": lambda op, src: layers.batch_norm(src[0], name=op.name),
    "max_pool": lambda op, src: layers.max_pool(src[0], kernel=2, stride=2, name=op.name),
    "avg_pool": lambda op, src: layers.avg_pool(src[0], kernel=2, stride=2, name=op.name),
    "global_avg_pool": lambda op, src: layers.global_avg_pool(src[0], name=op.name),
    "vector_dense": lambda op, src: dl_layers.vector_dense(src[0], op.shape[0], name=op.name),
    "scale_channels": lambda op, src: dl_layers.scale_channels(src[0], src[1], name=op.name),
    "flatten": lambda op, src: dl_layers.flatten_patches(src[0], name=op.name),
    "relu": _activation(layers.relu),
    "relu6": _activation(layers.relu6),
    "gelu": _activation(layers.gelu),
    "sigmoid": _activation(dl_layers.sigmoid),
    "silu": _activation(dl_layers.silu),
    "add": lambda op, src: layers.add(src[0], src[1], name=op.name),
    "dense": lambda op, src: layers.dense(src[0], op.shape[0], name=op.name),
    "matmul": lambda op, src: layers.dense(src[0], op.shape[0], bias=False, name=op.name),
    "layer_norm": _activation(dl_layers.layer_norm),
    "attention_scores": _scores,
    "softmax": lambda op, src: layers.softmax(src[0], axis=0, name=op.name),
    "attention_context": _context,
}

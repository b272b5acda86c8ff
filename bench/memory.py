"""Peak activation memory of batch-1 SSDLite inference at 320 px, ours vs torchvision's, side by side.

``python -m bench.memory [--models ...] [--no-runtimes] [--json FILE]``: for our MobileNetV2,
V3-Large, V3-Small and V1 presets and torchvision's ``ssdlite320_mobilenet_v3_large`` (its raw
network: backbone + head), float32, in MB (10^6 bytes):

- the analytic bounds, from forward hooks: the largest input + output of one op, run op by op
  (BatchNorm and activation as ops of their own, as a first estimate counts them; and with
  conv + BatchNorm + activation fused, as every runtime runs them), and the largest input +
  output of one unit when each inverted residual (and MobileNetV1's depthwise-separable pair) runs
  fused, its expansion never materialised: the bound of the MobileNetV2 paper, section 5.1;
- ExecuTorch's memory-planned activation arena (``non_const_buffer_sizes`` of the program), with
  portable kernels (every intermediate planned: the figure memory planning is about) and with the
  XNNPACK delegate (only the delegate's inputs and outputs are planned: XNNPACK plans and allocates
  its own workspace when the method is loaded and first run);
- LiteRT's tensor arena with its builtin kernels, read from the tensor addresses of a live
  interpreter and, beside it, simulated from the ``.tflite`` flatbuffer with the ArenaPlanner's
  algorithm (they agree to the byte); and the arena the interpreter keeps with its default XNNPACK
  delegate, which again holds only the delegate's inputs and outputs;
- for both XNNPACK runs, what they really hold, approximately: the resident-memory growth from the
  loaded file through the first run, in a fresh process, less the float weights (XNNPACK packs a
  copy of them).

Converting to ``.tflite`` needs litert-torch; without it the LiteRT columns say so and the rest of
the table is still made.
"""

import argparse
import contextlib
import io
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ssdlite import build_model
from ssdlite.core.layers import InvertedResidual
from ssdlite.deploy.onnx import fold_batchnorm

from .common import write_json

MB = 1e6
IMAGE_SIZE = 320
NUM_CLASSES = 91
NEEDS_LITERT_TORCH = "n/a (needs litert-torch)"
TORCHVISION = "torchvision SSDLite-V3"
MODELS: dict[str, str | None] = {  # row label -> our preset (None: torchvision's model)
    "ours MobileNetV2": "ssdlite320_mobilenet_v2",
    "ours MobileNetV3-Large": "ssdlite320_mobilenet_v3_large",
    "ours MobileNetV3-Small": "ssdlite320_mobilenet_v3_small",
    "ours MobileNetV1": "ssdlite320_mobilenet_v1",
    TORCHVISION: None,
}


# --------------------------------------------------------------------------------------------
# The networks


class TorchvisionNetwork(nn.Module):
    """torchvision's SSDLite without its transform and postprocess: ``[N, 3, 320, 320]`` -> head outputs."""

    def __init__(self, detector: nn.Module):
        super().__init__()
        self.backbone = detector.backbone
        self.head = detector.head

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        features = list(self.backbone(images).values())
        out = self.head(features)
        return out["bbox_regression"], out["cls_logits"]


def build_network(label: str) -> nn.Module:
    """The eval-mode network of a ``MODELS`` row (BatchNorm not folded), random weights."""
    torch.manual_seed(0)
    preset = MODELS[label]
    if preset is not None:
        return build_model(preset, num_classes=NUM_CLASSES).eval()
    import torchvision

    detector = torchvision.models.detection.ssdlite320_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=NUM_CLASSES
    )
    return TorchvisionNetwork(detector).eval()


# --------------------------------------------------------------------------------------------
# Analytic bounds from forward hooks


def is_block(module: nn.Module) -> bool:
    """The units a fused runtime runs whole: inverted residuals (ours, torchvision's) and
    MobileNetV1's depthwise + pointwise pairs."""
    from torchvision.models.mobilenetv2 import InvertedResidual as TorchvisionV2Block
    from torchvision.models.mobilenetv3 import InvertedResidual as TorchvisionV3Block

    if isinstance(module, InvertedResidual | TorchvisionV2Block | TorchvisionV3Block):
        return True
    return isinstance(module, nn.Sequential) and [name for name, _ in module.named_children()] == [
        "depthwise",
        "pointwise",
    ]


def _tensors(value: Any) -> Iterable[Tensor]:
    if isinstance(value, Tensor):
        yield value
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)


def distinct_bytes(*values: Any) -> int:
    """Bytes of the tensors in ``values``, each storage once (an in-place op's output is its input)."""
    storages: dict[int, int] = {}
    for tensor in _tensors(values):
        key = tensor.untyped_storage().data_ptr()
        storages[key] = max(storages.get(key, 0), tensor.nbytes)
    return sum(storages.values())


@dataclass
class Bounds:
    """Largest input + output bytes of one op (leaf module) and of one unit with blocks fused."""

    op_bytes: int
    op_name: str
    block_bytes: int
    block_name: str


@torch.no_grad()
def activation_bounds(model: nn.Module, example: Tensor, block: Callable[[nn.Module], bool] = is_block) -> Bounds:
    """Runs ``model(example)`` with forward hooks and returns the two analytic bounds.

    An op is a leaf module; its input + output counts each storage once, so an in-place
    activation adds nothing to its input. A unit is a module ``block`` accepts, or a leaf that runs
    outside every such module; a block counts only its inputs and outputs, since a fused block
    never materialises what it makes inside (a block called through ``forward_with_expansion``,
    our SSDLite tap, also outputs its expansion). Functional ops (a residual add, the SE scaling,
    the heads' concat) are not modules and are not seen; none of them is near the largest op.
    """
    names = {id(module): name or "model" for name, module in model.named_modules()}
    best = {"op": (0, ""), "block": (0, "")}
    depth = [0]  # how many blocks are running

    def record(kind: str, module: nn.Module, inputs: Any, outputs: Any):
        size = distinct_bytes(inputs, outputs)
        if size > best[kind][0]:
            best[kind] = (size, names[id(module)])

    def leaf_hook(module, inputs, outputs):
        record("op", module, inputs, outputs)
        if depth[0] == 0:
            record("block", module, inputs, outputs)

    def block_pre_hook(module, inputs):
        depth[0] += 1

    def block_hook(module, inputs, outputs):
        depth[0] -= 1
        if depth[0] == 0:
            record("block", module, inputs, outputs)

    def tapped(module, method):
        def forward_with_expansion(x):
            depth[0] += 1
            outputs = method(x)
            depth[0] -= 1
            if depth[0] == 0:
                record("block", module, (x,), outputs)
            return outputs

        return forward_with_expansion

    handles, patched = [], []
    try:
        for module in model.modules():
            if block(module):
                handles.append(module.register_forward_pre_hook(block_pre_hook))
                handles.append(module.register_forward_hook(block_hook))
                if hasattr(module, "forward_with_expansion"):
                    module.forward_with_expansion = tapped(module, module.forward_with_expansion)
                    patched.append(module)
            if not any(True for _ in module.children()):
                handles.append(module.register_forward_hook(leaf_hook))
        model(example)
    finally:
        for handle in handles:
            handle.remove()
        for module in patched:
            del module.forward_with_expansion  # back to the class's method
    return Bounds(best["op"][0], best["op"][1], best["block"][0], best["block"][1])


# --------------------------------------------------------------------------------------------
# LiteRT's arena: TFLite's ArenaPlanner + SimpleMemoryArena, replayed on a flatbuffer

LITERT_ALIGNMENT = 64  # kDefaultTensorAlignment
NOT_FREED = 2**31 - 1  # kNodeNotAssigned: lives to the end of the run
SCALAR_BYTES = 4  # kScalarTensorBytes: no in-place sharing at or below this size
# Builtin ops whose kernels let the output take an input's buffer (the registration's
# ``inplace_operator``): which inputs may be shared, and whether the data stays unmodified.
IN_PLACE_OPS = {
    "ADD": (0b11, False),
    "SUB": (0b11, False),
    "MUL": (0b11, False),
    "DIV": (0b11, False),
    "RESHAPE": (0b01, True),
    "BITCAST": (0b01, True),
}


@dataclass(frozen=True)
class Lifetime:
    """An arena tensor: bytes, and the first and last node (inclusive) that need it."""

    size: int
    first: int
    last: int = NOT_FREED


def litert_lifetimes(
    ops: list[tuple[str, list[int], list[int]]],
    sizes: dict[int, int],
    graph_inputs: list[int],
    graph_outputs: list[int],
) -> dict[int, Lifetime]:
    """The arena allocations TFLite's ``ArenaPlanner::PlanAllocations`` makes for one subgraph.

    Args:
        ops: ``(builtin op name, input tensor ids, output tensor ids)`` in execution order.
        sizes: bytes of every arena tensor (constants left out); ``-1`` ids are optional inputs.
        graph_inputs, graph_outputs: the subgraph's inputs and outputs (they live the whole run).

    Returns:
        tensor id -> lifetime, for every tensor that gets its own place in the arena (an output
        that an in-place op writes over its input has none: it lives in the input's place, which
        lives as long as either is needed).
    """
    inputs, outputs = set(graph_inputs), set(graph_outputs)
    start = Counter(t for t in [*graph_outputs, *graph_inputs] if t >= 0)
    consumers = start + Counter(t for _, op_inputs, _ in ops for t in op_inputs if t >= 0)
    shared: dict[int, int] = {}  # output id -> the tensor whose place it takes
    for op, op_inputs, op_outputs in ops:
        if op not in IN_PLACE_OPS or not op_outputs:
            continue
        mask, unmodified = IN_PLACE_OPS[op]
        out, chosen = op_outputs[0], None
        for k, tensor in enumerate(op_inputs[:2]):
            if tensor < 0 or not mask & (1 << k) or tensor not in sizes or out not in sizes:
                continue
            if not unmodified and (
                sizes[tensor] != sizes[out] or sizes[tensor] <= SCALAR_BYTES or consumers[tensor] > 1
            ):
                continue
            if tensor in inputs or out in outputs:
                continue
            chosen = tensor
            break
        if chosen is None:
            continue
        root = shared.get(chosen, chosen)
        if not unmodified and consumers[root] > 1:
            continue
        shared[out] = root

    def find(tensor: int) -> int:
        return shared.get(tensor, tensor)

    refcounts = start + Counter(find(t) for _, op_inputs, _ in ops for t in op_inputs if t >= 0)
    first = dict.fromkeys(graph_inputs, 0)
    last: dict[int, int] = {}
    for node, (_, op_inputs, op_outputs) in enumerate(ops):
        for tensor in op_outputs:
            first.setdefault(tensor, node)
        for tensor in op_inputs:
            if tensor < 0:
                continue
            root = find(tensor)
            refcounts[root] -= 1
            if refcounts[root] == 0 and root in first and root not in last:
                last[root] = node
    return {
        tensor: Lifetime(sizes[tensor], first[tensor], last.get(tensor, NOT_FREED))
        for tensor in sizes
        if tensor in first and (tensor not in shared or sizes[shared[tensor]] != sizes[tensor])
    }


def plan_arena(tensors: dict[int, Lifetime], alignment: int = LITERT_ALIGNMENT) -> tuple[int, dict[int, int]]:
    """Places tensors as TFLite's ``SimpleMemoryArena`` does; returns (high-water bytes, offsets).

    Order: tensors alive for the whole run first (by id), then by size, largest first (ties: the
    earlier first node). Each goes into the smallest gap between the placed tensors whose
    lifetimes overlap its own, or above them all.
    """

    def order(tensor: int):
        t = tensors[tensor]
        if t.first == 0 and t.last == NOT_FREED:
            return (0, tensor, 0)
        return (1, -t.size, t.first)

    def align(offset: int) -> int:
        return -(-offset // alignment) * alignment

    placed: list[tuple[int, int, int, int]] = []  # (offset, size, first, last), by offset
    offsets: dict[int, int] = {}
    high_water = 0
    for tensor in sorted(tensors, key=order):
        t = tensors[tensor]
        if t.size == 0:
            offsets[tensor] = 0
            continue
        best, best_fit, current = None, None, 0
        for offset, size, first, last in placed:
            if last < t.first or first > t.last:
                continue
            candidate = align(current)
            if candidate + t.size <= offset and (best_fit is None or offset - candidate < best_fit):
                best, best_fit = candidate, offset - current
            current = max(current, offset + size)
            if best_fit == 0:
                break
        if best is None:
            best = align(current)
        high_water = max(high_water, best + t.size)
        offsets[tensor] = best
        index = sum(1 for p in placed if p[0] <= best)  # after equal offsets, as std::upper_bound
        placed.insert(index, (best, t.size, t.first, t.last))
    return high_water, offsets


_TFLITE_ELEMENT_BYTES = {
    "FLOAT32": 4, "FLOAT16": 2, "INT32": 4, "UINT8": 1, "INT64": 8, "BOOL": 1, "INT16": 2,
    "INT8": 1, "FLOAT64": 8, "UINT64": 8, "UINT32": 4, "UINT16": 2, "INT4": 1,
}  # fmt: skip


def tflite_graph(tflite: bytes) -> tuple[list[tuple[str, list[int], list[int]]], dict[int, int], list[int], list[int]]:
    """The main subgraph of a ``.tflite`` file as :func:`litert_lifetimes` takes it."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(tflite, 0)
    graph = model.subgraphs[0]
    op_names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    type_names = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    sizes = {}
    for index, tensor in enumerate(graph.tensors):
        buffer = model.buffers[tensor.buffer]
        if (buffer.data is not None and len(buffer.data)) or buffer.offset > 1:
            continue  # a constant: read-only, in the model's memory, not in the arena
        count = 1
        for dim in tensor.shape if tensor.shape is not None else []:
            count *= int(dim)
        sizes[index] = count * _TFLITE_ELEMENT_BYTES[type_names[tensor.type]]
    ops = []
    for op in graph.operators:
        code = model.operatorCodes[op.opcodeIndex]
        builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
        inputs = [int(t) for t in (op.inputs if op.inputs is not None else [])]
        outputs = [int(t) for t in (op.outputs if op.outputs is not None else [])]
        ops.append((op_names.get(builtin, str(builtin)), inputs, outputs))
    return ops, sizes, [int(t) for t in graph.inputs], [int(t) for t in graph.outputs]


def simulate_litert_arena(tflite: bytes) -> int:
    """Bytes of the arena LiteRT's builtin kernels need for ``tflite``, from the flatbuffer alone.

    Kernel temporaries (scratch a kernel asks for in its ``Prepare``) are not in the file and are
    not counted; the builtin float kernels of these models ask for none in this arena.
    """
    ops, sizes, inputs, outputs = tflite_graph(tflite)
    return plan_arena(litert_lifetimes(ops, sizes, inputs, outputs))[0]


def interpreter_tensor_offsets(tflite: bytes, xnnpack: bool = False, threads: int = 2) -> dict[int, tuple[int, int]]:
    """Tensor id -> (offset from the lowest, bytes) of every non-constant tensor with memory,
    read from a live LiteRT interpreter after ``allocate_tensors()``.

    Without ``xnnpack`` the interpreter runs builtin kernels only; with it, the default XNNPACK
    delegate takes over, and the tensors it runs inside have no memory in the arena at all.
    """
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    _, sizes, _, _ = tflite_graph(tflite)
    resolver = OpResolverType.AUTO if xnnpack else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    interpreter = Interpreter(model_content=tflite, num_threads=threads, experimental_op_resolver_type=resolver)
    interpreter.allocate_tensors()
    wrapper = interpreter._interpreter  # the only door to a tensor's address
    addresses = {}
    for tensor in sizes:
        try:
            view = wrapper.tensor(wrapper, tensor)
        except ValueError:  # "Tensor data is null": inside the delegate
            continue
        addresses[tensor] = (view.__array_interface__["data"][0], view.nbytes)
        del view
    if not addresses:
        return {}
    base = min(address for address, _ in addresses.values())
    return {tensor: (address - base, size) for tensor, (address, size) in addresses.items()}


def interpreter_arena(tflite: bytes, xnnpack: bool = False) -> int:
    """High-water bytes of the activation arena of a live interpreter (see :func:`interpreter_tensor_offsets`)."""
    offsets = interpreter_tensor_offsets(tflite, xnnpack)
    return max((offset + size for offset, size in offsets.values()), default=0)


def convert_tflite(network: nn.Module, example: Tensor, path: Path) -> Path | None:
    """Writes ``network`` as ``.tflite`` with litert-torch; ``None`` where it is not installed."""
    try:
        import litert_torch
    except ImportError:
        return None
    with contextlib.redirect_stdout(io.StringIO()):  # its progress log
        litert_torch.convert(network.eval(), (example,)).export(str(path))
    return path


# --------------------------------------------------------------------------------------------
# ExecuTorch's memory plan


def planned_bytes(program_manager) -> int:
    """Bytes of the memory-planned (non-constant) buffers of the ``forward`` plan; buffer 0 is reserved."""
    plan = program_manager.executorch_program.execution_plan[0]
    return sum(plan.non_const_buffer_sizes[1:])


def executorch_programs(network: nn.Module, example: Tensor) -> dict[str, Any]:
    """``{"portable": ..., "xnnpack": ...}`` program managers of the float network."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    exported = torch.export.export(network, (example,))
    return {
        "portable": to_edge_transform_and_lower(exported).to_executorch(),
        "xnnpack": to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()]).to_executorch(),
    }


# --------------------------------------------------------------------------------------------
# What the XNNPACK delegate allocates for itself: resident memory, in a fresh process

_XNNPACK_RUN = {  # the model's bytes are read first; "before" is taken once they are loaded
    "executorch": """
import sys, torch
from executorch.runtime import Runtime
program = Runtime.get().load_program(open(sys.argv[1], "rb").read())
x = torch.rand(1, 3, {size}, {size}) * 255
before = rss()
method = program.load_method("forward")
method.execute([x])
print(rss() - before)
""",
    "litert": """
import sys, numpy as np
from ai_edge_litert.interpreter import Interpreter
interpreter = Interpreter(model_content=open(sys.argv[1], "rb").read(), num_threads=2)
x = np.random.rand(1, 3, {size}, {size}).astype(np.float32) * 255
before = rss()
interpreter.allocate_tensors()
interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
interpreter.invoke()
print(rss() - before)
""",
}
_RSS = "import os\ndef rss(): return int(open('/proc/self/statm').read().split()[1]) * os.sysconf('SC_PAGE_SIZE')\n"


def xnnpack_rss_growth(runtime: str, path: Path, size: int = IMAGE_SIZE) -> int | None:
    """Resident-memory growth from a loaded XNNPACK model file to the end of its first run, in a fresh process.

    ``runtime`` is ``"executorch"`` (a ``.pte``: ``load_method`` and the first ``execute``) or
    ``"litert"`` (a ``.tflite`` on the default XNNPACK delegate: ``allocate_tensors`` and the first
    ``invoke``). It holds XNNPACK's packed copy of the weights, the runtime's arena and XNNPACK's
    workspace, which XNNPACK plans and allocates itself. ``None`` if the run failed.
    """
    script = _RSS + _XNNPACK_RUN[runtime].format(size=size)
    run = subprocess.run(
        [sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=300, check=False
    )
    lines = run.stdout.strip().splitlines()
    return int(lines[-1]) if run.returncode == 0 and lines and lines[-1].lstrip("-").isdigit() else None


def _less(total: int | None, weights: int) -> int | None:
    return None if total is None else total - weights


# --------------------------------------------------------------------------------------------
# The table


def measure(label: str, workdir: Path, runtimes: bool = True, log: Callable[[str], None] = print) -> dict:
    """Every figure of one ``MODELS`` row, in bytes (a string where a figure cannot be had)."""
    network = build_network(label)
    example = torch.rand(1, 3, IMAGE_SIZE, IMAGE_SIZE) * 255
    folded = fold_batchnorm(network).eval()
    unfused = activation_bounds(network, example)
    fused = activation_bounds(folded, example)
    row: dict[str, Any] = {
        "model": label,
        "preset": MODELS[label] or "torchvision.models.detection.ssdlite320_mobilenet_v3_large",
        "params": sum(p.numel() for p in network.parameters()),
        "op_unfused": unfused.op_bytes,
        "op_unfused_at": unfused.op_name,
        "op_fused": fused.op_bytes,
        "op_fused_at": fused.op_name,
        "block": fused.block_bytes,
        "block_at": fused.block_name,
    }
    if not runtimes:
        return row
    stem = workdir / label.replace(" ", "_")
    weights = sum(t.nbytes for t in [*folded.parameters(), *folded.buffers()])
    row["weights"] = weights
    start = time.perf_counter()
    programs = executorch_programs(folded, example)
    row["et_portable"] = planned_bytes(programs["portable"])
    row["et_xnnpack"] = planned_bytes(programs["xnnpack"])
    pte = stem.with_suffix(".pte")
    pte.write_bytes(programs["xnnpack"].buffer)
    row["et_xnnpack_rss"] = _less(xnnpack_rss_growth("executorch", pte), weights)
    log(f"  {label}: ExecuTorch {time.perf_counter() - start:.0f} s")
    start = time.perf_counter()
    tflite = convert_tflite(folded, example, stem.with_suffix(".tflite"))
    if tflite is None:
        for key in ("litert_builtin", "litert_simulated", "litert_xnnpack", "litert_xnnpack_rss"):
            row[key] = NEEDS_LITERT_TORCH
        return row
    data = tflite.read_bytes()
    row["litert_builtin"] = interpreter_arena(data)
    row["litert_simulated"] = simulate_litert_arena(data)
    row["litert_xnnpack"] = interpreter_arena(data, xnnpack=True)
    row["litert_xnnpack_rss"] = _less(xnnpack_rss_growth("litert", tflite), weights)
    log(f"  {label}: LiteRT {time.perf_counter() - start:.0f} s")
    return row


XNNPACK_RSS = (
    "approx.: resident-memory growth of {prepare} + first {run} (fresh process), less the float weights "
    "(XNNPACK packs its own copy): the arena plus XNNPACK's own workspace"
)
COLUMNS = (  # key, header, legend
    ("op_unfused", "op, unfused", "largest input + output of one op, BatchNorm and activation as ops of their own"),
    ("op_fused", "op, conv+BN+act", "the same with conv + BatchNorm + activation as one op (BN folded)"),
    ("block", "block fused (paper)", "largest input + output of a unit with inverted residuals fused"),
    ("et_portable", "ET plan, portable", "ExecuTorch's planned activation arena, portable kernels"),
    ("et_xnnpack", "ET plan, XNNPACK", "the same with the XNNPACK delegate: its inputs and outputs only"),
    ("et_xnnpack_rss", "ET XNNPACK RSS", XNNPACK_RSS.format(prepare="load_method", run="execute")),
    ("litert_builtin", "LiteRT arena", "LiteRT's arena, builtin kernels, from a live interpreter's tensor addresses"),
    ("litert_simulated", "LiteRT sim.", "the same simulated from the .tflite file (ArenaPlanner, 64-byte aligned)"),
    ("litert_xnnpack", "LiteRT arena, XNNPACK", "LiteRT's arena with its default XNNPACK delegate"),
    ("litert_xnnpack_rss", "LiteRT XNNPACK RSS", XNNPACK_RSS.format(prepare="allocate_tensors", run="invoke")),
)


def _cell(value) -> str:
    if value is None:
        return "failed"
    if isinstance(value, str):
        return value
    return f"{value / MB:.1f}"


def format_table(rows: list[dict]) -> str:
    """A markdown table, models as rows, figures in MB, and a legend of the columns."""
    columns = [c for c in COLUMNS if any(c[0] in row for row in rows)]
    lines = [
        "| model | " + " | ".join(header for _, header, _ in columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for row in rows:
        lines.append(f"| {row['model']} | " + " | ".join(_cell(row.get(key, "")) for key, _, _ in columns) + " |")
    lines.append("")
    lines.append(f"MB = 10^6 bytes; float32, batch 1, {IMAGE_SIZE}x{IMAGE_SIZE} input, {NUM_CLASSES} classes.")
    lines.extend(f"- {header}: {legend}" for _, header, legend in columns)
    where = [
        f"- {row['model']}: largest op at `{row['op_fused_at']}`, largest fused unit at `{row['block_at']}`"
        for row in rows
    ]
    return "\n".join([*lines, *where])


def memory_table(labels: Iterable[str] = tuple(MODELS), runtimes: bool = True, log: Callable[[str], None] = print):
    """Measures every row; returns (rows, markdown table)."""
    with tempfile.TemporaryDirectory(prefix="ssdlite-memory-") as workdir:
        rows = [measure(label, Path(workdir), runtimes, log) for label in labels]
    return rows, format_table(rows)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS), metavar="MODEL")
    parser.add_argument("--no-runtimes", action="store_true", help="only the analytic bounds (seconds, not minutes)")
    parser.add_argument("--json", help="also write the figures (bytes) to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    rows, table = memory_table(args.models, not args.no_runtimes)
    print(table)
    write_json(args.json, {row["model"]: {k: v for k, v in row.items() if k != "model"} for row in rows})
    return rows


if __name__ == "__main__":
    main()

"""``bench.memory``'s bounds and arena planner, and ``bench.edge``'s table and goals, on hand-made inputs."""

import numpy as np
import pytest
import torch
from torch import nn

from bench.edge import BASELINE, Row, format_report, goal_results, interleave, why_missing
from bench.memory import (
    NOT_FREED,
    Lifetime,
    activation_bounds,
    distinct_bytes,
    format_table,
    interpreter_tensor_offsets,
    litert_lifetimes,
    plan_arena,
    simulate_litert_arena,
    tflite_graph,
)
from ssdlite import build_model
from ssdlite.deploy.export import ExportError
from ssdlite.deploy.onnx import fold_batchnorm


class Block(nn.Sequential):
    """A stand-in for a fused unit."""


def two_convs(block: bool = False) -> nn.Module:
    layers = [nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(8, 4, 1)]
    return (nn.Sequential(Block(*layers)) if block else nn.Sequential(*layers)).eval()


def test_op_bound_is_the_largest_input_plus_output_of_one_layer():
    # conv1: 3x10x10 in, 8x10x10 out = (300 + 800) * 4 bytes; the in-place ReLU reads and writes
    # the same 800 floats; conv2: 800 + 400 floats.
    bounds = activation_bounds(two_convs(), torch.zeros(1, 3, 10, 10), block=lambda m: False)
    assert bounds.op_bytes == (800 + 400) * 4
    assert bounds.op_name == "2"
    assert bounds.block_bytes == bounds.op_bytes  # no blocks: every op is its own unit


def test_a_fused_block_counts_only_what_goes_in_and_comes_out():
    bounds = activation_bounds(two_convs(block=True), torch.zeros(1, 3, 10, 10), block=lambda m: isinstance(m, Block))
    assert bounds.op_bytes == (800 + 400) * 4
    assert (bounds.block_bytes, bounds.block_name) == ((300 + 400) * 4, "0")


def test_distinct_bytes_counts_a_shared_storage_once():
    x = torch.zeros(2, 5)
    assert distinct_bytes(x, x.view(10), [x[0]]) == 40
    assert distinct_bytes((x, torch.zeros(3)), {"y": torch.zeros(1, dtype=torch.float64)}) == 40 + 12 + 8


def test_our_mobilenet_v2_needs_several_times_less_when_its_blocks_are_fused():
    """The issue's first estimate, and the MobileNetV2 paper's point (section 5.1), at 160 px."""
    model = build_model("ssdlite320_mobilenet_v2", num_classes=91, image_size=160).eval()
    x = torch.zeros(1, 3, 160, 160)
    unfused, fused = activation_bounds(model, x), activation_bounds(fold_batchnorm(model), x)
    # The 96-channel expansion at 80x80 in and out of its BatchNorm, run as an op of its own...
    assert unfused.op_bytes == 2 * 96 * 80 * 80 * 4
    # ...or, BatchNorm folded, in and out of the stride-2 depthwise conv that reads it.
    assert (fused.op_bytes, fused.op_name) == ((96 * 80 * 80 + 96 * 40 * 40) * 4, "backbone.features.2.conv.1.0")
    # Fused, the first block (32 -> 16 channels at 80x80) is the largest unit.
    assert (fused.block_bytes, fused.block_name) == ((32 + 16) * 80 * 80 * 4, "backbone.features.1")
    # Our SSDLite tap runs its block through forward_with_expansion; the method is the class's again after.
    assert "forward_with_expansion" not in vars(model.backbone.features[14])


def test_arena_reuses_the_place_of_a_tensor_that_is_dead():
    tensors = {
        0: Lifetime(100, 0, 1),
        1: Lifetime(200, 1, 2),  # placed first (largest): offset 0
        2: Lifetime(100, 2, 3),  # overlaps 1 only: above it, at 200 rounded up to 256
    }
    # 0 overlaps 1 (node 1): also above it; 2 does not overlap 0 and takes the same place.
    assert plan_arena(tensors) == (356, {1: 0, 0: 256, 2: 256})
    assert plan_arena(tensors, alignment=8)[0] == 300


def test_arena_puts_a_tensor_in_the_smallest_gap_that_fits():
    tensors = {
        0: Lifetime(64, 0),  # alive the whole run: placed first, at 0
        1: Lifetime(1000, 1, 1),  # then by size: 64..1064
        2: Lifetime(512, 1, 3),  # above 1 (aligned): 1088..1600
        3: Lifetime(256, 1, 2),  # above 2: 1600..1856
        4: Lifetime(240, 1, 3),  # above 3: 1856..2096
        5: Lifetime(128, 3, 3),  # 1 and 3 are dead by node 3: gaps 64..1088 and 1600..1856; the smaller wins
    }
    assert plan_arena(tensors) == (2096, {0: 0, 1: 64, 2: 1088, 3: 1600, 4: 1856, 5: 1600})


def test_lifetimes_follow_the_last_reader_and_an_in_place_add_reuses_its_input():
    ops = [
        ("CONCATENATION", [0, 0], [1]),
        ("CONCATENATION", [1, 1], [2]),
        ("ADD", [2, 3], [4]),  # 3 is a constant; 2 has no other reader: 4 takes its place
        ("CONCATENATION", [4, 1], [5]),
        ("CONCATENATION", [5, 0], [6]),
    ]
    sizes = {0: 64, 1: 128, 2: 256, 4: 256, 5: 384, 6: 448}
    assert litert_lifetimes(ops, sizes, [0], [6]) == {
        0: Lifetime(64, 0, NOT_FREED),
        1: Lifetime(128, 0, 3),
        2: Lifetime(256, 1, 3),  # as long as 4, which lives in it, is read
        5: Lifetime(384, 3, 4),
        6: Lifetime(448, 4, NOT_FREED),
    }
    # Read twice, the ADD's input must survive it: no sharing.
    shared_input = [*ops[:3], ("CONCATENATION", [4, 2], [5]), ops[4]]
    assert 4 in litert_lifetimes(shared_input, sizes, [0], [6])


def _tflite(shapes, constants, ops, inputs, outputs) -> bytes:
    flatbuffers = pytest.importorskip("flatbuffers")
    schema = pytest.importorskip("ai_edge_litert.schema_py_generated")
    model = schema.ModelT()
    model.version, model.buffers, model.operatorCodes = 3, [schema.BufferT()], []
    graph = schema.SubGraphT()
    graph.tensors, graph.operators, graph.inputs, graph.outputs = [], [], inputs, outputs
    for index, shape in enumerate(shapes):
        tensor = schema.TensorT()
        tensor.shape, tensor.type, tensor.name, tensor.buffer = list(shape), schema.TensorType.FLOAT32, f"t{index}", 0
        if index in constants:
            buffer = schema.BufferT()
            buffer.data = np.ones(shape, np.float32).tobytes()
            model.buffers.append(buffer)
            tensor.buffer = len(model.buffers) - 1
        graph.tensors.append(tensor)
    codes: dict[int, int] = {}
    for name, op_inputs, op_outputs in ops:
        code = getattr(schema.BuiltinOperator, name)
        if code not in codes:
            operator_code = schema.OperatorCodeT()
            operator_code.builtinCode, operator_code.deprecatedBuiltinCode, operator_code.version = code, code, 1
            codes[code] = len(model.operatorCodes)
            model.operatorCodes.append(operator_code)
        op = schema.OperatorT()
        op.opcodeIndex, op.inputs, op.outputs = codes[code], op_inputs, op_outputs
        if name == "CONCATENATION":
            op.builtinOptionsType, op.builtinOptions = (
                schema.BuiltinOptions.ConcatenationOptions,
                schema.ConcatenationOptionsT(),
            )
            op.builtinOptions.axis = 1
        else:
            op.builtinOptionsType, op.builtinOptions = schema.BuiltinOptions.AddOptions, schema.AddOptionsT()
        graph.operators.append(op)
    model.subgraphs = [graph]
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def test_simulated_arena_is_where_a_live_litert_interpreter_puts_every_tensor():
    ops = [
        ("CONCATENATION", [0, 0], [1]),
        ("CONCATENATION", [1, 1], [2]),
        ("ADD", [2, 3], [4]),
        ("CONCATENATION", [4, 1], [5]),
        ("CONCATENATION", [5, 0], [6]),
    ]
    data = _tflite([(1, 16), (1, 32), (1, 64), (1, 64), (1, 64), (1, 96), (1, 112)], {3}, ops, [0], [6])
    assert tflite_graph(data) == (ops, {0: 64, 1: 128, 2: 256, 4: 256, 5: 384, 6: 448}, [0], [6])
    pytest.importorskip("ai_edge_litert.interpreter")
    measured = interpreter_tensor_offsets(data)
    high_water, offsets = plan_arena(litert_lifetimes(*tflite_graph(data)))
    offsets[4] = offsets[2]  # in place
    assert measured == {tensor: (offsets[tensor], size) for tensor, size in tflite_graph(data)[1].items()}
    assert simulate_litert_arena(data) == high_water == max(o + s for o, s in measured.values())


def test_memory_table_has_models_as_rows_in_mb_and_says_what_is_missing():
    row = {"model": "m", "op_unfused": 19_660_800, "op_fused": 12_000_000, "block": 4_900_000}
    row |= {
        "op_fused_at": "a",
        "block_at": "b",
        "litert_builtin": "n/a (needs litert-torch)",
        "et_xnnpack_rss": None,
    }
    table = format_table([row])
    assert "| m | 19.7 | 12.0 | 4.9 | failed | n/a (needs litert-torch) |" in table
    assert "MB = 10^6 bytes" in table and "LiteRT sim." not in table


def _row(label, p50, file_bytes=2_000_000):
    return Row(label, file_bytes, [p50 * 0.9, p50, p50 * 1.5])


def test_edge_report_has_ratios_to_ort_float_and_the_goals():
    rows = [
        _row(BASELINE, 20.0),
        _row("ONNX Runtime INT8", 10.0),
        _row("LiteRT fp32", 25.0),
        _row("LiteRT INT8", 11.0),  # 1.10x ORT INT8: met
        Row("ExecuTorch fp32", missing="n/a: ExportError: no .pte"),
        _row("ExecuTorch INT8", 13.0),  # 0.65x ORT fp32: missed
    ]
    report = format_report(rows)
    assert "ONNX Runtime INT8        2.00    10.00    15.00        0.50x" in report
    assert "ExecuTorch fp32             - n/a: ExportError: no .pte" in report
    assert "LiteRT INT8 within 1.15x of ONNX Runtime INT8's time (<= 1.15x): met (1.10x)" in report
    assert "ExecuTorch INT8 at most 0.6x ONNX Runtime fp32's time (<= 0.6x): missed (0.65x)" in report
    assert rows[0].p95 == 30.0


def test_a_goal_without_timings_is_neither_met_nor_missed():
    rows = [_row(BASELINE, 20.0), _row("ONNX Runtime INT8", 10.0), Row("LiteRT INT8", missing="n/a: x")]
    results = goal_results(rows)
    assert [r["status"] for r in results] == ["n/a (no timings for LiteRT INT8)", "n/a (no timings for a row)"]
    assert all(r["ratio"] is None for r in results)


def test_missing_formats_are_na_with_the_reason_and_other_errors_are_failures():
    assert why_missing(ExportError("x.tflite: cannot export")) == "n/a: x.tflite: cannot export"
    assert why_missing(ModuleNotFoundError("no module", name="executorch")).startswith(
        "n/a: executorch is not installed"
    )
    assert why_missing(RuntimeError("boom")) == "failed: RuntimeError: boom"


def test_interleave_times_blocks_in_turn_from_a_rotating_start():
    order = []
    calls = {name: (lambda n=name: order.append(n)) for name in "abc"}
    times = interleave(calls, iterations=3, warmup=1, block=2)
    # warm-up, then per round each call's untimed run and its block: 2 timed runs, then the last 1
    assert "".join(order) == "abc" + "aaabbbccc" + "bbccaa"
    assert {name: len(t) for name, t in times.items()} == {"a": 3, "b": 3, "c": 3}

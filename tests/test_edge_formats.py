"""Edge formats as the main environment sees them: ``.tflite`` files loaded, clear errors where a tool is missing.

Writing ``.tflite`` files needs litert-torch (its own environment: tests/test_edge_tflite.py), and
``.pte`` files ExecuTorch (tests/test_edge_pte.py).
"""

import importlib.util
import sys

import numpy as np
import pytest
import torch

from ssdlite import Detector, save_checkpoint
from ssdlite.cli.export import main as export_main
from ssdlite.core.postprocess import class_scores
from ssdlite.runtime import ModelLoadError
from ssdlite.runtime.tflite import probabilities_to_logits

pytest.importorskip("ai_edge_litert", reason="needs the edge extra: pip install 'ssdlite[edge]'")


@pytest.mark.parametrize("score_function", ["softmax", "sigmoid"])
def test_probabilities_become_logits_that_give_them_back(score_function):
    logits = torch.randn(2, 50, 4, generator=torch.Generator().manual_seed(0)) * 4
    probabilities = class_scores(logits, score_function).numpy()
    recovered = torch.from_numpy(probabilities_to_logits(probabilities, score_function))
    assert recovered.shape == logits.shape
    assert torch.allclose(class_scores(recovered, score_function), torch.from_numpy(probabilities), atol=1e-6)


def test_scores_of_0_and_1_stay_finite():
    """An INT8 file's probabilities reach 0 and 1 exactly."""
    for score_function in ("softmax", "sigmoid"):
        logits = probabilities_to_logits(np.array([[0.0, 1.0], [0.0, 0.0]], dtype=np.float32), score_function)
        assert np.isfinite(logits).all()
        scores = class_scores(torch.from_numpy(logits), score_function)
        assert scores[0, 1] > 0.999 and scores[1].max() < 1e-6


@pytest.mark.skipif(importlib.util.find_spec("litert_torch") is not None, reason="litert-torch is installed here")
def test_tflite_export_without_litert_torch_names_the_extra(tmp_path, small_model, capsys):
    checkpoint = save_checkpoint(tmp_path / "small.pt", small_model, ["a", "b", "c"])
    assert export_main([str(checkpoint), "-o", str(tmp_path / "small.tflite")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "needs litert-torch" in err and "pip install 'ssdlite[tflite]'" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small.pt"]


def test_a_file_that_is_not_tflite_is_refused_in_one_line(tmp_path):
    path = tmp_path / "garbage.tflite"
    path.write_bytes(b"not a model at all")
    with pytest.raises(ModelLoadError, match="garbage.tflite: not a TFLite flatbuffer"):
        Detector.load(path)


def test_running_tflite_without_litert_names_the_extra(tmp_path, monkeypatch):
    path = tmp_path / "model.tflite"
    path.write_bytes(b"\0" * 16)
    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    with pytest.raises(ModelLoadError, match=r"needs ai-edge-litert .*pip install 'ssdlite\[edge\]'"):
        Detector.load(path)

"""The `ssdlite` command: subcommands, the old `python -m ssdlite.X` names, one-line errors."""

import importlib
import subprocess
import sys

import pytest

from ssdlite import save_checkpoint
from ssdlite.cli import COMMANDS, main

NAMES = ["cat", "dog", "bird"]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=120)


def test_help_lists_every_subcommand():
    result = run("-m", "ssdlite", "--help")
    assert result.returncode == 0
    for name in ("detect", "serve", "train", "export", "zoo", "convert"):
        assert f"\n    {name} " in result.stdout
    assert set(COMMANDS) == {"detect", "serve", "train", "export", "zoo", "convert"}


@pytest.mark.parametrize("name", ["detect", "export", "zoo", "convert"])
def test_the_old_module_names_still_run_their_command(name):
    result = run("-m", f"ssdlite.{name}", "--help")
    assert result.returncode == 0 and f"usage: ssdlite {name}" in result.stdout, result.stderr


def test_unknown_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bogus"])
    assert exit_info.value.code == 2 and "invalid choice: 'bogus'" in capsys.readouterr().err


def test_a_missing_extra_is_one_line_naming_it(monkeypatch, capsys):
    real_import = importlib.import_module

    def without_fastapi(name, *args):
        if name == "service.__main__":
            raise ModuleNotFoundError("No module named 'fastapi'", name="fastapi")
        return real_import(name, *args)

    monkeypatch.setattr(importlib, "import_module", without_fastapi)
    assert main(["serve"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: `ssdlite serve` needs fastapi, which is not installed; install the extra: pip install 'ssdlite[serve]'"
    )


def test_export_refuses_a_format_it_cannot_write_and_writes_nothing(tmp_path, small_model, capsys):
    checkpoint = save_checkpoint(tmp_path / "small.pt", small_model, NAMES)
    for output in ("model.tf", "model"):
        assert main(["export", str(checkpoint), "-o", str(tmp_path / output)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {tmp_path / output}: cannot export to a") and "formats: .onnx" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small.pt"]

    onnx_file = tmp_path / "small.onnx"
    assert main(["export", str(checkpoint), "-o", str(onnx_file)]) == 0
    assert main(["export", str(onnx_file), "-o", str(tmp_path / "again.onnx")]) == 2
    assert "export reads a checkpoint (.pt), not a file of the onnx format" in capsys.readouterr().err


def test_detect_on_a_checkpoint_through_the_command(tmp_path, small_model, capsys):
    from ssdlite.images import SAMPLE_PHOTOS

    checkpoint = save_checkpoint(tmp_path / "small.pt", small_model, NAMES)
    photo = SAMPLE_PHOTOS / "astronaut.jpg"
    assert main(["detect", str(photo), "--model", str(checkpoint), "--score-threshold", "0"]) == 0
    assert '"image": "' + str(photo) in capsys.readouterr().out
    assert main(["detect", str(photo), "--model", str(checkpoint), "--backend", "torch", "--device", "cuda:7"]) == 2
    assert capsys.readouterr().err.startswith("error: device 'cuda:7' asked for, but torch sees")


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ([], "tf-pedestrian-int8"),  # the CPU (--device cpu is the default)
        (["--backend", "torch"], "tf-pedestrian"),  # torch runs the float checkpoint, not the INT8 .onnx
        (["--device", "auto"], "tf-pedestrian-int8"),
        (["--model", "tf-pedestrian"], "tf-pedestrian"),  # float stays one option away
    ],
)
def test_detect_default_model_is_int8_on_the_cpu(monkeypatch, capsys, options, expected):
    import torch

    from ssdlite.errors import SSDLiteError
    from ssdlite.images import SAMPLE_PHOTOS
    from ssdlite.runtime import Detector

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    loaded = []

    def load(source, **kwargs):
        loaded.append(str(source))
        raise SSDLiteError("not loading models in this test")

    monkeypatch.setattr(Detector, "load", load)
    assert main(["detect", str(SAMPLE_PHOTOS / "astronaut.jpg"), *options]) == 2
    assert loaded == [expected]

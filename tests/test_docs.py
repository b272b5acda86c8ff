"""The documentation against the code: the tables of docs/models.md and the README's links."""

import re
import unicodedata
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from ssdlite import PRESETS, build_model
from ssdlite.weights.zoo import MODELS

ROOT = Path(__file__).resolve().parent.parent
MODELS_PAGE = ROOT / "docs" / "models.md"
README = ROOT / "README.md"


def markdown_table(path: Path, heading: str) -> list[dict[str, str]]:
    """The rows of the first table in ``path`` under ``heading``, as {column: cell} with backticks removed."""
    lines = path.read_text(encoding="utf-8").splitlines()
    assert heading in lines, f"{path.name} has no heading {heading!r}"
    header: list[str] | None = None
    rows: list[dict[str, str]] = []
    fenced = False
    for line in lines[lines.index(heading) + 1 :]:
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if fenced:
            continue
        if line.startswith("#"):
            break  # the next section: the table must come before it
        if not line.startswith("|"):
            if header is not None:
                break
            continue
        cells = [cell.strip().strip("`") for cell in line.strip().strip("|").split("|")]
        if header is None:
            header = cells
        elif not set("".join(cells)) <= set("-: "):
            assert len(cells) == len(header), f"{path.name}: row with {len(cells)} cells under {len(header)} columns"
            rows.append(dict(zip(header, cells, strict=True)))
    assert rows, f"{path.name}: no table under {heading!r}"
    return rows


def preset_rows() -> dict[str, dict[str, str]]:
    rows = markdown_table(MODELS_PAGE, "## Presets")
    names = [row["preset"] for row in rows]
    assert len(names) == len(set(names)), f"a preset is listed twice: {names}"
    return {row["preset"]: row for row in rows}


def test_preset_table_lists_every_preset():
    assert sorted(preset_rows()) == sorted(PRESETS)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_table_row_matches_config(name):
    row = preset_rows().get(name)
    assert row is not None, f"docs/models.md has no row for {name}"
    config = PRESETS[name]
    assert {
        "backbone": row["backbone"],
        "input": row["input"],
        "anchors": row["anchors"],
        "scores": row["scores"],
    } == {
        "backbone": config.backbone,
        "input": str(config.image_size),
        "anchors": config.anchor_style,
        "scores": config.postprocess.score_function,
    }


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_table_size_matches_model(name):
    row = preset_rows().get(name)
    assert row is not None, f"docs/models.md has no row for {name}"
    model = build_model(name).eval()  # 91 classes, as the table says
    size = PRESETS[name].image_size
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, size, size))
    parameters = sum(p.numel() for p in model.parameters())
    assert {"params": row["params"], "MAdds": row["MAdds"]} == {
        "params": f"{parameters / 1e6:.2f}M",
        "MAdds": f"{counter.get_total_flops() / 2 / 1e9:.2f}B",
    }


def test_zoo_table_lists_every_zoo_model():
    names = [row["name"] for row in markdown_table(MODELS_PAGE, "## Model zoo")]
    assert len(names) == len(set(names)), f"a zoo model is listed twice: {names}"
    assert sorted(names) == sorted(MODELS)


def heading_anchors(path: Path) -> set[str]:
    """The anchors MkDocs' toc extension gives the headings of ``path`` (its default slugify)."""
    anchors, fenced = set(), False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced and re.match(r"#{1,6} ", line):
            text = re.sub(r"[`*_]", "", line.lstrip("#").strip())
            text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
            text = re.sub(r"[^\w\s-]", "", text).strip().lower()
            anchors.add(re.sub(r"[-\s]+", "-", text))
    return anchors


def relative_links(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    text = re.sub(r"^```.*?^```", "", text, flags=re.DOTALL | re.MULTILINE)  # no links in code blocks
    text = re.sub(r"`[^`\n]*`", "", text)  # nor in code spans
    targets = re.findall(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", text)  # [text](target), ![alt](target)
    targets += re.findall(r"^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", text, flags=re.MULTILINE)  # [label]: target
    targets += re.findall(r"<(?:img|a)\s[^>]*?(?:src|href)=\"([^\"]+)\"", text)
    return [target for target in targets if not re.match(r"[a-z][a-z0-9+.-]*:|#|//", target, flags=re.IGNORECASE)]


def test_readme_relative_links_point_to_files():
    links = relative_links(README)
    assert links, "README.md links to no file: the parser is broken"
    broken = []
    for link in links:
        target, _, fragment = link.partition("#")
        path = (README.parent / target).resolve()
        if not path.exists():
            broken.append(f"{link}: no such file")
        elif not path.is_relative_to(ROOT):
            broken.append(f"{link}: outside the repository")
        elif fragment and path.suffix == ".md" and fragment not in heading_anchors(path):
            broken.append(f"{link}: {target} has no heading #{fragment}")
    assert not broken, "broken links in README.md:\n" + "\n".join(broken)

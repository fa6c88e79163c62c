"""The figures in README.md and docs/ are generated from committed results folders (bench/update_docs.py): every
generated block matches its source, and every linked image exists. A hand edit of a block fails here."""

import importlib.util
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "bench", "update_docs.py")


def _module():
    spec = importlib.util.spec_from_file_location("update_docs", SCRIPT)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_committed_docs_match_their_results_folders():
    r = subprocess.run([sys.executable, SCRIPT, "--check"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr


def test_check_catches_a_hand_edit_and_a_missing_image(tmp_path, monkeypatch):
    mod = _module()
    monkeypatch.setattr(mod, "ROOT", str(tmp_path))
    (tmp_path / "res").mkdir()
    (tmp_path / "res" / "results.md").write_text(
        "# Benchmark results\n\n- date: X\n\n## attention\n\n| a |\n|---|\n| 1 |\n"
    )
    (tmp_path / "res" / "out.txt").write_text("recommendation: 256\n")
    (tmp_path / "res" / "p.png").write_bytes(b"png")
    doc = tmp_path / "doc.md"
    doc.write_text(
        "intro\n<!-- include res/results.md -->\nstale\n<!-- end include -->\n"
        "<!-- include res/out.txt text -->\n<!-- end include -->\n![p](res/p.png)\n"
    )
    assert len(mod.refresh("doc.md", check=True)) == 2  # both blocks differ from their sources
    assert mod.refresh("doc.md", check=False) == []
    text = doc.read_text()
    assert "- date: X\n\n#### attention\n\n| a |" in text and "stale" not in text  # title dropped, demoted
    assert "```\nrecommendation: 256\n```\n" in text
    assert mod.refresh("doc.md", check=True) == []
    doc.write_text(text.replace("| 1 |", "| 2 |"))  # a number typed by hand
    assert mod.refresh("doc.md", check=True) == ["doc.md: the block from res/results.md differs from its source"]
    doc.write_text(text.replace("res/p.png", "res/gone.png"))
    assert mod.refresh("doc.md", check=True) == ["doc.md: image res/gone.png does not exist"]


def test_malformed_blocks_are_refused_not_skipped(tmp_path, monkeypatch):
    """An include line the syntax does not take (a typo, a trailing space, no end marker) is an error: it would
    otherwise escape --check, or swallow the next block."""
    import pytest

    mod = _module()
    monkeypatch.setattr(mod, "ROOT", str(tmp_path))
    (tmp_path / "a.txt").write_text("A\n")
    ok = "<!-- include a.txt text -->\n```\nA\n```\n<!-- end include -->\n"
    for bad in (
        "<!-- include a.txt text --> \nhand edit\n<!-- end include -->\n",  # trailing space
        "<!-- include a.txt txt -->\nhand edit\n<!-- end include -->\n",  # typo
        "<!-- include a.txt text -->\nno end marker\n",  # swallows the next block without the guard
    ):
        (tmp_path / "doc.md").write_text(bad + ok)
        with pytest.raises(ValueError, match="not a complete include block"):
            mod.refresh("doc.md", check=True)
    (tmp_path / "doc.md").write_text(ok)
    assert mod.refresh("doc.md", check=True) == []


def test_results_md_cells(tmp_path):
    """NaN and inf are said as they are (a finished run is never lost to its table); a '|' in a value is escaped,
    and a column cut still finds its cells."""
    mod = _module()
    md = mod.results_md('{"case": "a|b", "ms": NaN, "x": 1.5}\n{"case": "c", "ms": Infinity, "x": 2.5}\n', "cmd", {})
    assert "| a\\|b | nan | 1.5 |" in md and "| c | inf | 2.5 |" in md
    assert mod._select(md.splitlines(), ["x", "case"], "t")[-2:] == [
        "| 1.5 | a\\|b |",
        "| 2.5 | c |",
    ]  # private: the cut

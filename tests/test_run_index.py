"""The run pages and the all-runs page: they parse, every image and link exists, every run is
listed; a screenshot in headless Chromium where one is installed."""
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from utils import run_index
from utils.runs import find_run

README = Path(__file__).resolve().parents[1] / "README.md"


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.targets, self.tags = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        attrs = dict(attrs)
        target = attrs.get("src") if tag == "img" else attrs.get("href") if tag == "a" else None
        if target:
            self.targets.append(target)


def _check_page(page: Path) -> _Links:
    parser = _Links()
    parser.feed(page.read_text())
    parser.close()
    for target in parser.targets:
        assert (page.parent / target).exists(), f"{page} links a missing {target}"
    return parser


def test_pages_of_runs_and_benchmarks(tiny_gan, tmp_path):
    from GAN_run_scripts import ganmain
    ganmain.main(tiny_gan)
    ganmain.main([*tiny_gan, "--EPOCHS=2"])
    (tmp_path / "saved_plots" / "compare" / "001-compare-x").mkdir(parents=True)
    bench = tmp_path / "saved_plots" / "compare" / "001-compare-x"
    shutil.copy(find_run(tmp_path, "gan").plots / "losses.png", bench / "bars.png")
    run_index.write_results_page(bench, "# Title\n\n| a | b |\n|---|---|\n| 1 | 2 |\n")
    parsed = _check_page(bench / "results.html")
    assert parsed.tags.count("th") == 2 and parsed.tags.count("td") == 2
    assert "bars.png" in parsed.targets
    for name in ("001", "002"):
        run = find_run(tmp_path, "gan", name)
        links = _check_page(run.plots / "index.html")
        text = (run.plots / "index.html").read_text()
        assert {"progression.png", "losses.png", "samples.png"} <= set(links.targets)
        assert "LATENT_DIM" in text and "train_g_loss" in text  # constants, final/best metrics
        assert run_index.caption("gan", "progression.png") in text
    everything = tmp_path / "saved_plots" / "index.html"
    links = _check_page(everything)
    runs = [p.name for p in (tmp_path / "saved_plots" / "gan").iterdir()]
    assert len(runs) == 2 and all(f"gan/{r}/index.html" in links.targets for r in runs)
    assert "compare/001-compare-x/results.html" in links.targets
    assert everything.read_text().count("<tr>") == 3 and "<script>" in everything.read_text()


def test_captions_use_the_readme_words():
    """Every captioned file is one the README's table of outputs describes."""
    readme = README.read_text()
    for (_, name), words in run_index.CAPTIONS.items():
        assert f"`{name}`" in readme, name
        assert words
    assert run_index.caption("vae", "traversal_z3.png").startswith("traversal of latent z3")


def test_markdown_tables_become_html_tables():
    out = run_index.markdown_to_html("# A\n\nsome text\n\n| x | y |\n|---|---:|\n| 1 | <b> |")
    assert out.startswith("<h1>A</h1>") and "<p>some text</p>" in out
    assert "<th>x</th>" in out and "<td>&lt;b&gt;</td>" in out and "---" not in out


def _browser():
    return next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome")
                 if shutil.which(b)), None)


@pytest.mark.skipif(_browser() is None, reason="no headless Chromium installed")
def test_pages_render_in_headless_chromium(tiny_gan, tmp_path):
    from GAN_run_scripts import ganmain
    ganmain.main(tiny_gan)
    page = find_run(tmp_path, "gan").plots / "index.html"
    shot = tmp_path / "shot.png"
    for target in (page, tmp_path / "saved_plots" / "index.html"):
        subprocess.run([_browser(), "--headless", "--no-sandbox", "--disable-gpu",
                        f"--screenshot={shot}", "--window-size=1200,900", target.as_uri()],
                       check=True, capture_output=True, timeout=120)
        assert shot.stat().st_size > 10_000  # a rendered page, not a blank one
        dom = subprocess.run([_browser(), "--headless", "--no-sandbox", "--disable-gpu",
                              "--dump-dom", target.as_uri()], check=True, capture_output=True,
                             text=True, timeout=120).stdout
        assert re.search(r"<img[^>]+src=", dom)

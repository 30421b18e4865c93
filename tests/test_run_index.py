"""The run pages and the all-runs page: they parse, every image and link exists, every run is
listed; a screenshot in headless Chromium where one is installed."""
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import pytest

from utils import run_index
from utils.runs import find_run

OUTPUTS = Path(__file__).resolve().parents[1] / "docs" / "scripts.md"  # what each script writes


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.targets, self.tags = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        attrs = dict(attrs)
        target = attrs.get("src") if tag == "img" else attrs.get("href") if tag == "a" else None
        if target:  # links are './'-relative and percent-encoded: compare them as paths
            self.targets.append(unquote(target).removeprefix("./"))


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


def test_a_damaged_run_is_marked_and_every_other_run_still_indexed(tiny_gan, tmp_path):
    """A torn last line in one run's metrics.jsonl (what a kill leaves), a string where its
    eval FID should be, or a config.json that is not an object, crashed every other run's
    checkpoint through the all-runs page; now each is read as far as it is whole."""
    from GAN_run_scripts import ganmain
    ganmain.main(tiny_gan)
    first = find_run(tmp_path, "gan")
    with (first.plots / "metrics.jsonl").open("a") as handle:
        handle.write('{"epoch": 2, "train_g_lo')  # torn
    (first.plots / "eval").mkdir()
    (first.plots / "eval" / "metrics.json").write_text('{"fid": "n/a", "real_vs_real": 3, '
                                                        '"class_accuracy": [1]}')
    ganmain.main(tiny_gan)  # a healthy run in the same SAVE_ROOT writes its pages
    page = (tmp_path / "saved_plots" / "index.html").read_text()
    assert page.count("<tr>") == 3 and first.name in page
    assert (first.plots / "index.html").is_file()
    assert ganmain.main([*tiny_gan, f"--RESUME={first.name}", "--EPOCHS=2"]) is not None
    from utils.runs import read_records
    assert [r["epoch"] for r in read_records(first.metrics_path)] == [1, 2]  # the torn line gone
    (first.plots / "config.json").write_text("[1, 2]")
    (first.plots / "metrics.jsonl").write_bytes(b"\xff\xfe{]\n")
    monkey = run_index.run_summary
    try:  # and a run whose summary fails outright is listed as damaged, not fatal
        run_index.run_summary = lambda plots: 1 / 0 if plots == first.plots else monkey(plots)
        page = run_index.write_all_runs_index(tmp_path).read_text()
    finally:
        run_index.run_summary = monkey
    assert "damaged: ZeroDivisionError" in page and page.count("<tr>") == 3


def test_pages_escape_what_they_show(tmp_path):
    """A metrics value with markup, and folders named like a javascript: link, stay text and
    paths: no tag, attribute or scheme gets through."""
    root = tmp_path / "saved_plots"
    evil = root / "javascript:alert(1)" / "001-x-<b>"
    (evil / "eval").mkdir(parents=True)
    (evil / "config.json").write_text('{"DATASET": "<script>alert(1)</script>"}')
    (evil / "eval" / "metrics.json").write_text(
        '{"fid": 1.5, "note": "<img src=x onerror=alert(1)>", "class_accuracy": 0.5}')
    (evil / "metrics.jsonl").write_text('{"epoch": 1, "<i>loss</i>": 0.5}\n')
    shutil.copy(Path(__file__).parent.parent / "saved_plots" / "showcase" /
                next(p.name for p in (Path(__file__).parent.parent / "saved_plots" /
                                      "showcase").glob("*.png")), evil / "javascript:x.png")
    run_index.write_run_index(evil)
    everything = run_index.write_all_runs_index(tmp_path)
    for page in (everything, evil / "index.html"):
        text = page.read_text()
        parsed = _Links()
        parsed.feed(text)
        raw = re.findall(r"(?:href|src)='([^']*)'", text)
        assert raw and all(t.startswith(("./", "../")) for t in raw), raw
        assert "<script>alert" not in text and "<img src=x" not in text and "<i>" not in text
        assert set(parsed.tags) <= {"html", "head", "meta", "title", "style", "body", "p", "a",
                                    "h1", "h2", "table", "thead", "tbody", "tr", "th", "td",
                                    "ul", "li", "img", "figure", "figcaption", "b", "script"}
    _check_page(evil / "index.html")
    _check_page(everything)


def test_captions_use_the_output_table_words():
    """Every captioned file is one docs/scripts.md's table of outputs describes."""
    table = OUTPUTS.read_text()
    for (_, name), words in run_index.CAPTIONS.items():
        assert f"`{name}`" in table, name
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

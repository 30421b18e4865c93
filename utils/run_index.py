"""HTML pages to look at runs in a browser: `saved_plots/<family>/<run>/index.html` (the run's
constants, final and best metrics, every figure of the run and its eval/ folder with a caption,
newest first) and `saved_plots/index.html` (one row per run of every family, sortable, with a
thumbnail and links; the benchmarks' result pages below). Plain HTML and CSS, no network; the
all-runs page sorts with a few lines of inline JavaScript. The captions say what docs/scripts.md's
table of outputs says about each file.
"""
import html
import json
import time
from pathlib import Path
from urllib.parse import quote

from utils import distributed, files
from utils.runs import read_records

# (family or "*", file name) -> what the figure shows (the words of docs/scripts.md's output table)
CAPTIONS = {
    ("gan", "progression.png"): "samples from fixed latents across epochs",
    ("gan", "losses.png"): "G/D losses and mean D(x), D(G(z)), train and held-out",
    ("gan", "samples.png"): "samples from the fixed latents after the last epoch",
    ("*", "samples_grid.png"): "a grid of samples drawn by the eval script",
    ("*", "interpolations.png"): "spherical interpolations between latent pairs",
    ("vae", "losses.png"): "total, KL + recon, reconstruction, KL, beta, active dims; train "
                           "and test",
    ("vae", "progression.png"): "fixed prior samples across epochs",
    ("*", "reconstructions.png"): "held-out images (top) and their reconstructions",
    ("*", "prior_samples.png"): "decoded samples of the prior",
    ("*", "traversal_dims.png"): "a row per active latent, ordered by KL and labelled with the "
                                 "factor it captures",
    ("*", "factor_traversals.png"): "for each ground-truth factor, the latent that captures it "
                                    "best, traversed on several images",
    ("*", "mi_matrix.png"): "mutual information of every latent with every factor",
    ("diffusion", "progression.png"): "EMA samples from fixed noise, per epoch",
    ("diffusion", "losses.png"): "loss (log scale) with the loss per quarter of the timestep "
                                 "range, and the held-out loss",
    ("*", "forward_diffusion.png"): "the forward process noising training images",
    ("*", "forward_schedules.png"): "the linear and cosine schedules and the flow path on one "
                                    "image, with their log-SNR curves",
    ("*", "reverse_diffusion.png"): "x_t and the predicted x0 while sampling",
    ("*", "noised_real.png"): "held-out images noised to t, then denoised: where the model "
                              "stops reconstructing and starts inventing",
    ("*", "sampler_comparison.png"): "the compared samplers on the same noise, with seconds "
                                     "per image",
    ("ldm_autoencoder", "losses.png"): "reconstruction, KL, adversarial, feature matching, D "
                                       "loss and outputs, held-out PSNR, weights",
    ("*", "latent_histogram.png"): "scaled latents against N(0, 1)",
    ("ldm", "progression.png"): "one guided sample per class across epochs",
    ("ldm", "losses.png"): "loss (log scale) with the loss per quarter of the timestep range",
    ("*", "cfg_sweep.png"): "rows classes, columns guidance scales",
    ("*", "forward_latent.png"): "the forward process in latent space, decoded",
    ("*", "hue_histogram.png"): "the hues of the samples' coloured pixels against the real "
                                "images'",
    ("*", "per_run.png"): "a row per run",
    ("*", "overlay.png"): "the runs on shared axes",
    ("*", "bars.png"): "the benchmark's measurements as bar charts",
}
_THUMBNAILS = ("eval/samples_grid.png", "samples.png", "eval/cfg_sweep.png", "prior_samples.png",
               "progression.png", "reconstructions.png")  # the first that exists
_STYLE = """body{font-family:sans-serif;margin:1.5em;max-width:1200px}
table{border-collapse:collapse;font-size:90%}td,th{border:1px solid #ccc;padding:3px 6px}
th{background:#eee;cursor:pointer}figure{display:inline-block;margin:.5em;vertical-align:top}
figure img{max-width:560px;border:1px solid #ddd}figcaption{max-width:560px;font-size:90%}
img.thumb{height:64px}.num{text-align:right}"""
_SORT = """<script>
document.querySelectorAll('th').forEach((th,i)=>th.onclick=()=>{
const b=th.closest('table').tBodies[0],r=[...b.rows],d=th.dataset.d=th.dataset.d=='1'?'-1':'1';
const k=x=>{const t=x.cells[i].dataset.v??x.cells[i].textContent;const n=parseFloat(t);
return isNaN(n)?t:n};r.sort((x,y)=>(k(x)>k(y)?1:k(x)<k(y)?-1:0)*d).forEach(x=>b.append(x))})
</script>"""


def caption(family: str, name: str) -> str:
    """What a figure file shows; `traversal_z<i>.png` and unknown files get generic words."""
    if name.startswith("traversal_z"):
        return f"traversal of latent {name[len('traversal_'):-4]} from the prior mean"
    return CAPTIONS.get((family, name), CAPTIONS.get(("*", name), name))


def _page(title: str, body: str, script: str = "") -> str:
    return (f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}"
            f"</title><style>{_STYLE}</style></head><body>\n{body}\n{script}</body></html>\n")


def _read_json(path: Path) -> dict | None:
    """A JSON object file, or None when it is missing, unreadable, torn or not an object."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _records(plots: Path) -> list[dict]:
    return read_records(plots / "metrics.jsonl")


def _number(value) -> float | None:
    """A JSON value as a number to show, or None (strings, booleans, lists: a damaged file)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    return None


def _href(relative: str) -> str:
    """A relative link that cannot carry a scheme (a folder named 'javascript:...' stays a
    path): './' and every path character percent-encoded, then HTML-escaped."""
    return html.escape("./" + quote(relative, safe="/"), quote=True)


def run_summary(plots: Path) -> dict:
    """What the pages show of a run: family, data set, date, epochs, training minutes, final
    eval scores (FID, its floor, class accuracy), thumbnail."""
    config = _read_json(plots / "config.json") or {}
    records, metrics = _records(plots), _read_json(plots / "eval" / "metrics.json") or {}
    floor = metrics.get("real_vs_real")
    thumb = next((t for t in _THUMBNAILS if (plots / t).is_file()), None)
    return {"family": plots.parent.name, "run": plots.name,
            "dataset": str(config.get("DATASET", "")),
            "date": time.strftime("%Y-%m-%d %H:%M", time.localtime(plots.stat().st_mtime)),
            "epochs": (_number(records[-1].get("epoch")) or 0) if records else 0,
            "minutes": sum(_number(r.get("seconds")) or 0 for r in records) / 60,
            "fid": _number(metrics.get("fid")),
            "fid_floor": _number(floor.get("fid")) if isinstance(floor, dict) else None,
            "class_accuracy": _number(metrics.get("class_accuracy")), "thumbnail": thumb}


def _metric_rows(records: list[dict]) -> str:
    rows = []
    for key in dict.fromkeys(k for r in records for k in r):
        values = [r[key] for r in records if _number(r.get(key)) is not None]
        if key in ("epoch", "step") or not values:
            continue
        lower = any(word in key for word in ("loss", "mse", "seconds"))
        best = min(values) if lower else max(values)
        rows.append(f"<tr><td>{html.escape(key)}</td><td class=num>{values[-1]:.4g}</td>"
                    f"<td class=num>{best:.4g}</td></tr>")
    return "".join(rows)


def write_run_index(plots: Path) -> Path:
    """saved_plots/<family>/<run>/index.html."""
    plots = Path(plots)
    config, records = _read_json(plots / "config.json") or {}, _records(plots)
    summary = run_summary(plots)
    parts = [f"<p><a href='../../index.html'>all runs</a></p><h1>{html.escape(plots.name)}</h1>",
             f"<p>{html.escape(summary['family'])} on {html.escape(summary['dataset'])}, "
             f"{summary['epochs']} epochs, {summary['minutes']:.1f} training minutes</p>"]
    scores = _read_json(plots / "eval" / "metrics.json")
    if scores:
        keys = [k for k, v in scores.items() if _number(v) is not None]
        parts.append("<h2>Scores (eval)</h2><table>" + "".join(
            f"<tr><td>{html.escape(k)}</td><td class=num>{scores[k]:.4g}</td></tr>"
            for k in keys) + "</table>")
    if records:
        parts.append("<h2>Metrics per epoch: final and best (lowest loss or time, highest "
                     "otherwise)</h2><table><tr><th>metric</th><th>final</th><th>best</th></tr>"
                     + _metric_rows(records) + "</table>")
    figures = sorted((p for folder in (plots, plots / "eval") if folder.is_dir()
                      for p in folder.glob("*.png")), key=lambda p: -p.stat().st_mtime)
    parts.append("<h2>Figures, newest first</h2>" + "".join(
        f"<figure><a href='{_href(p.relative_to(plots).as_posix())}'><img src='"
        f"{_href(p.relative_to(plots).as_posix())}' alt='{html.escape(p.name)}'></a>"
        f"<figcaption><b>{html.escape(p.relative_to(plots).as_posix())}</b>: "
        f"{html.escape(caption(summary['family'], p.name))}</figcaption></figure>"
        for p in figures))
    parts.append("<h2>Constants</h2><table>" + "".join(
        f"<tr><td>{html.escape(k)}</td><td>{html.escape(repr(v))}</td></tr>"
        for k, v in config.items()) + "</table>")
    path = plots / "index.html"
    files.write_text(path, _page(plots.name, "\n".join(parts)))
    return path


def _cell(value, fmt: str = "{:.3g}") -> str:
    value = _number(value)
    if value is None:
        return "<td data-v=''></td>"
    return (f"<td class=num data-v='{html.escape(str(value), quote=True)}'>"
            f"{html.escape(fmt.format(value))}</td>")


def _result_page(folder: Path) -> Path | None:
    """A benchmark's or an experiment's page: results.html, else its first markdown table."""
    if (folder / "results.html").is_file():
        return folder / "results.html"
    return next(iter(sorted(folder.glob("*.md"))), None)


def markdown_to_html(text: str) -> str:
    """The subset of markdown the benchmarks write: # headings, | tables |, paragraphs."""
    out, table = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if not all(set(c) <= set("-: ") for c in cells):
                tag = "th" if not table else "td"
                table.append("<tr>" + "".join(f"<{tag}>{html.escape(c)}</{tag}>"
                                              for c in cells) + "</tr>")
            continue
        if table:
            out.append("<table>" + "".join(table) + "</table>")
            table = []
        level = len(line) - len(line.lstrip("#"))
        if level and line[level:level + 1] == " ":
            out.append(f"<h{level}>{html.escape(line[level + 1:])}</h{level}>")
        elif line.strip():
            out.append(f"<p>{html.escape(line)}</p>")
    return "\n".join(out)


def write_results_page(folder: Path, markdown: str) -> Path:
    """folder/results.html: a benchmark's results.md as HTML, with its PNG charts, linked from
    the all-runs page."""
    folder = Path(folder)
    charts = "".join(f"<figure><img src='{_href(p.name)}' alt='{html.escape(p.name)}'>"
                     f"<figcaption>{html.escape(caption('*', p.name))}</figcaption></figure>"
                     for p in sorted(folder.glob("*.png")))
    path = folder / "results.html"
    files.write_text(path, _page(folder.name, "<p><a href='../../index.html'>all runs</a></p>"
                          + markdown_to_html(markdown) + charts))
    write_all_runs_index(folder.parent.parent.parent)
    return path


def _run_row(plots: Path, rel: str) -> str:
    """One run's row of the all-runs page; a run whose files cannot be read is marked so,
    never a reason to fail the page of every other run."""
    link = f"<a href='{_href(rel + '/index.html')}'>{html.escape(plots.name)}</a>"
    try:
        s = run_summary(plots)
    except Exception as err:  # noqa: BLE001 - one damaged run must not hide the others
        return (f"<tr><td>{html.escape(plots.parent.name)}</td><td>{link}</td><td colspan=8>"
                f"damaged: {html.escape(f'{type(err).__name__}: {err}')}</td></tr>")
    thumb = (f"<img class=thumb src='{_href(rel + '/' + s['thumbnail'])}' alt=''>"
             if s["thumbnail"] else "")
    return (f"<tr><td>{html.escape(s['family'])}</td><td>{link}</td><td>"
            f"{html.escape(s['dataset'])}</td><td>{s['date']}</td>"
            f"{_cell(s['epochs'], '{}')}{_cell(s['minutes'], '{:.1f}')}"
            f"{_cell(s['fid'])}{_cell(s['fid_floor'])}{_cell(s['class_accuracy'])}"
            f"<td>{thumb}</td></tr>")


def write_all_runs_index(save_root) -> Path:
    """saved_plots/index.html: every run folder with a config.json, and the results page of
    every other folder (benchmarks, experiments) that has one."""
    root = Path(save_root) / "saved_plots"
    runs = sorted((p for p in root.glob("*/*") if (p / "config.json").is_file()),
                  key=lambda p: (p.parent.name, p.name))
    head = ("<tr><th>family</th><th>run</th><th>data set</th><th>date</th><th>epochs</th>"
            "<th>training minutes</th><th>FID</th><th>floor</th><th>class accuracy</th>"
            "<th>samples</th></tr>")
    rows = [_run_row(plots, plots.relative_to(root).as_posix()) for plots in runs]
    pages = [_result_page(p) for p in sorted(root.glob("*/*"))
             if p.is_dir() and not (p / "config.json").is_file()]
    links = "".join(f"<li><a href='{_href(page.relative_to(root).as_posix())}'>"
                    f"{html.escape(page.parent.relative_to(root).as_posix())}</a></li>"
                    for page in pages if page is not None)
    body = (f"<h1>All runs ({len(rows)})</h1><p>Click a column to sort.</p><table><thead>"
            f"{head}</thead><tbody>{''.join(rows)}</tbody></table>"
            f"<h2>Benchmark results</h2><ul>{links or '<li>none yet</li>'}</ul>")
    path = root / "index.html"
    files.write_text(path, _page("All runs", body, _SORT))
    return path


def write_indexes(plots: Path) -> None:
    """The run's page and the all-runs page (main process only; a failure to write a page
    never stops training: it prints a note)."""
    if not distributed.is_main():
        return
    plots = Path(plots)
    try:
        write_run_index(plots)
        if plots.parent.parent.name == "saved_plots":  # saved_plots/<family>/<run>
            write_all_runs_index(plots.parent.parent.parent)
    except Exception as err:  # noqa: BLE001 - a page is never worth a run
        print(f"note: could not write the run's index.html ({type(err).__name__}: {err})")

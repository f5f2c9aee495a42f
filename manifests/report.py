"""The run report: `RUN/report/index.html`, a static page a curator opens to choose thresholds.

It shows the funnel, histograms of the motion and aesthetic scores with the thresholds drawn, and
kept and rejected clips side by side: a poster frame, scores, caption, reference crops, and the
rule that rejected each. No server, no network, no script beyond one line that reports images
that fail to load on the console.

Size: the funnel and the histograms count every clip (DuckDB aggregates), but the grid shows a
fixed sample of at most `per_group` clips per group (kept, and each rejecting rule), picked by
md5 of the clip id, so a run of 100,000 clips gives the same small page and a few hundred posters,
and a rerun shows the same clips. Posters are cached by clip id.
"""

from __future__ import annotations

import html
import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict

from manifests import store, views
from manifests.files import write_bytes
from manifests.filters import RULES, VLM_CHECKS, FilterConfig, rule_sql
from manifests.schemas import TABLES

# the funnel's later steps (their conditions: views.LATER_STAGES): (table, stage whose errors explain a miss, label)
LATER_STEPS = [
    ("clips", "clips", "no clip file"),
    ("captions", "caption", "no caption"),
    ("subjects", "subjects", "no reference crops"),
    ("shards", "shards", "not in a shard"),
]
RANDOM_TABLES = ("aesthetic", "captions", "subjects")


class ReportConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    per_group: int = 48  # clips shown per group (kept, each rejecting rule)
    poster_width: int = 256  # pixels


@dataclass
class Group:
    status: str  # "kept", a filter rule, or a later step's table
    title: str
    total: int
    rows: list[dict]


def write_report(run: Path, filters: FilterConfig | None = None, config: ReportConfig | None = None) -> Path:
    """Write `RUN/report/index.html` with its plots and posters; returns the page's path."""
    run, filters, config = Path(run), filters or FilterConfig(), config or ReportConfig()
    out = run / "report"
    (out / "posters").mkdir(parents=True, exist_ok=True)
    (out / "plots").mkdir(parents=True, exist_ok=True)
    con = views.connect(run)
    groups, funnel = sample_groups(run, con, filters, config.per_group)
    shown = pa.table({"key": pa.array([row["clip_id"] for group in groups for row in group.rows], pa.string())})
    con.register("_shown", shown)  # only the errors of the clips on the page, however many the run has
    errors = {(stage, key): message for stage, key, message in con.execute("SELECT stage, key, message FROM errors JOIN _shown USING (key)").fetchall()}
    rows = [row for group in groups for row in group.rows]
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:  # FFmpeg decodes without the GIL: posters decode side by side
        posters = list(pool.map(lambda row: poster(run, row, out / "posters", config.poster_width), rows))
    for row, path in zip(rows, posters):
        row["poster"] = path
    for group in groups:
        for row in group.rows:
            row["error"] = errors.get((stage_of(group.status), row["clip_id"]))
    plots = {}
    for name, column, label, thresholds in [
        ("motion", "motion_score", "motion score (% of diagonal / s)", {"min_motion": filters.min_motion, "max_motion": filters.max_motion}),
        ("aesthetic", "aesthetic_score", "aesthetic score (LAION scale)", {"min_aesthetic": filters.min_aesthetic}),
    ]:
        # The scores of windows there are (scores of windows cut before `scenes` was redone are not),
        # without the other joins of `candidates` (DuckDB keeps every LEFT JOIN of the view, used or not)
        values = con.execute(f"SELECT t.score::DOUBLE AS v FROM {name} t SEMI JOIN scenes USING (clip_id) WHERE t.score IS NOT NULL").fetchnumpy()["v"]
        write_bytes(run, out / "plots" / f"{name}.svg", histogram(values, column, label, thresholds).encode("utf-8"))
        plots[name] = {"path": f"plots/{name}.svg", "n": len(values)}
    faces = face_identities(run, con)
    page = render(run, counts(con), funnel, random_tables(run, con), plots, groups, config, faces, stage_times(con),
                  probe_failures(con))  # fmt: skip
    path = out / "index.html"
    write_bytes(run, path, page.encode("utf-8"))
    return path


def is_current(run: Path) -> bool:
    """Whether the page was written after every change to the tables: a part added, rewritten or
    removed changes its table folder's mtime (a whole stage withdrawing rows does work no input
    counts). The runs' own timings (`stage_runs`) aside: every rerun adds to them."""
    page = Path(run) / "report" / "index.html"
    if not page.is_file():
        return False
    folders = [store.table_dir(run, t) for t in TABLES if t != "stage_runs"]
    return all(f.stat().st_mtime_ns < page.stat().st_mtime_ns for f in folders if f.is_dir())


def stage_of(status: str) -> str | None:
    """The stage whose error rows explain a rejection (None for threshold rules on metadata)."""
    later = {table: stage for table, stage, _ in LATER_STEPS}
    return later.get(status) or RULES.get(status, (None,))[0]


def title_of(status: str, filters: FilterConfig) -> str:
    if status == "kept":
        return "Kept"
    if status in RULES:
        return f"Rejected by {status}: fails {rule_sql(status, filters)}"
    return f"Rejected: {next(label for table, _, label in LATER_STEPS if table == status)}"


def sample_groups(run: Path, con, filters: FilterConfig, per_group: int) -> tuple[list[Group], list[tuple[str, int, int]]]:
    """Kept clips, then each rejecting step in funnel order, each sampled by md5(clip_id); and the
    funnel, from the same scan (each group is the clips whose first failed step it is)."""
    # First the sample's ids and statuses over every clip (few columns), then whole rows for those only.
    # A top-n aggregate per status holds per_group ids per group; a window over every clip held them all.
    steps = views.funnel_steps(run, filters)
    basis = views.funnel_basis(run, steps)
    statuses = [name.removeprefix("filter: ") for name, _ in steps] + ["kept"]
    picked = con.sql(
        f"""
        SELECT unnest(ids) AS clip_id, failed, group_size FROM (
          SELECT failed, count(*) AS group_size, min_by(clip_id, md5(clip_id), {int(per_group)}) AS ids
          FROM (SELECT clip_id, {views.first_failed(steps)} AS failed FROM candidates) GROUP BY failed)
        """
    ).to_arrow_table()
    failed = picked.column("failed").to_pylist()
    funnel = views.funnel_of(steps, dict(zip(failed, picked.column("group_size").to_pylist())))
    views.remember_funnel(run, basis, funnel)  # a run's last step writes its report: `funnel` then need not scan
    picked = picked.append_column("status", pa.array([statuses[i] for i in failed], pa.string()))
    con.register("_picked", picked)
    # The ids as constants too: DuckDB pushes them into the scans of `candidates`' tables. Not below
    # its aggregation of `subjects`, though, which it made for every clip (1M windows: 15 of the
    # report's 27 s): the sample's subjects are aggregated from their own rows.
    ids = ", ".join("'" + clip_id.replace("'", "''") + "'" for clip_id in picked.column("clip_id").to_pylist()) or "NULL"
    data = con.sql(
        f"SELECT c.* EXCLUDE ({', '.join(views.COSTLY)}), p.status, p.group_size FROM candidates c JOIN _picked p USING (clip_id) "
        f"WHERE c.clip_id IN ({ids}) ORDER BY p.status, clip_id"
    ).to_arrow_table().to_pylist()
    subjects = dict(con.sql(f"SELECT clip_id, subjects FROM ({views.SUBJECTS.format(source=f'subjects WHERE clip_id IN ({ids})')})").fetchall())
    for row in data:
        row["subjects"] = subjects.get(row["clip_id"])
    order = ["kept", *RULES, *(table for table, *_ in LATER_STEPS)]
    groups = []
    for status in order:
        rows = [r for r in data if r["status"] == status]
        if rows:
            groups.append(Group(status, title_of(status, filters), rows[0]["group_size"], rows))
    return groups, funnel


def poster(run: Path, row: dict, folder: Path, width: int) -> str | None:
    """A frame near the middle of the clip (its file, or the source window), as a JPEG; None if none decodes."""
    from stages.video import near_middle, rotate_upright

    path = folder / f"{row['clip_id']}.jpg"
    if not path.exists():
        try:
            if row["clip_path"]:
                image = near_middle(run / row["clip_path"])
            else:
                image = near_middle(row["video_path"], row["start_pts"], row["end_pts"])
        except Exception:  # an unreadable video shows as "no frame", the report goes on
            image = None
        if image is None:
            return None
        if not row["clip_path"]:
            image = rotate_upright(image, row["rotation"] or 0)
        height = max(1, round(image.shape[0] * width / image.shape[1]))
        ok, data = cv2.imencode(".jpg", cv2.cvtColor(cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA), cv2.COLOR_RGB2BGR))
        write_bytes(run, path, data.tobytes())
    return f"posters/{path.name}"


PLOT_W, PLOT_H = 600, 320
PLOT_BOX = (60, 28, 585, 270)  # left, top, right, bottom of the axes, pixels


def histogram(values: np.ndarray, column: str, label: str, thresholds: dict[str, float]) -> str:
    """An SVG histogram of one score over every scored clip, thresholds as dashed vertical lines.

    Hand-written SVG, not matplotlib: importing and laying out matplotlib cost more than the rest
    of the report, posters aside."""
    title = f"{column}: {len(values)} scored"
    if len(values):
        counts, edges = np.histogram(values, bins=min(60, max(10, len(values) // 20)))
        lo, hi = float(values.min()), float(values.max())
        span = max(hi - lo, 1.0)
        drawn = {name: value for name, value in thresholds.items() if lo - span <= value <= hi + span}
        off_scale = [f"{name} = {value:g}" for name, value in thresholds.items() if name not in drawn]
        title += f"; off the axis: {', '.join(off_scale)}" if off_scale else ""
        marks = svg_bars(counts, edges, drawn)
    else:
        marks = [f"<text x='{PLOT_W / 2}' y='{PLOT_H / 2}' text-anchor='middle'>not scored yet</text>"]
    return (
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{PLOT_W}' height='{PLOT_H}' viewBox='0 0 {PLOT_W} {PLOT_H}' "
        "font-family='DejaVu Sans,sans-serif' font-size='11'>"
        f"<rect width='{PLOT_W}' height='{PLOT_H}' fill='#fff'/>"
        f"<text x='{PLOT_W / 2}' y='16' text-anchor='middle' font-size='12'>{html.escape(title)}</text>"
        + "".join(marks) + svg_labels(label) + "</svg>"
    )


def nice_ticks(lo: float, hi: float, count: int = 6) -> list[float]:
    """Round tick values (1, 2 or 5 times a power of ten) covering [lo, hi]."""
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / count
    power = 10 ** np.floor(np.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = np.ceil(lo / step) * step
    return [float(round(v, 12)) for v in np.arange(first, hi + step * 1e-9, step)]


def svg_labels(label: str) -> str:
    left, top, right, bottom = PLOT_BOX
    return (
        f"<text x='{(left + right) / 2}' y='{PLOT_H - 6}' text-anchor='middle'>{html.escape(label)}</text>"
        f"<text transform='translate(14 {(top + bottom) / 2}) rotate(-90)' text-anchor='middle'>clip windows</text>"
    )


def svg_bars(counts: np.ndarray, edges: np.ndarray, thresholds: dict[str, float]) -> list[str]:
    """Axes, bars, ticks and threshold lines; the x axis spans the bins and every threshold drawn, 5% margins."""
    left, top, right, bottom = PLOT_BOX
    x0, x1 = min([edges[0], *thresholds.values()]), max([edges[-1], *thresholds.values()])
    pad = (x1 - x0) * 0.05
    x0, x1 = x0 - pad, x1 + pad
    y1 = max(1, int(counts.max())) * 1.05
    sx = lambda v: left + (v - x0) / (x1 - x0) * (right - left)  # noqa: E731
    sy = lambda n: bottom - n / y1 * (bottom - top)  # noqa: E731
    out = [
        f"<rect x='{sx(a):.2f}' y='{sy(n):.2f}' width='{sx(b) - sx(a):.2f}' height='{bottom - sy(n):.2f}' fill='#4c78a8' "
        f"data-count='{n}'><title>{a:.4g} to {b:.4g}: {n}</title></rect>"
        for a, b, n in zip(edges[:-1], edges[1:], counts.tolist())
        if n
    ]
    out.append(f"<path d='M{left} {top}V{bottom}H{right}' fill='none' stroke='#333'/>")
    for v in nice_ticks(x0, x1):
        out.append(f"<path d='M{sx(v):.2f} {bottom}v4' stroke='#333'/><text x='{sx(v):.2f}' y='{bottom + 15}' text-anchor='middle'>{v:g}</text>")
    for n in nice_ticks(0, y1):
        if n == int(n):
            out.append(f"<path d='M{left} {sy(n):.2f}h-4' stroke='#333'/><text x='{left - 6}' y='{sy(n) + 4:.2f}' text-anchor='end'>{n:g}</text>")
    if thresholds:  # the legend, top right on a white box
        out.append(f"<rect x='{right - 158}' y='{top + 2}' width='154' height='{6 + 15 * len(thresholds)}' fill='#fff' fill-opacity='0.8' stroke='#ccc'/>")
    for i, (name, value) in enumerate(thresholds.items()):
        out.append(f"<path d='M{sx(value):.2f} {top}V{bottom}' stroke='#e45756' stroke-width='1.5' stroke-dasharray='6 3' data-threshold='{name}'/>")
        out.append(f"<path d='M{right - 150} {top + 12 + 15 * i}h22' stroke='#e45756' stroke-width='1.5' stroke-dasharray='6 3'/>"
                   f"<text x='{right - 122}' y='{top + 16 + 15 * i}'>{html.escape(f'{name} = {value:g}')}</text>")  # fmt: skip
    return out


def counts(con) -> dict[str, str]:
    """Headline numbers: what went in, what came out."""
    one = lambda sql: con.execute(sql).fetchone()[0]  # noqa: E731
    footage = duration_text(one("SELECT sum(duration_s) FROM videos") or 0.0)
    return {
        "videos": f"{one('SELECT count(*) FROM videos')} ({footage})",
        "windows": str(one("SELECT count(*) FROM scenes")),
        "clips": str(one("SELECT count(*) FROM clips")),
        "captions": " ".join([str(one("SELECT count(*) FROM captions")), *(f"({t})" for t in [answers_text(con)] if t)]),
        **{"VLM reject checks": t for t in [checks_text(con)] if t},
        "reference crops": str(one("SELECT count(*) FROM subjects")),
        "shards": f"{one('SELECT count(*) FROM shards')} ({one('SELECT COALESCE(sum(n_samples), 0) FROM shards')} samples)",
        "error rows": str(one("SELECT count(*) FROM errors")),
    }


def answers_text(con) -> str:
    """How the captioner's answers came out, and its output tokens per second of model time: per GPU
    (busy time times each actor's GPU share, over the stage's runs in `stage_runs`), or per actor on
    CPUs; "" before caption_v2 rows."""
    ok, truncated, unparsable, tokens, dtypes = con.execute(
        "SELECT count(*) FILTER (WHERE answer = 'ok'), count(*) FILTER (WHERE answer = 'truncated'),"
        " count(*) FILTER (WHERE answer = 'unparsable'), sum(output_tokens), string_agg(DISTINCT dtype, ', ')"
        " FROM captions WHERE answer IS NOT NULL"
    ).fetchone()
    if not (ok or truncated or unparsable):
        return ""
    empty = con.execute("SELECT count(*) FROM errors WHERE stage = 'caption' AND message = 'empty caption'").fetchone()[0]
    gpu_s, cpu_s = con.execute(
        "SELECT sum(busy_s * gpus) FILTER (WHERE gpus > 0), sum(busy_s) FILTER (WHERE COALESCE(gpus, 0) = 0) FROM stage_runs WHERE stage = 'caption'"
    ).fetchone()
    busy, per = (gpu_s, "per GPU") if gpu_s else (cpu_s, "per CPU actor")
    speed = f"; {tokens / busy:.1f} output tokens/s {per} of model time, {dtypes}" if busy else ""
    return f"answers: {ok} ok, {truncated} truncated, {unparsable} unparsable, {empty} empty{speed}"


def checks_text(con) -> str:
    """Clips each reject check was true for, of those answered (score only unless `filter.vlm_reject` names it)."""
    counted = ", ".join(f"count(*) FILTER (WHERE reject_{name})" for name in VLM_CHECKS)
    row = con.execute(f"SELECT count(reject_slideshow), {counted} FROM captions").fetchone()
    if not row[0]:
        return ""
    return f"of {row[0]} answered: " + ", ".join(f"{name} {n}" for name, n in zip(VLM_CHECKS, row[1:]))


def duration_text(seconds: float) -> str:
    """Footage as people read it: "42 s", "7 min 42 s", then hours ("0.00 h" said nothing of a short run)."""
    whole = round(seconds)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60} s"
    return f"{seconds / 3600:.2f} h"


def random_tables(run: Path, con) -> list[str]:
    """What random-initialised models (profile tiny) made: each table, with the rows' kinds and models where only some are."""
    found = []
    for t in RANDOM_TABLES:
        if not store.parts(run, t):
            continue
        kind = "kind" if t == "subjects" else "NULL"
        rows = con.execute(f"SELECT DISTINCT {kind}, model FROM {t} WHERE random_weights ORDER BY 1, 2").fetchall()
        real = con.execute(f"SELECT count(*) FROM {t} WHERE NOT random_weights").fetchone()[0]
        if rows and real:
            found.append(f"{t} ({'; '.join(f'{k}: {m}' if k else m for k, m in rows)})")
        elif rows:
            found.append(t)
    return found


def face_identities(run: Path, con, max_faces: int = 400) -> list[list[dict]]:
    """Face subjects grouped by identity: greedy, each face joins the first group whose first face is
    closer than the same-person distance of the face model (model.curation.faces.SAME_PERSON_DISTANCE)."""
    from model.curation.faces import SAME_PERSON_DISTANCE

    if not store.parts(run, "subjects"):
        return []
    rows = con.execute(
        f"SELECT subject_id, clip_id, crop_path, score, embedding, model, random_weights FROM subjects "
        f"WHERE kind = 'face' AND embedding IS NOT NULL ORDER BY md5(subject_id) LIMIT {int(max_faces)}"
    ).fetchall()
    names = ["subject_id", "clip_id", "crop_path", "score", "embedding", "model", "random_weights"]
    groups: list[list[dict]] = []
    for row in map(lambda r: dict(zip(names, r)), rows):
        vector = np.asarray(row["embedding"], np.float32)
        for group in groups:
            if np.linalg.norm(np.asarray(group[0]["embedding"], np.float32) - vector) < SAME_PERSON_DISTANCE:
                group.append(row)
                break
        else:
            groups.append([row])
    return sorted(groups, key=len, reverse=True)


def identities_section(groups: list[list[dict]]) -> str:
    if not groups:
        return ""
    parts = [f"<h2>Faces by identity</h2><p class='muted'>{sum(map(len, groups))} face crops, {len(groups)} identities.</p><div id='identities'>"]
    for i, group in enumerate(groups):
        first = group[0]
        weights = "random weights" if first["random_weights"] else "real weights"
        parts.append(f"<h3>Identity {i + 1} <span class='muted'>({len(group)} faces; {text(first['model'], 120)}; {weights})</span></h3><div class='refs'>")
        parts += [
            f"<div class='ref'><img src='../{html.escape(r['crop_path'])}' alt='face {r['subject_id'][:8]}'><div>{r['clip_id'][:8]}</div></div>"
            for r in group
        ]
        parts.append("</div>")
    return "".join(parts) + "</div>"


CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def text(value, limit: int = 240) -> str:
    """Escaped, control characters dropped (random captions are full of them), cut to `limit`."""
    value = CONTROL.sub("", str(value))
    return html.escape(value if len(value) <= limit else value[: limit - 1] + "…")


def number(value) -> str:
    return "–" if value is None else f"{value:.3g}"


CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:16px;color:#222;background:#fafafa}
h1{margin:0 0 8px}h2{margin:24px 0 8px}h3{margin:16px 0 6px;font-size:15px}
.banner{background:#c62828;color:#fff;padding:10px 14px;font-weight:bold;border-radius:4px;margin:8px 0}
table{border-collapse:collapse}td,th{padding:2px 10px;border-bottom:1px solid #ddd;text-align:left}
td.n{text-align:right;font-variant-numeric:tabular-nums}
.plots img{max-width:48%;margin-right:1%;border:1px solid #ddd;background:#fff}
.sides{display:grid;grid-template-columns:1fr 1fr;gap:20px}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(220px,1fr));gap:10px}
.card{background:#fff;border:1px solid #ddd;border-radius:4px;padding:6px;font-size:12px}
.card.rejected{border-color:#e0a0a0}
.card img.poster{width:100%;display:block;background:#eee}
.noframe{height:120px;display:flex;align-items:center;justify-content:center;background:#eee;color:#888}
.why{color:#b71c1c;font-weight:bold}.caption{color:#444;margin:4px 0}.muted{color:#777}
.refs{display:flex;flex-wrap:wrap;gap:4px}.ref{text-align:center;font-size:11px;max-width:80px}
.ref img{height:64px;max-width:80px;object-fit:contain;background:repeating-conic-gradient(#ddd 0 25%,#fff 0 50%) 0/10px 10px}
"""
# Report images that do not load on the console, where a person or the browser test sees them.
IMAGE_CHECK = "addEventListener('error',e=>{if(e.target.tagName==='IMG')console.error('image did not load: '+e.target.src)},true);"


def stage_times(con) -> list[dict]:
    """Each stage's latest run (`stage_runs`): inputs, seconds, first result, and how busy its model actors were."""
    return con.cursor().sql(
        "SELECT stage, inputs, seconds, first_result_s, actors, utilisation FROM stage_runs "
        "QUALIFY row_number() OVER (PARTITION BY stage ORDER BY run_started DESC) = 1 ORDER BY first_result_s NULLS LAST"
    ).to_arrow_table().to_pylist()


def busy_text(stage: dict) -> str:
    return "" if stage["utilisation"] is None else f"{stage['utilisation']:.0%} of {stage['actors']} actor(s)"


def stages_section(stages: list[dict]) -> str:
    if not stages:
        return ""
    rows = "".join(
        f"<tr><td>{text(s['stage'])}</td><td class='n'>{s['inputs']}</td><td class='n'>{s['seconds']:.1f}</td>"
        f"<td class='n'>{s['first_result_s'] or 0:.1f}</td><td class='n'>{busy_text(s)}</td></tr>"
        for s in stages
    )
    return (
        "<h2>Stages</h2><p class='muted'>The latest run of each stage; stages run at once, a window going on as soon as it is "
        "written. Model busy: the model actors' processing time over their wall time from the first input.</p>"
        "<table id='stages'><tr><th>stage</th><th>inputs</th><th>seconds</th><th>first result at (s)</th><th>model busy</th></tr>"
        + rows + "</table>"
    )


PROBE_FAILURES_SHOWN = 50


def probe_failures(con) -> tuple[int, list[tuple[str, str]]]:
    """How many files failed at probe (files skipped as not videos aside), and the first of them by path."""
    where = "FROM errors WHERE stage = 'probe' AND error_type <> 'not_video'"
    total = con.execute(f"SELECT count(*) {where}").fetchone()[0]
    return total, con.execute(f"SELECT key, message {where} ORDER BY key LIMIT {PROBE_FAILURES_SHOWN}").fetchall()


def probe_failures_section(failures: tuple[int, list[tuple[str, str]]]) -> str:
    total, shown = failures
    if not total:
        return ""
    more = f" The first {len(shown)} by path; all: <code>python -m manifests show RUN errors --where \"stage = 'probe'\"</code>." if total > len(shown) else ""
    rows = "".join(f"<tr><td>{text(key, 200)}</td><td>{text(message, 300)}</td></tr>" for key, message in shown)
    return f"<h2>Files that failed at probe</h2><p class='muted'>{total} file(s).{more}</p><table id='probe-failures'><tr><th>file</th><th>why</th></tr>{rows}</table>"


def render(
    run: Path, numbers: dict, funnel: list, randomized: list[str], plots: dict, groups: list[Group], config: ReportConfig,
    faces: list[list[dict]] = (), stages: list[dict] = (), probe_failed: tuple[int, list[tuple[str, str]]] = (0, []),
) -> str:
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>cinema run report: {text(run.resolve().name)}</title><style>{CSS}</style><script>{IMAGE_CHECK}</script></head><body>",
        f"<h1>Run report: {text(run.resolve().name)}</h1><p class='muted'>{text(run.resolve())}</p>",
    ]
    if randomized:
        parts.append(
            f"<div class='banner' id='random-weights'>RANDOM WEIGHTS: {', '.join(randomized)} come from random-initialised "
            "models (profile tiny); those scores, captions and crops are meaningless. Everything else comes from real weights.</div>"
        )
    parts.append("<h2>Totals</h2><table>" + "".join(f"<tr><th>{k}</th><td class='n'>{v}</td></tr>" for k, v in numbers.items()) + "</table>")
    parts.append(probe_failures_section(probe_failed))
    parts.append(stages_section(list(stages)))
    parts.append("<h2>Funnel</h2><table id='funnel'><tr><th>step</th><th>clips left</th><th>removed</th></tr>")
    parts += [f"<tr><td>{text(step)}</td><td class='n'>{left}</td><td class='n'>{cut or ''}</td></tr>" for step, left, cut in funnel]
    parts.append("</table><h2>Scores</h2><div class='plots'>")
    parts += [f"<img src='{p['path']}' alt='histogram of {name} scores'>" for name, p in plots.items()]
    parts.append("</div>" + identities_section(faces) + "<h2>Clips</h2>")
    parts.append(
        f"<p class='muted'>At most {config.per_group} clips per group, a fixed sample by md5 of the clip id; the funnel and "
        f"histograms count every clip. All rows: <code>python -m manifests show {text(run)} candidates</code>.</p>"
    )
    kept = [g for g in groups if g.status == "kept"]
    rejected = [g for g in groups if g.status != "kept"]
    parts.append("<div class='sides'><section id='kept'>")
    parts += [section(g) for g in kept] or ["<h3>Kept</h3><p class='muted'>none</p>"]
    parts.append("</section><section id='rejected'>")
    parts += [section(g) for g in rejected] or ["<h3>Rejected</h3><p class='muted'>none</p>"]
    parts.append("</section></div></body></html>")
    return "\n".join(parts)


def section(group: Group) -> str:
    head = f"<h3>{text(group.title)} <span class='muted'>(showing {len(group.rows)} of {group.total})</span></h3>"
    return head + "<div class='grid'>" + "".join(card(row, group.status) for row in group.rows) + "</div>"


def card(row: dict, status: str) -> str:
    image = f"<img class='poster' src='{row['poster']}' alt='poster'>" if row["poster"] else "<div class='noframe'>no frame decodes</div>"
    if row["clip_path"]:
        image = f"<a href='../{html.escape(row['clip_path'])}'>{image}</a>"
    lines = [
        f"<div class='card{'' if status == 'kept' else ' rejected'}' data-clip='{row['clip_id']}'>{image}",
        f"<div><b>{row['clip_id'][:8]}</b> <span class='muted'>{text(Path(row['video_path']).name, 40)} "
        f"{row['start_s']:.2f}–{row['end_s']:.2f} s</span></div>",
    ]
    if status != "kept":
        lines.append(f"<div class='why'>rejected: {text(status)}{': ' + text(row['error'], 160) if row['error'] else ''}</div>")
    lines.append(
        f"<div>duration {number(row['duration_s'])} s · {row['width']}×{row['height']} · motion {number(row['motion_score'])} · "
        f"aesthetic {number(row['aesthetic_score'])}</div>"
    )
    if row["caption"] is not None:
        lines.append(f"<div class='caption'>{text(row['caption'])}</div>")
    if row["subjects"]:
        refs = "".join(
            f"<div class='ref' title='{text(s['model'], 120)}'><img src='../{html.escape(s['masked_path'])}' alt='{text(s['label'], 40)}'>"
            f"<div>{text(s['kind'], 10)}: {text(s['label'], 24)}</div></div>"
            for s in json.loads(row["subjects"])
        )
        lines.append(f"<div class='refs'>{refs}</div>")
    return "".join(lines) + "</div>"

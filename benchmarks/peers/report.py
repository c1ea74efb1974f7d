"""Turns the libraries' documents into latest.json's content, a markdown table and a chart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .settings import WORKLOADS, Setting
from .stats import Summary, spread_of

SCHEMA_VERSION = 1
BASELINE = "rpc_parallel"
RATIO_DEFINITION = (
    "library median / rpc_parallel median, in the workload's unit: for times (lower is better) "
    "a ratio below 1 means the library is faster than rpc_parallel; for rates (higher is better) "
    "a ratio above 1 means it is faster"
)


def _entry(doc: dict[str, Any], key: str, base: float | None) -> dict[str, Any]:
    status = doc.get("status")
    if status in ("skipped", "unavailable"):
        return {"status": "absent", "note": doc.get("note")}
    m = doc.get("metrics", {}).get(key)
    if m is None:
        return {"status": "error", "error": f"not measured (library {status}: {doc.get('note')})"}
    if m.get("status") != "ok":
        return {k: m.get(k) for k in ("status", "error", "note")}
    s: Summary = m["summary"]
    kind, low, high = spread_of(s)
    median = s["median"]
    return {
        "status": "ok",
        "median": median,
        "spread": {"kind": kind, "low": low, "high": high},
        "p99": s["p99"],
        "min": s["min"],
        "max": s["max"],
        "n": s["n"],
        "size": m.get("size"),
        "target": m.get("target"),
        "peak_rss_over_array": m.get("peak_rss_over_array"),
        "ratio": (median / base) if base else None,
        "note": m.get("note"),
    }


def aggregate(
    *,
    docs: list[dict[str, Any]],
    setting: Setting,
    machine: dict[str, Any],
    started: str,
    finished: str,
    duration_s: float,
    interpreter: str,
) -> dict[str, Any]:
    """The content of latest.json (see docs/benchmarks.md for the schema)."""
    by_key = {d["key"]: d for d in docs}
    results: dict[str, dict[str, Any]] = {}
    for w in WORKLOADS:
        base_doc = by_key.get(BASELINE, {})
        base_m = base_doc.get("metrics", {}).get(w.key, {})
        base = base_m["summary"]["median"] if base_m.get("status") == "ok" else None
        results[w.key] = {d["key"]: _entry(d, w.key, base) for d in docs}
    return {
        "schema_version": SCHEMA_VERSION,
        "setting": setting.as_dict(),
        "started": started,
        "finished": finished,
        "duration_s": duration_s,
        "interpreter": interpreter,
        "machine": machine,
        "baseline": BASELINE,
        "ratio_definition": RATIO_DEFINITION,
        "libraries": [
            {k: d.get(k) for k in ("key", "label", "status", "note", "version", "duration_s")}
            for d in docs
        ],
        "workloads": [
            {
                "key": w.key,
                "title": w.title,
                "unit": w.unit,
                "better": w.better,
                "description": w.description,
            }
            for w in WORKLOADS
        ],
        "results": results,
    }


# ---------------------------------------------------------------- markdown


def fmt(v: float | None) -> str:
    if v is None:
        return "-"
    a = abs(v)
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3g}"


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ") if text is not None else ""


def _ratio(r: float | None) -> str:
    return "-" if r is None else f"{r:.2f}x"


def _size_note(e: dict[str, Any], unit: str) -> str:
    size, target = e.get("size"), e.get("target")
    peak = e.get("peak_rss_over_array")
    if unit == "GB/s" and size and peak is not None:
        return f"{size / 2**20:g} MiB array; master's peak RSS {peak:.2f}x the array"
    if unit == "GB/s" and size:
        return f"{size / 2**20:g} MiB payload"
    if size and target and size < target:
        return f"n = {size:,} (scaled from {target:,} to fit the time budget)"
    if size:
        return f"n = {size:,}"
    return ""


def markdown(result: dict[str, Any], chart_name: str | None) -> str:
    m = result["machine"]
    libs = result["libraries"]
    label = {lib["key"]: lib["label"] for lib in libs}
    present = [lib["key"] for lib in libs if lib["status"] not in ("skipped", "unavailable")]
    lines = [
        f"# rpc_parallel and its peers: {result['setting']['name']} run",
        "",
        f"Measured {result['started']} on {m.get('cpu_model') or 'an unknown CPU'}, "
        f"{m.get('cpu_count')} cores, {m.get('memory_gib')} GiB, {m.get('platform')}, "
        f"Python {m.get('python')}; load average at start {m.get('loadavg_at_start')}. "
        f"Whole run: {result['duration_s']:.0f} s. All libraries ran one after the other on the "
        "same machine; it is shared and noisy, so compare ratios within this run.",
        "",
        f"Ratio: {result['ratio_definition']}.",
        "",
        "## Summary (medians)",
        "",
    ]
    head = ["library"] + [f"{w['key']} ({w['unit']})" for w in result["workloads"]]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key in present:
        row = [label[key]]
        for w in result["workloads"]:
            e = result["results"][w["key"]][key]
            if e["status"] == "ok":
                cell = fmt(e["median"])
                if w["key"] == "latency":
                    cell += f" (p99 {fmt(e['p99'])})"
                if e.get("ratio") is not None and key != result["baseline"]:
                    cell += f" · {_ratio(e['ratio'])}"
                row.append(cell)
            else:
                row.append({"n/a": "n/a", "absent": ""}.get(e["status"], "error"))
        lines.append("| " + " | ".join(_cell(c) for c in row) + " |")
    lines.append("")
    if chart_name:
        lines += [f"![benchmark chart]({chart_name})", ""]

    for w in result["workloads"]:
        better = "lower is better" if w["better"] == "lower" else "higher is better"
        lines += [f"## {w['title']} ({w['unit']}, {better})", "", w["description"], ""]
        p99 = w["key"] == "latency"
        head = ["library", "median", *(["p99"] if p99 else []), "spread", "ratio", "notes"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for key in present:
            e = result["results"][w["key"]][key]
            if e["status"] == "n/a":
                continue  # listed as n/a in the summary
            if e["status"] == "ok":
                sp = e["spread"]
                kind = sp["kind"]
                notes = "; ".join(x for x in (e.get("note"), _size_note(e, w["unit"])) if x)
                row = [
                    label[key],
                    fmt(e["median"]),
                    *([fmt(e["p99"])] if p99 else []),
                    f"{fmt(sp['low'])} to {fmt(sp['high'])} ({kind}, n={e['n']})",
                    _ratio(e.get("ratio")),
                    notes,
                ]
            else:
                row = [label[key], "error", *([""] if p99 else []), "", "", e.get("error")]
            lines.append("| " + " | ".join(_cell(c) for c in row) + " |")
        lines.append("")

    lines += [
        "## Libraries",
        "",
        "| library | status | version | time (s) | note |",
        "|---|---|---|---|---|",
    ]
    for lib in libs:
        lines.append(
            "| "
            + " | ".join(
                _cell(c)
                for c in (
                    lib["label"],
                    lib["status"],
                    lib.get("version") or "",
                    fmt(lib.get("duration_s")) if lib.get("duration_s") is not None else "",
                    lib.get("note") or "",
                )
            )
            + " |"
        )
    lines.append("")
    return "\n".join(lines)


def write_markdown(result: dict[str, Any], path: Path, chart_name: str | None) -> None:
    path.write_text(markdown(result, chart_name), encoding="utf-8")


# ---------------------------------------------------------------- chart


def write_chart(result: dict[str, Any], path: Path) -> str | None:
    """Draw one panel per workload; return None, or why no chart was drawn."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        return f"matplotlib is not available ({exc})"

    workloads = result["workloads"]
    label = {lib["key"]: lib["label"] for lib in result["libraries"]}
    cols = 3
    rows = (len(workloads) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(6.2 * cols, 4.2 * rows), squeeze=False)
    for ax, w in zip(axes.flat, workloads, strict=False):
        entries = [
            (key, e) for key, e in result["results"][w["key"]].items() if e["status"] == "ok"
        ]
        better = "lower is better" if w["better"] == "lower" else "higher is better"
        ax.set_title(f"{w['title']}\n({w['unit']}, {better})", fontsize=10)
        if not entries:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        entries.reverse()  # first library at the top
        names = [label[k] for k, _ in entries]
        med = [e["median"] for _, e in entries]
        lo = [max(0.0, e["median"] - e["spread"]["low"]) for _, e in entries]
        hi = [max(0.0, e["spread"]["high"] - e["median"]) for _, e in entries]
        colors = [
            "tab:red" if k == result["baseline"] else "0.6" if k.startswith("floor") else "tab:blue"
            for k, _ in entries
        ]
        y = list(range(len(entries)))
        ax.barh(y, med, xerr=[lo, hi], color=colors, capsize=3, height=0.6)
        ax.set_yticks(y)
        ax.set_yticklabels(names, fontsize=8)
        positive = [v for v in med if v > 0]
        if positive and max(positive) / min(positive) > 30:
            ax.set_xscale("log")
        for yi, v, (key, e) in zip(y, med, entries, strict=True):
            r = e.get("ratio")
            text = fmt(v) + (f"  ({r:.2f}x)" if r is not None and key != result["baseline"] else "")
            ax.text(max(v, e["spread"]["high"]), yi, "  " + text, va="center", fontsize=7)
        ax.margins(x=0.25)
        ax.grid(axis="x", alpha=0.3)
    for ax in list(axes.flat)[len(workloads) :]:
        ax.axis("off")
    m = result["machine"]
    fig.suptitle(
        f"rpc_parallel (red) vs. peers (blue), floors (grey): {result['setting']['name']} run, "
        f"{result['started']}, {m.get('cpu_model')}, {m.get('cpu_count')} cores, "
        f"Python {m.get('python')}. Bars: median; whiskers: spread; (x): ratio to rpc_parallel",
        fontsize=9,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    tmp.replace(path)
    return None

#!/usr/bin/env python3
"""Chart a pg_throttle release: what each limit counted, second by second, vs. what it allows.

For the demo: reads a CSV `second,series,released,limit` (stdin or a file), writes an SVG with
one small-multiple panel per series (at each second, what the series' limit counted over its
own period ending then, as bars or a step area; what the limit allows in that period as a
dashed line; shared x axis in seconds) and prints a plain-text summary table.
Python 3 standard library only.

  python3 scripts/chart.py release.csv -o release.svg --title "Release of campaign att-E"
  psql --csv -c "SELECT second, series, released, \"limit\" FROM ..." | python3 scripts/chart.py
  python3 scripts/chart.py --self-test
"""
import argparse
import csv
import io
import math
import sys
import xml.etree.ElementTree as ET
from xml.sax.saxutils import escape

COLUMNS = ("second", "series", "released", "limit")
MAX_SECOND = 100_000  # guards against epoch timestamps passed as "seconds since start"
BAR, LIMIT, GRID, INK, MUTED = "#4e79a7", "#d62728", "#e6e6e6", "#222", "#666"
NOTE = ("note: each value counts what a limit saw over its own period (a second, a minute) ending "
        "at that second; at or under the line means no window broke the limit.")


class InputError(Exception):
    """Bad input: reported on stderr with exit status 2."""


def parse(stream):
    """Return {series: {second: [released, limit or None]}} in order of first appearance."""
    reader = csv.reader(stream)
    header = next(reader, None)
    if header is None or not any(h.strip() for h in header):
        raise InputError("empty input: expected a header row " + ",".join(COLUMNS))
    cols = [h.strip().lower() for h in header]
    missing = [c for c in COLUMNS if c not in cols]
    if missing:
        raise InputError(f"missing column(s) {', '.join(missing)}: header is {','.join(header)!r}, "
                         f"expected {','.join(COLUMNS)}")
    idx = {c: cols.index(c) for c in COLUMNS}
    data = {}
    for row in reader:
        if not any(cell.strip() for cell in row):
            continue
        row += [""] * (len(cols) - len(row))
        where = f"line {reader.line_num}"
        name, sec, rel, lim = (row[idx[c]].strip() for c in ("series", "second", "released", "limit"))
        if not name:
            raise InputError(f"{where}: empty series name")
        try:
            sec = int(sec)
        except ValueError:
            raise InputError(f"{where}: second must be an integer, got {sec!r}") from None
        if not 0 <= sec <= MAX_SECOND:
            raise InputError(f"{where}: second must be 0..{MAX_SECOND} (seconds since the start "
                             f"of the release), got {sec}")
        try:
            rel = int(rel)
        except ValueError:
            raise InputError(f"{where}: released must be an integer, got {rel!r}") from None
        if rel < 0:
            raise InputError(f"{where}: released must be >= 0, got {rel}")
        if lim == "":
            lim = None
        else:
            try:
                lim = float(lim)
            except ValueError:
                raise InputError(f"{where}: limit must be a number or empty, got {lim!r}") from None
            if not math.isfinite(lim) or lim < 0:
                raise InputError(f"{where}: limit must be a finite number >= 0, got {lim!r}")
        cell = data.setdefault(name, {}).setdefault(sec, [0, None])
        cell[0] += rel  # duplicate rows for one (series, second) are summed
        if lim is not None:
            cell[1] = lim if cell[1] is None else max(cell[1], lim)
    if not data:
        raise InputError("empty input: a header but no data rows")
    return data


def build(data):
    """Per-series arrays over the shared span 0..max second, plus summary statistics."""
    span = max(s for rows in data.values() for s in rows) + 1
    out = []
    for name, rows in data.items():
        rel = [rows[s][0] if s in rows else 0 for s in range(span)]
        known = [(s, rows[s][1]) for s in sorted(rows) if rows[s][1] is not None]
        lim = [None] * span
        if known:  # a second without a row keeps the limit last seen (the first one before it)
            cur, k = known[0][1], 0
            for s in range(span):
                while k < len(known) and known[k][0] <= s:
                    cur, k = known[k][1], k + 1
                lim[s] = cur
        active = [s for s in range(span) if rel[s] > 0]
        window = active[-1] - active[0] + 1 if active else 0
        lims = [v for v in lim if v is not None]
        out.append(dict(
            name=name, rel=rel, lim=lim, total=sum(rel), active=len(active), peak=max(rel),
            first=active[0] if active else None, last=active[-1] if active else None,
            window=window, mean=sum(rel) / window if window else 0.0,
            lo=min(lims) if lims else None, hi=max(lims) if lims else None,
            over=sum(1 for r, v in zip(rel, lim) if v is not None and r > v + 1e-9)))
    return span, out


def fmt(x):
    if x is None:
        return "-"
    if x == int(x):
        return f"{int(x):,}"
    return f"{x:.3g}" if abs(x) < 100 else f"{x:,.1f}"


def fmt_limit(st):
    if st["lo"] is None:
        return "none"
    if st["lo"] == st["hi"]:
        return f"{fmt(st['lo'])}"
    return f"{fmt(st['lo'])}–{fmt(st['hi'])}"


def over_text(st):
    if st["lo"] is None:
        return "n/a (no limit)"
    return f"yes ({st['over']} s)" if st["over"] else "no"


def nice_ticks(hi, target, integer=False):
    raw = hi / target
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if raw <= m * mag * (1 + 1e-9))
    if integer:
        step = max(1, round(step))
    digits = max(0, -math.floor(math.log10(step)))
    return [round(i * step, digits) for i in range(int(hi / step + 1e-9) + 1)]


def c(v):
    return f"{v:.2f}".rstrip("0").rstrip(".")


def esc(s):
    s = "".join(ch for ch in str(s) if ch in "\t\n" or ord(ch) >= 32)  # XML 1.0 forbids the rest
    return escape(s, {'"': "&quot;"})


def text(x, y, s, size=12, anchor="start", fill=INK, extra=""):
    return (f'<text x="{c(x)}" y="{c(y)}" font-size="{size}" text-anchor="{anchor}" '
            f'fill="{fill}"{extra}>{esc(s)}</text>')


def render(span, stats, title):
    W, L, R = 960, 78, 28
    PW = W - L - R
    PH = 150 if len(stats) <= 3 else 110 if len(stats) <= 5 else 84
    TOP, GAP = 84, 50
    sx = lambda s: L + PW * s / span
    bw = PW / span
    xt = nice_ticks(span, 12, integer=True)
    bottom = TOP + len(stats) * (PH + GAP) - GAP + 24  # foot of the last plot
    H = bottom + 56 + 18 * (len(stats) + 1) + 14
    o = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{c(H)}" '
         f'viewBox="0 0 {W} {c(H)}" font-family="Helvetica, Arial, sans-serif">',
         f'<rect width="{W}" height="{c(H)}" fill="#fff"/>',
         text(W / 2, 30, title, 20, "middle", extra=' font-weight="bold"'),
         f'<rect x="{L}" y="48" width="14" height="12" fill="{BAR}"/>',
         text(L + 20, 58, "counted over the period"),
         f'<line x1="{L + 170}" y1="54" x2="{L + 200}" y2="54" stroke="{LIMIT}" '
         f'stroke-width="2" stroke-dasharray="6 4"/>',
         text(L + 206, 58, "limit in that period"),
         text(W - R, 58, f"{len(stats)} series, {span} s, x axis shared", 11, "end", MUTED)]
    for i, st in enumerate(stats):
        pt = TOP + i * (PH + GAP)
        y0, y1 = pt + 24, pt + 24 + PH
        ymax = max(st["peak"], st["hi"] or 0) * 1.1 or 1.0
        sy = lambda v: y1 - PH * v / ymax
        o.append(f'<g class="panel" id="panel-{i + 1}" data-series="{esc(st["name"])}">')
        o.append(text(L, pt + 14, st["name"], 14, extra=' font-weight="bold"'))
        o.append(text(W - R, pt + 14, f"peak {fmt(st['peak'])} · "
                      f"limit {fmt_limit(st)}", 11, "end", MUTED))
        o.append(f'<rect x="{L}" y="{c(y0)}" width="{PW}" height="{PH}" fill="#fafafa" stroke="#bbb"/>')
        for t in xt:
            o.append(f'<line x1="{c(sx(t))}" y1="{c(y0)}" x2="{c(sx(t))}" y2="{c(y1 + 4)}" stroke="{GRID}"/>')
        for t in nice_ticks(ymax, 4, integer=ymax >= 4):
            o.append(f'<line x1="{L - 4}" y1="{c(sy(t))}" x2="{L + PW}" y2="{c(sy(t))}" stroke="{GRID}"/>')
            o.append(text(L - 7, sy(t) + 4, fmt(t), 11, "end", MUTED))
        o.append(text(18, (y0 + y1) / 2, "in the period", 11, "middle", MUTED,
                      f' transform="rotate(-90 18 {c((y0 + y1) / 2)})"'))
        if bw >= 4:  # bars, with a hover tooltip each
            pad = bw * 0.15
            for s, r in enumerate(st["rel"]):
                if r:
                    lim = "" if st["lim"][s] is None else f" (limit {fmt(st['lim'][s])})"
                    o.append(f'<rect x="{c(sx(s) + pad)}" y="{c(sy(r))}" width="{c(bw - 2 * pad)}" '
                             f'height="{c(y1 - sy(r))}" fill="{BAR}"><title>second {s}: {r} released'
                             f'{esc(lim)}</title></rect>')
        else:  # long runs: a filled step area
            d = [f"M{c(L)},{c(y1)}"]
            for s, r in enumerate(st["rel"]):
                d.append(f"L{c(sx(s))},{c(sy(r))}L{c(sx(s + 1))},{c(sy(r))}")
            d.append(f"L{c(L + PW)},{c(y1)}Z")
            o.append(f'<path d="{"".join(d)}" fill="{BAR}" fill-opacity="0.85" stroke="{BAR}" '
                     f'stroke-width="0.8"/>')
        s = 0
        while s < span:  # one dashed segment per run of a constant limit
            e = s
            while e + 1 < span and st["lim"][e + 1] == st["lim"][s]:
                e += 1
            if st["lim"][s] is not None:
                y = sy(st["lim"][s])
                o.append(f'<line x1="{c(sx(s))}" y1="{c(y)}" x2="{c(sx(e + 1))}" y2="{c(y)}" '
                         f'stroke="{LIMIT}" stroke-width="2" stroke-dasharray="6 4"/>')
                ly = y + 14 if y - y0 < 18 else y - 5  # below the line when near the top
                o.append(text(sx(e + 1) - 4, ly, f"limit {fmt(st['lim'][s])}", 11, "end", LIMIT,
                              ' stroke="#fff" stroke-width="3" paint-order="stroke"'))
            s = e + 1
        o.append("</g>")
    for t in xt:
        o.append(text(sx(t), bottom + 16, fmt(t), 11, "middle", MUTED))
    o.append(text(L + PW / 2, bottom + 36, "seconds since the start of the release", 12, "middle"))
    fy = bottom + 64
    o.append(text(L, fy, "Per series", 12, extra=' font-weight="bold"'))
    for j, st in enumerate(stats):
        line = (f"{st['name']}: peak {fmt(st['peak'])} against a limit of {fmt_limit(st)}"
                + (f" (seconds {st['first']}–{st['last']} counted)" if st["window"] else "")
                + f"; over the limit: {over_text(st)}")
        o.append(text(L, fy + 18 * (j + 1), line, 11, fill="#333"))
    o.append("</svg>")
    return "\n".join(o) + "\n"


def summary(stats):
    head = ("series", "sum", "secs > 0", "peak", "limit", "exceeded limit")
    rows = [(st["name"], fmt(st["total"]), str(st["active"]), fmt(st["peak"]), fmt_limit(st),
             over_text(st)) for st in stats]
    w = [max(len(r[k]) for r in rows + [head]) for k in range(len(head))]
    line = lambda r: "  ".join(v.ljust(w[k]) if k in (0, 4, 5) else v.rjust(w[k])
                               for k, v in enumerate(r)).rstrip()
    return "\n".join([line(head), line(tuple("-" * n for n in w))] + [line(r) for r in rows]
                     + [NOTE]) + "\n"


def self_test():
    rows = ["second,series,released,limit"]
    for s in range(60):
        rows.append(f'{s},"line +15550001 (Sendblue 1/s)",1,1')
        b = 8 if s % 15 == 0 else 0 if s % 15 in (1, 2) else 4  # bursts, and rows missing for 0
        if b:
            rows.append(f'{s},"campaign att-E SMS (240/min)",{b},4')
        if s % 20 == 5:
            rows.append(f'{s},"brand acme T-Mobile (2,000/day) <&>",1,{2000 / 86400:.6f}')
    span, stats = build(parse(io.StringIO("\n".join(rows) + "\n")))
    svg = render(span, stats, 'self-test "pg_throttle" <release>')
    root = ET.fromstring(svg)
    panels = [g for g in root.iter("{http://www.w3.org/2000/svg}g") if g.get("class") == "panel"]
    totals = [st["total"] for st in stats]
    checks = [(len(panels) == 3, f"expected 3 panel groups, found {len(panels)}"),
              (span == 60 and totals == [60, 224, 3], f"span {span}, totals {totals}"),
              (stats[1]["over"] == 4 and stats[1]["peak"] == 8 and stats[0]["over"] == 0, "stats"),
              (svg == render(span, stats, 'self-test "pg_throttle" <release>'), "not deterministic")]
    for bad in ("", "second,series,released\n0,a,1\n", "second,series,released,limit\n1.5,a,1,\n",
                "second,series,released,limit\n"):
        try:
            parse(io.StringIO(bad))
            checks.append((False, f"no InputError for {bad!r}"))
        except InputError:
            pass
    failed = [msg for ok, msg in checks if not ok]
    if failed:
        print("self-test FAILED: " + "; ".join(failed), file=sys.stderr)
        return 1
    sys.stdout.write(summary(stats))
    print(f"self-test OK: SVG parses, {len(panels)} panel groups, {len(svg)} bytes")
    return 0


def main():
    ap = argparse.ArgumentParser(
        description="Chart a pg_throttle release as an SVG of small multiples (one panel per "
                    "series: what its limit counted over its period, second by second, as bars; the limit "
                    "as a dashed line) "
                    "and print a summary table.",
        epilog="Input CSV columns (with a header row): second,series,released,limit. second is an "
               "integer since the start of the release; released what the limit counted over its "
               "period ending then; limit what it allows in that period (empty = no limit). Missing seconds count as 0 released. Exit "
               "status 2 on bad input.")
    ap.add_argument("csv", nargs="?", help="input CSV file (default: stdin)")
    ap.add_argument("-o", "--output", default="release.svg", help="SVG to write (default: %(default)s)")
    ap.add_argument("--title", default="pg_throttle release: what each limit counted vs what it allows",
                    help="overall chart title")
    ap.add_argument("--self-test", action="store_true", help="render a synthetic CSV and check the SVG")
    args = ap.parse_args()
    if args.self_test:
        return self_test()
    try:
        if args.csv:
            with open(args.csv, newline="", encoding="utf-8-sig") as f:
                data = parse(f)
        else:
            data = parse(io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8-sig", newline=""))
    except InputError as e:
        print(f"chart.py: error: {e}", file=sys.stderr)
        return 2
    except (OSError, UnicodeDecodeError) as e:
        print(f"chart.py: error: cannot read input: {e}", file=sys.stderr)
        return 2
    span, stats = build(data)
    try:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(render(span, stats, args.title))
    except OSError as e:
        print(f"chart.py: error: cannot write {args.output}: {e}", file=sys.stderr)
        return 1
    sys.stdout.write(summary(stats))
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

// Small hand-made SVG line charts: one or two series of [time, value|null] over the last hour.
// A point is a circle (with its value in a <title>), so a single interval is visible too; a
// caption says the latest value in words for screen readers.

const NS = "http://www.w3.org/2000/svg";
const W = 300, H = 110, LEFT = 34, BOTTOM = 14, TOP = 6, RIGHT = 4;
const COLORS = ["#0b5cad", "#b35900"];

function s(tag, attrs = {}, text) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  if (text !== undefined) el.textContent = text;
  return el;
}

/**
 * `title`: the caption; `id`: the figure's id (`chart-<id>`); `series`: [[time, value|null]];
 * `fmt`: a value as text; `second`: an optional second series (drawn dashed).
 */
export function chart(title, id, series, fmt, second) {
  const all = [series, second].filter(Boolean);
  const values = all.flat().map((p) => p[1]).filter((v) => v !== null && v !== undefined);
  const now = Date.now();
  const t0 = now - 3600 * 1000;
  const max = Math.max(1e-9, ...values) * 1.1;
  const x = (t) => LEFT + ((new Date(t).getTime() - t0) / (now - t0)) * (W - LEFT - RIGHT);
  const y = (v) => TOP + (1 - v / max) * (H - TOP - BOTTOM);
  const svg = s("svg", { class: "chart", viewBox: `0 0 ${W} ${H}`, role: "img", "aria-labelledby": `chart-${id}-caption`, preserveAspectRatio: "none" });
  svg.append(
    s("line", { class: "axis", x1: LEFT, y1: H - BOTTOM, x2: W - RIGHT, y2: H - BOTTOM }),
    s("line", { class: "axis", x1: LEFT, y1: TOP, x2: LEFT, y2: H - BOTTOM }),
    s("text", { x: 2, y: TOP + 8 }, fmt(max / 1.1)),
    s("text", { x: 2, y: H - BOTTOM }, "0"),
    s("text", { x: LEFT, y: H - 2 }, "−60 min"),
    s("text", { x: W - RIGHT - 22, y: H - 2 }, "now"));
  all.forEach((ser, i) => {
    const color = COLORS[i];
    let path = "";
    let pen = false;
    for (const [t, v] of ser) {
      if (v === null || v === undefined || new Date(t).getTime() < t0) { pen = false; continue; }
      path += `${pen ? "L" : "M"}${x(t).toFixed(1)},${y(v).toFixed(1)} `;
      pen = true;
      const c = s("circle", { cx: x(t).toFixed(1), cy: y(v).toFixed(1), r: 2, fill: color, "data-value": v });
      c.append(s("title", {}, `${new Date(t).toLocaleTimeString()}: ${fmt(v)}`));
      svg.append(c);
    }
    if (path) svg.append(s("path", { class: "line", d: path, stroke: color, "stroke-dasharray": i ? "4 2" : "none" }));
  });
  const last = (ser) => {
    for (let i = ser.length - 1; i >= 0; i--) if (ser[i][1] !== null && ser[i][1] !== undefined) return fmt(ser[i][1]);
    return "—";
  };
  const caption = document.createElement("figcaption");
  caption.id = `chart-${id}-caption`;
  caption.textContent = `${title}: now ${last(series)}${second ? ` / ${last(second)}` : ""}`;
  const fig = document.createElement("figure");
  fig.id = `chart-${id}`;
  fig.append(caption, svg);
  return fig;
}

// A small line chart on a canvas: a few series of (x, y) points on shared axes, with ticks and a legend.

function ticks(lo, hi, count) {
  if (hi === lo) return [lo];
  const raw = (hi - lo) / count;
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * magnitude).find((s) => s >= raw);
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(Number(v.toPrecision(12)));
  return out;
}

function label(v) {
  return Math.abs(v) >= 1e4 || (v !== 0 && Math.abs(v) < 1e-3) ? v.toExponential(1) : String(Number(v.toPrecision(4)));
}

// series: [{name, color, points: [[x, y], ...], dots}]; draws into the canvas at its CSS size.
export function drawChart(canvas, series, xName) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth || 600;
  const height = canvas.clientHeight || 240;
  canvas.width = Math.round(width * ratio);
  canvas.height = Math.round(height * ratio);
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, width, height);
  ctx.font = "12px system-ui, sans-serif";
  const points = series.flatMap((s) => s.points);
  if (!points.length) {
    ctx.fillStyle = "#666";
    ctx.fillText("No metric points yet.", 12, 24);
    return;
  }
  const xs = points.map((p) => p[0]);
  const ys = points.map((p) => p[1]);
  let [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
  if (x0 === x1) [x0, x1] = [x0 - 1, x1 + 1];
  if (y0 === y1) [y0, y1] = [y0 - Math.abs(y0 || 1) * 0.1, y1 + Math.abs(y1 || 1) * 0.1];
  const pad = { left: 52, right: 12, top: 24, bottom: 32 };
  const px = (x) => pad.left + ((x - x0) / (x1 - x0)) * (width - pad.left - pad.right);
  const py = (y) => height - pad.bottom - ((y - y0) / (y1 - y0)) * (height - pad.top - pad.bottom);
  ctx.strokeStyle = "#ddd";
  ctx.fillStyle = "#555";
  ctx.lineWidth = 1;
  for (const y of ticks(y0, y1, 4)) {
    ctx.beginPath();
    ctx.moveTo(pad.left, py(y));
    ctx.lineTo(width - pad.right, py(y));
    ctx.stroke();
    ctx.fillText(label(y), 4, py(y) + 4);
  }
  for (const x of ticks(x0, x1, 6)) ctx.fillText(label(x), px(x) - 6, height - pad.bottom + 16);
  ctx.fillText(xName, width - pad.right - ctx.measureText(xName).width, height - 4);
  let legendX = pad.left;
  for (const s of series) {
    ctx.strokeStyle = ctx.fillStyle = s.color;
    ctx.lineWidth = 2;
    ctx.beginPath();
    s.points.forEach(([x, y], i) => (i ? ctx.lineTo(px(x), py(y)) : ctx.moveTo(px(x), py(y))));
    ctx.stroke();
    if (s.dots) for (const [x, y] of s.points) ctx.fillRect(px(x) - 3, py(y) - 3, 6, 6);
    ctx.fillRect(legendX, 8, 12, 4);
    ctx.fillText(s.name, legendX + 16, 14);
    legendX += 28 + ctx.measureText(s.name).width;
  }
}

// Talking to the dashboard server: JSON calls, the binary points blob, image URLs.
// The token (when the server needs one) arrives once as ?token= in the page URL and is
// kept in sessionStorage; it is sent as a Bearer header, or as ?token= on image URLs.

const params = new URLSearchParams(location.search);
if (params.get("token")) {
  sessionStorage.setItem("dataloupe-token", params.get("token"));
  params.delete("token");
  history.replaceState(null, "", location.pathname + (params.toString() ? "?" + params : "") + location.hash);
}
const token = () => sessionStorage.getItem("dataloupe-token");

function headers(extra = {}) {
  const h = { ...extra };
  if (token()) h.Authorization = "Bearer " + token();
  return h;
}

async function check(r) {
  if (r.ok) return r;
  let msg = r.statusText;
  try { msg = (await r.json()).error || msg; } catch (e) { /* not JSON */ }
  const err = new Error(msg);
  err.status = r.status;
  throw err;
}

export function q(path, query) {
  const u = new URLSearchParams();
  for (const [k, v] of Object.entries(query || {})) if (v !== undefined && v !== null && v !== "") u.set(k, v);
  const s = u.toString();
  return path + (s ? "?" + s : "");
}

export async function getJSON(path, query) {
  return (await check(await fetch(q(path, query), { headers: headers() }))).json();
}

export async function postJSON(path, body) {
  const r = await fetch(path, {
    method: "POST",
    headers: headers({ "Content-Type": "application/json", "X-Dataloupe": "1" }),
    body: JSON.stringify(body),
  });
  return (await check(r)).json();
}

const ARRAYS = { float32: Float32Array, float64: Float64Array, int32: Int32Array, int16: Int16Array,
  int8: Int8Array, uint8: Uint8Array, uint16: Uint16Array, uint32: Uint32Array };

/** Fetch and decode the packed per-sample columns (see _points.py for the format). */
export async function getPoints(run, table, revision, onProgress = null) {
  const r = await check(await fetch(q(`/api/runs/${enc(run)}/points`, { table, revision }), { headers: headers() }));
  const buf = onProgress && r.body ? await readWithProgress(r, onProgress) : await r.arrayBuffer();
  const magic = new TextDecoder().decode(new Uint8Array(buf, 0, 4));
  if (magic !== "DLP1") throw new Error("unexpected points format");
  const hlen = new DataView(buf).getUint32(4, true);
  const header = JSON.parse(new TextDecoder().decode(new Uint8Array(buf, 8, hlen)));
  const start = Math.ceil((8 + hlen) / 8) * 8;
  const cols = {};
  for (const c of header.columns) cols[c.name] = new ARRAYS[c.dtype](buf, start + c.offset, c.length);
  return { header, cols, bytes: buf.byteLength };
}

async function readWithProgress(r, onProgress) {
  const total = +r.headers.get("content-length") || 0, reader = r.body.getReader(), parts = [];
  let loaded = 0;
  onProgress({ loaded, total });
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    parts.push(value);
    loaded += value.length;
    onProgress({ loaded, total });
  }
  const out = new Uint8Array(loaded);
  let o = 0;
  for (const p of parts) { out.set(p, o); o += p.length; }
  return out.buffer;
}

export const enc = encodeURIComponent;

export function thumbURL(table, id, size = 96) {
  return q(`/api/tables/${enc(table)}/samples/${id}/thumb`, { size, token: token() });
}

export function imageURL(table, id) {
  return q(`/api/tables/${enc(table)}/samples/${id}/image`, { token: token() });
}

// Canopy web UI: talks to the node it is served by (same origin). Every /api/ call carries the
// node's token as `Authorization: Bearer TOKEN`; the token comes in the address's fragment
// (#token=..., never sent to a server) and is kept in sessionStorage for this tab.
// Everything from the network goes into the page as text nodes, never as HTML.
'use strict';

// ---------- small helpers ----------

const $ = (id) => document.getElementById(id);

// Attributes el() may set; anything else is ignored (no inline handlers or styles).
const SAFE_ATTRS = /^(class|id|type|value|placeholder|title|href|disabled|checked|open|data-[a-z-]+)$/;

// el('td', {class: 'num'}, 'text', child, ...): string children become text nodes.
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v == null || v === false || !SAFE_ATTRS.test(k)) continue;
    if (k === 'checked' || k === 'disabled' || k === 'open') e[k] = true;
    else e.setAttribute(k, String(v));
  }
  for (const c of children.flat()) {
    if (c == null || c === false) continue;
    e.appendChild(typeof c === 'string' || typeof c === 'number' ? document.createTextNode(String(c)) : c);
  }
  return e;
}

// Replaces an element's children.
function fill(parent, ...children) {
  parent.replaceChildren();
  for (const c of children.flat()) if (c) parent.appendChild(typeof c === 'string' ? document.createTextNode(c) : c);
}

// 1234567 -> "1.2 MB" (decimal units).
function fmtBytes(n) {
  const units = ['B', 'kB', 'MB', 'GB', 'TB'];
  let v = Number(n) || 0, u = 0;
  while (v >= 1000 && u < units.length - 1) { v /= 1000; u++; }
  return u === 0 ? `${v} B` : `${v.toFixed(1)} ${units[u]}`;
}
const fmtSpeed = (n) => (n ? `${fmtBytes(n)}/s` : '');
const pad2 = (n) => String(n).padStart(2, '0');

// Seconds -> "45s", "1m 05s", "2h 03m".
function fmtDur(s) {
  if (s == null) return '';
  s = Math.round(s);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${pad2(s % 60)}s`;
  return `${Math.floor(s / 3600)}h ${pad2(Math.floor((s % 3600) / 60))}m`;
}

// Track length: "3:07" or "1:02:03".
function fmtLength(s) {
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
  return h ? `${h}:${pad2(m)}:${pad2(sec)}` : `${m}:${pad2(sec)}`;
}

// Seconds since the epoch -> "5 min ago".
function relTime(secs) {
  if (secs == null) return 'never';
  const d = Math.max(0, Date.now() / 1000 - secs);
  if (d < 60) return 'just now';
  if (d < 3600) return `${Math.floor(d / 60)} min ago`;
  if (d < 86400) return `${Math.floor(d / 3600)} h ago`;
  return `${Math.floor(d / 86400)} days ago`;
}

// "5MB" -> 5e6, "700MiB" -> 700 * 2^20, "1234" -> 1234, "" -> null, junk -> NaN.
function parseSize(text) {
  const t = text.trim();
  if (!t) return null;
  const m = /^(\d+(?:\.\d+)?)\s*([kmgt]?)(i?)b?$/i.exec(t);
  if (!m) return NaN;
  const power = ' kmgt'.indexOf(m[2].toLowerCase() || ' ');
  return Math.round(parseFloat(m[1]) * Math.pow(m[3] ? 1024 : 1000, power));
}

const short = (hex) => (hex ? hex.slice(0, 12) + '…' : '');
const extOf = (name) => { const i = name.lastIndexOf('.'); return i > 0 ? name.slice(i + 1).toLowerCase() : ''; };

// ---------- notices ----------

function notice(msg, kind = 'error') {
  $('notice-text').textContent = msg;
  $('notice').className = kind;
}
$('notice-close').addEventListener('click', () => $('notice').classList.add('hidden'));

// ---------- the token ----------

const TOKEN_KEY = 'canopy-token';
const NO_TOKEN = 'No token: open the address `leaf web-url` prints.';

// The token from the address's fragment (then kept for this tab and taken out of the address
// bar), else the one kept earlier; null if there is none.
function takeToken() {
  if (location.hash.startsWith('#token=')) {
    const m = /^#token=([0-9a-f]{64})$/.exec(location.hash);
    history.replaceState(null, '', location.pathname + location.search);
    if (m) {
      try { sessionStorage.setItem(TOKEN_KEY, m[1]); } catch { /* storage off: this page only */ }
      return m[1];
    }
  }
  try { return sessionStorage.getItem(TOKEN_KEY); } catch { return null; }
}
const token = takeToken();
// A new address pasted into this tab only changes the fragment: load again to take its token.
window.addEventListener('hashchange', () => { if (location.hash.startsWith('#token=')) location.reload(); });

// A refusal's text (a 401's body) with the way out, shown in the notice; returns the message.
function unauthorized(text) {
  const t = (text || '').trim() || 'The node refused the token.';
  const msg = /leaf web-url/.test(t) ? t : `${t} — open the address \`leaf web-url\` prints.`;
  notice(msg);
  return msg;
}

// An HTTP reply that was not 2xx: its status and body text.
class HttpError extends Error {
  constructor(status, text) {
    super(text || `HTTP ${status}`);
    this.status = status;
    this.text = text;
  }
}

// fetch() for /api/ paths, with the token. Without one it answers 401 itself.
function api(path, opts = {}) {
  if (!token) return Promise.resolve(new Response(NO_TOKEN, { status: 401 }));
  return fetch(path, { ...opts, headers: { ...(opts.headers || {}), Authorization: `Bearer ${token}` } });
}

// ---------- talking to the node ----------

// Server-sent events over fetch (EventSource cannot send the token). Calls onEvent(name, data)
// for each event ("message" if unnamed; data lines joined by "\n"); comments are skipped.
// opts: signal (an AbortSignal that stops it), onOpen(response) once the stream is accepted.
// Resolves when the server ends the stream; rejects with an HttpError if it was refused, with
// the fetch's error if it was lost or aborted.
async function sse(url, onEvent, opts = {}) {
  const { signal, onOpen } = opts;
  const res = await api(url, { headers: { Accept: 'text/event-stream' }, cache: 'no-store', signal });
  if (!res.ok) throw new HttpError(res.status, await res.text().catch(() => ''));
  if (onOpen) onOpen(res);
  const reader = res.body.getReader(), dec = new TextDecoder();
  const EOL = /\r\n|\r|\n/g; // lines end in \n, \r\n or \r
  let buf = '', scanned = 0, name = '', data = [], seen = false;
  const line = (l) => {
    if (l === '') { // a blank line ends the event
      if (seen && !(signal && signal.aborted)) {
        try { onEvent(name || 'message', data.join('\n')); } catch (e) { console.error(e); }
      }
      name = ''; data = []; seen = false;
      return;
    }
    if (l[0] === ':') return; // a comment (keep-alive)
    const i = l.indexOf(':');
    const field = i < 0 ? l : l.slice(0, i);
    let value = i < 0 ? '' : l.slice(i + 1);
    if (value[0] === ' ') value = value.slice(1);
    if (field === 'event') { name = value; seen = true; }
    else if (field === 'data') { data.push(value); seen = true; }
    // "id" and "retry" mean nothing here.
  };
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    buf += dec.decode(value, { stream: true });
    let start = 0, m;
    EOL.lastIndex = scanned; // no line ends before this
    while ((m = EOL.exec(buf))) {
      if (m[0] === '\r' && m.index === buf.length - 1) break; // its \n may come next
      line(buf.slice(start, m.index));
      start = EOL.lastIndex;
    }
    buf = buf.slice(start);
    scanned = buf.endsWith('\r') ? buf.length - 1 : buf.length;
  }
  // An event the stream did not finish (no blank line after it) is dropped, as EventSource does.
}

// Sends a control request; calls onReply for each reply as it arrives (NDJSON lines).
// Resolves with every reply once the stream ends. HTTP and network errors become an Error reply
// (a 401 also shows how to get the token).
// With opts.firstOnly it stops reading at the first reply (or after 3 s) and lets the connection
// go: a download's replies last as long as the download, and a browser has few connections.
async function send(req, onReply = () => {}, opts = {}) {
  const replies = [];
  const ctl = new AbortController();
  const push = (r) => { replies.push(r); onReply(r); };
  const take = (line) => {
    if (!line.trim()) return;
    let r;
    try { r = JSON.parse(line); } catch { r = { Error: `bad reply from the node: ${line}` }; }
    push(r);
  };
  const timer = opts.firstOnly ? setTimeout(() => ctl.abort(), 3000) : null;
  try {
    const res = await api('/api/request', {
      method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(req), signal: ctl.signal,
    });
    if (!res.ok) {
      clearTimeout(timer);
      const text = await res.text();
      push({ Error: res.status === 401 ? unauthorized(text) : text || `HTTP ${res.status}` });
      return replies;
    }
    // Read line by line so progress shows as it comes.
    const reader = res.body.getReader(), dec = new TextDecoder();
    let buf = '';
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      buf += dec.decode(value, { stream: true });
      const lines = buf.split('\n');
      buf = lines.pop();
      lines.forEach(take);
      if (opts.firstOnly && replies.length) { ctl.abort(); return replies; }
    }
    take(buf + dec.decode());
  } catch (e) {
    // Our own abort (the 3 s are up) is not trouble: the node carries on.
    if (!ctl.signal.aborted) push({ Error: `cannot reach the node: ${e.message}` });
  } finally {
    clearTimeout(timer);
  }
  return replies;
}

// A reply's kind ("End", "Error", "Shared", ...) and body.
const kindOf = (r) => (typeof r === 'string' ? r : Object.keys(r)[0]);
const bodyOf = (r) => (typeof r === 'string' ? null : r[kindOf(r)]);

// Starts a download and leaves it running; only trouble (or "you have it") in its first reply is
// reported, the rest shows in the status stream. onFail(msg) is called if the node refuses.
function get(ids, out = '', onFail = () => {}, onHave = () => {}) {
  send({ Get: { ids, out, again: false } }, (r) => {
    const k = kindOf(r), b = bodyOf(r);
    if (k === 'Error') { notice(b); onFail(b); }
    else if (k === 'GetFailed') { notice(`download failed: ${b.error}`); onFail(b.error); }
    else if (k === 'GetDone' && b.already_had) { notice(`You already have it: ${b.path}`, 'info'); onHave(b.path); }
  }, { firstOnly: true });
}

// ---------- views ----------

function showView(name) {
  if (!$(`view-${name}`)) name = 'search';
  document.querySelectorAll('main > section').forEach((s) => s.classList.toggle('hidden', s.id !== `view-${name}`));
  document.querySelectorAll('nav button').forEach((b) => b.classList.toggle('active', b.dataset.view === name));
  if (location.hash !== `#${name}`) history.replaceState(null, '', `#${name}`);
}
document.querySelectorAll('nav button').forEach((b) => b.addEventListener('click', () => showView(b.dataset.view)));
showView(location.hash.slice(1));

// ---------- status stream ----------

let statusCtl = null;  // aborts the status stream
let statusDelay = 1000; // wait before reconnecting: 1 s, doubling up to 10 s; reset by a status
const lastJSON = {}; // view -> JSON of what it last drew, to skip unchanged redraws

// Calls draw(value) only when value differs from last time under this key.
function ifChanged(key, value, draw) {
  const j = JSON.stringify(value);
  if (lastJSON[key] === j) return;
  lastJSON[key] = j;
  draw(value);
}

function setConn(up) {
  $('conn').textContent = up ? 'connected' : 'disconnected';
  $('conn').className = `conn ${up ? 'up' : 'down'}`;
}

// Follows the node's status; reconnects with backoff when the stream ends or is lost, but not
// when the token is refused (401): that needs the user, and retrying would only hammer.
async function connectStatus() {
  const ctl = (statusCtl = new AbortController());
  try {
    await sse('/api/events', (name, data) => {
      if (name !== 'status') return;
      setConn(true);
      statusDelay = 1000;
      onStatus(JSON.parse(data));
    }, { signal: ctl.signal, onOpen: () => setConn(true) });
  } catch (e) {
    if (ctl.signal.aborted) return;
    if (e instanceof HttpError && e.status === 401) { setConn(false); unauthorized(e.text); return; }
    if (e instanceof HttpError) notice(`status: ${e.message}`);
  }
  if (ctl.signal.aborted) return;
  setConn(false);
  setTimeout(connectStatus, statusDelay);
  statusDelay = Math.min(statusDelay * 2, 10000);
}

function onStatus(s) {
  $('role').textContent = s.role;
  $('role').title = s.role_reason;
  const active = s.downloads.filter((d) => typeof d.state === 'string').length;
  $('dl-count').textContent = String(active);
  $('dl-count').classList.toggle('zero', active === 0);
  drawDownloads(s.downloads);
  ifChanged('shares', [s.folders, s.folder_stats, s.files, s.bytes], () => drawShares(s));
  ifChanged('network', { ...s, downloads: null, folders: null, folder_stats: null, wishes: null }, () => drawNetwork(s));
  ifChanged('wishes', s.wishes, drawWishes);
}

// ---------- search ----------

const TYPES = {
  audio: 'mp3 flac ogg oga opus m4a aac wav aif aiff wv ape mpc',
  video: 'mkv mp4 avi webm mov m4v mpg mpeg ts wmv',
  images: 'jpg jpeg png gif webp bmp tif tiff svg heic',
  documents: 'txt pdf epub mobi djvu doc docx odt md rtf cbz cbr',
  archives: 'zip rar 7z tar gz bz2 xz zst iso',
};

let searchCtl = null;        // aborts the running search's stream
let results = [];             // the latest grouped list, as the node sent it
const resultRows = new Map(); // id -> <tr>, reused across updates
const marked = new Set();     // ids marked for download
const queued = new Set();     // ids already asked for
let sort = { key: null, dir: 1 }; // null: the node's order (relevance)

function sourceCount(list) {
  return new Set(list.flatMap((r) => r.sources.map((s) => s.node))).size;
}

function searchStatus(done) {
  const n = results.length, m = sourceCount(results);
  const text = `${n} file${n === 1 ? '' : 's'} from ${m} source${m === 1 ? '' : 's'}`;
  $('search-status').textContent = done ? text : `searching… ${n ? text : ''}`;
}

function stopSearch() {
  if (searchCtl) searchCtl.abort();
  searchCtl = null;
}

$('search-form').addEventListener('submit', (e) => {
  e.preventDefault();
  const words = $('search-input').value.trim();
  if (!words) return;
  const min = parseSize($('search-min').value), max = parseSize($('search-max').value);
  if (Number.isNaN(min) || Number.isNaN(max)) {
    $('search-status').textContent = 'sizes look like 5MB, 700MiB or 1234 (bytes)';
    return;
  }
  const q = new URLSearchParams({ search: words, wait_ms: '6000' });
  const ext = $('search-ext').value.trim().replace(/^\./, '').toLowerCase();
  if (ext) q.set('ext', ext);
  if (min != null) q.set('min_size', String(min));
  if (max != null) q.set('max_size', String(max));
  stopSearch();
  results = [];
  drawResults();
  $('search-status').textContent = 'searching…';
  const ctl = (searchCtl = new AbortController());
  const mine = () => searchCtl === ctl; // false once ended, failed or replaced by a newer search
  sse(`/api/events?${q}`, (name, data) => {
    if (!mine()) return;
    if (name === 'results') { results = JSON.parse(data); drawResults(); searchStatus(false); }
    else if (name === 'end') { stopSearch(); searchStatus(true); }
    else if (name === 'failed') {
      stopSearch();
      let msg = data;
      try { msg = JSON.parse(data); } catch { /* plain text */ }
      $('search-status').textContent = `search failed: ${msg}`;
    }
  }, { signal: ctl.signal }).then(() => {
    // Never reconnect: that would run the search again. A stream that closes after results is
    // taken as finished; one that gives nothing was lost.
    if (!mine()) return;
    searchCtl = null;
    if (results.length) searchStatus(true);
    else $('search-status').textContent = 'search failed: the node ended it without an answer';
  }, (e) => {
    if (!mine()) return;
    searchCtl = null;
    if (e instanceof HttpError && e.status === 401) $('search-status').textContent = `search failed: ${unauthorized(e.text)}`;
    else if (e instanceof HttpError) $('search-status').textContent = `search failed: ${e.message}`;
    else if (results.length) searchStatus(true);
    else $('search-status').textContent = 'search failed: the node could not be reached';
  });
});

// The shown results: type and text filters applied, then sorted.
function shownResults() {
  const type = $('search-type').value, exts = TYPES[type] ? TYPES[type].split(' ') : null;
  const f = $('results-filter').value.trim().toLowerCase();
  const list = results.filter((r) =>
    (!exts || exts.includes(extOf(r.name))) &&
    (!f || r.name.toLowerCase().includes(f) || r.path.toLowerCase().includes(f)));
  const val = { name: (r) => r.name.toLowerCase(), size: (r) => r.size, sources: (r) => r.sources.length }[sort.key];
  if (val) list.sort((a, b) => (val(a) < val(b) ? -1 : val(a) > val(b) ? 1 : 0) * sort.dir);
  return list;
}

// One result row, made once per id; its cells are refilled on each update.
function resultRow(id) {
  if (resultRows.has(id)) return resultRows.get(id);
  const byId = () => results.find((r) => r.id === id);
  const mark = el('input', { type: 'checkbox', class: 'mark', title: 'Mark for download' });
  mark.addEventListener('change', () => { mark.checked ? marked.add(id) : marked.delete(id); drawMarked(); });
  const dl = el('button', { type: 'button', class: 'download', disabled: queued.has(id) }, queued.has(id) ? 'Queued' : 'Download');
  dl.addEventListener('click', () => {
    queued.add(id);
    dl.disabled = true;
    dl.textContent = 'Queued';
    get([id], '', () => { queued.delete(id); dl.disabled = false; dl.textContent = 'Download'; },
      () => { dl.textContent = 'Have'; });
  });
  const browse = el('button', { type: 'button', class: 'browse', title: 'List everything this source shares' }, 'Browse');
  browse.addEventListener('click', () => {
    const r = byId();
    if (r && r.sources.length) browsePeer(r.sources[0].addr);
  });
  const tr = el('tr', { class: 'result', 'data-id': id },
    el('td', {}, mark), el('td', { class: 'name' }), el('td', { class: 'opt tags' }), el('td', { class: 'num' }),
    el('td', { class: 'opt' }), el('td', { class: 'num' }), el('td', { class: 'opt' }), el('td', { class: 'actions' }, dl, browse));
  tr.refs = { mark, dl, browse };
  resultRows.set(id, tr);
  return tr;
}

function drawResults() {
  const tbody = $('results').tBodies[0];
  const shown = shownResults(), ids = new Set(shown.map((r) => r.id));
  const all = new Set(results.map((r) => r.id));
  for (const [id, tr] of resultRows) if (!all.has(id)) { tr.remove(); resultRows.delete(id); marked.delete(id); }
  for (const tr of [...tbody.rows]) if (!ids.has(tr.dataset.id)) tr.remove(); // filtered out
  shown.forEach((r, i) => {
    const tr = resultRow(r.id), c = tr.cells, t = r.tags || {};
    c[1].textContent = r.name;
    c[1].title = r.path;
    const head = [t.artist, t.title].filter(Boolean).join(' – ');
    fill(c[2], head, t.album ? el('div', { class: 'sub' }, t.album + (t.year ? ` (${t.year})` : '')) : null);
    c[3].textContent = fmtBytes(r.size);
    c[4].textContent = [t.duration_s != null ? fmtLength(t.duration_s) : '', t.bitrate_kbps ? `${t.bitrate_kbps} kbps` : '']
      .filter(Boolean).join(' · ');
    c[5].textContent = String(r.sources.length);
    fill(c[6], r.have ? el('span', { class: 'have', title: r.have }, 'have') : null);
    tr.refs.mark.checked = marked.has(r.id);
    tr.refs.browse.disabled = !r.sources.length;
    if (tbody.rows[i] !== tr) tbody.insertBefore(tr, tbody.rows[i] || null);
  });
  drawMarked();
}

function drawMarked() {
  const b = $('download-marked');
  b.disabled = marked.size === 0;
  b.textContent = marked.size ? `Download marked (${marked.size})` : 'Download marked';
}

$('download-marked').addEventListener('click', () => {
  const ids = [...marked];
  if (!ids.length) return;
  for (const id of ids) {
    queued.add(id);
    const r = resultRows.get(id);
    if (r) { r.refs.dl.disabled = true; r.refs.dl.textContent = 'Queued'; r.refs.mark.checked = false; }
  }
  marked.clear();
  drawMarked();
  get(ids);
});

document.querySelectorAll('#results th.sortable').forEach((th) => th.addEventListener('click', () => {
  sort = { key: th.dataset.sort, dir: sort.key === th.dataset.sort ? -sort.dir : 1 };
  document.querySelectorAll('#results th.sortable').forEach((h) => { h.dataset.dir = h === th ? (sort.dir > 0 ? 'asc' : 'desc') : ''; });
  drawResults();
}));
$('results-filter').addEventListener('input', drawResults);
$('search-type').addEventListener('change', drawResults);

// ---------- downloads ----------

const ACTIVE = { Queued: 'queued', Searching: 'searching', Running: 'running', Verifying: 'verifying', Waiting: 'waiting for sources' };

function stateText(st) {
  if (typeof st === 'string') return ACTIVE[st] || st.toLowerCase();
  if ('Done' in st) return 'done';
  return `failed: ${st.Failed}`;
}

function copyButton(text) {
  const b = el('button', { type: 'button', class: 'copy' }, 'copy path');
  if (!navigator.clipboard || !navigator.clipboard.writeText) { b.disabled = true; b.title = 'Clipboard not available here'; }
  b.addEventListener('click', () => navigator.clipboard.writeText(text)
    .then(() => { b.textContent = 'copied'; }, (e) => notice(`cannot copy: ${e.message}`)));
  return b;
}

// The buttons a download gets in its state ("active", "failed" or "done").
function downloadActions(d, kind) {
  const btn = (cls, label, onClick) => { const b = el('button', { type: 'button', class: cls }, label); b.addEventListener('click', onClick); return b; };
  const discard = btn('cancel', 'Cancel', () => {
    if (confirm(`Cancel "${d.name}" and delete its partial file?`)) send({ Discard: { id: d.id } }, reportErrors);
  });
  if (kind === 'active') return [btn('pause', 'Pause', () => send({ Cancel: { id: d.id } }, reportErrors)), discard];
  if (kind === 'failed') return [btn('resume', 'Resume', () => get([d.id], d.out)), discard];
  return [copyButton(d.state.Done)];
}

function reportErrors(r) { if (kindOf(r) === 'Error') notice(bodyOf(r)); }

function drawDownloads(list) {
  const tbody = $('downloads').tBodies[0];
  const rows = new Map([...tbody.rows].map((tr) => [tr.dataset.id, tr]));
  $('downloads-empty').classList.toggle('hidden', list.length > 0);
  list.forEach((d, i) => {
    let tr = rows.get(d.id);
    if (!tr) {
      tr = el('tr', { class: 'download', 'data-id': d.id },
        el('td', { class: 'name' }, el('span'), el('div', { class: 'path' })),
        el('td', {}, el('div', { class: 'progress' }, el('div', { class: 'fill' }))),
        el('td', { class: 'num' }), el('td', { class: 'opt num' }), el('td', { class: 'num' }), el('td', { class: 'num' }),
        el('td', { class: 'opt num' }), el('td', { class: 'state' }), el('td', { class: 'actions' }));
    }
    rows.delete(d.id);
    const c = tr.cells, st = d.state;
    const kind = typeof st === 'string' ? 'active' : 'Done' in st ? 'done' : 'failed';
    const pct = d.size ? Math.min(100, Math.floor((d.done_bytes * 100) / d.size)) : kind === 'done' ? 100 : 0;
    c[0].firstChild.textContent = d.name;
    c[0].lastChild.textContent = kind === 'done' ? st.Done : '';
    c[1].firstChild.firstChild.style.width = `${pct}%`;
    c[2].textContent = `${pct}%`;
    c[3].textContent = `${fmtBytes(d.done_bytes)} / ${fmtBytes(d.size)}`;
    c[4].textContent = kind === 'active' ? fmtSpeed(d.speed) : '';
    c[5].textContent = kind === 'active' ? fmtDur(d.eta_s) : '';
    c[6].textContent = String(d.sources);
    c[7].textContent = stateText(st);
    c[7].title = st === 'Running' && d.queued_at != null ? `in a source's upload queue, place ${d.queued_at}`
      : kind === 'failed' && st.Failed === 'cancelled' ? 'paused: Resume continues where it stopped' : '';
    tr.dataset.state = kind;
    // Rebuild the buttons only when the kind of state changes, so clicks are not lost.
    if (tr.dataset.kind !== kind) { tr.dataset.kind = kind; fill(c[8], downloadActions(d, kind)); }
    if (tbody.rows[i] !== tr) tbody.insertBefore(tr, tbody.rows[i] || null);
  });
  for (const tr of rows.values()) tr.remove();
}

// ---------- shares ----------

function drawShares(s) {
  const n = s.folders.length;
  $('share-totals').textContent = `${s.files} files, ${fmtBytes(s.bytes)} shared from ${n} folder${n === 1 ? '' : 's'}`;
  const stats = new Map(s.folder_stats.map((f) => [f.folder, f]));
  fill($('shares').tBodies[0], s.folders.map((folder) => {
    const f = stats.get(folder);
    const b = el('button', { type: 'button', class: 'unshare' }, 'Stop sharing');
    b.addEventListener('click', () => {
      if (!confirm(`Stop sharing ${folder}?`)) return;
      b.disabled = true;
      send({ Unshare: { path: folder } }, (r) => {
        if (kindOf(r) === 'Error') { notice(bodyOf(r)); b.disabled = false; }
        if (kindOf(r) === 'Unshared') $('share-status').textContent = `stopped sharing ${bodyOf(r).files} files from ${bodyOf(r).folder}`;
      });
    });
    return el('tr', { class: 'share' }, el('td', { class: 'path' }, folder),
      el('td', { class: 'num' }, f ? String(f.files) : ''), el('td', { class: 'num' }, f ? fmtBytes(f.bytes) : ''), el('td', {}, b));
  }));
}

$('share-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  const path = $('share-path').value.trim(), status = $('share-status');
  if (!path) return;
  const submit = e.target.querySelector('button');
  submit.disabled = true;
  status.textContent = `scanning ${path}…`;
  await send({ Share: { paths: [path] } }, (r) => {
    const k = kindOf(r), b = bodyOf(r);
    if (k === 'ShareProgress') {
      const bytes = b.bytes_total ? ` (${fmtBytes(b.bytes_done)} of ${fmtBytes(b.bytes_total)})` : '';
      status.textContent = `hashing ${b.files_done}/${b.files_total} files${bytes}…`;
    } else if (k === 'Shared') {
      fill(status, `shared ${b.files} files (${fmtBytes(b.bytes)}) from ${b.folder}; ${b.skipped.length} skipped`,
        b.skipped.length ? el('details', {}, el('summary', {}, 'skipped files'),
          el('ul', {}, b.skipped.map(([p, why]) => el('li', {}, `${p}: ${why}`)))) : null);
      $('share-path').value = '';
    } else if (k === 'Error') {
      status.textContent = `failed: ${b}`;
      notice(b);
    }
  });
  submit.disabled = false;
});

// ---------- network ----------

function drawNetwork(s) {
  const row = (label, ...value) => [el('dt', {}, label), el('dd', {}, ...value)];
  const r = s.reach, pm = s.port_mapping, sp = s.superpeer;
  const cap = (n) => (n ? `${fmtBytes(n)}/s` : 'none');
  fill($('net-facts'), [
    row('node', el('span', { title: s.node, class: 'mono' }, short(s.node))),
    row('role', el('strong', {}, s.role), ` — ${s.role_reason}`),
    row('listening', s.listen || 'nothing'),
    row('reachable', !r ? 'not known yet' : r.reachable ? `reachable at ${r.observed}` : `not reachable (seen as ${r.observed})`,
      r && r.nat ? ` · NAT: ${r.nat}` : ''),
    s.reach_also ? row('also', s.reach_also.reachable ? `reachable at ${s.reach_also.observed}`
      : `not reachable (seen as ${s.reach_also.observed})`) : null,
    row('port mapping', !pm ? 'the listen port' : pm.port != null ? `port ${pm.port} (${pm.how})` : `none (${pm.how})`),
    row('super-peers', s.superpeers.length ? el('ul', {}, s.superpeers.map((l) => el('li', {},
      `${l.addr} — ${l.connected ? 'connected' : 'not connected'}`,
      l.node ? el('span', { title: l.node, class: 'mono muted' }, ` ${short(l.node)}`) : null))) : 'none attached'),
    row('host cache', `${s.hosts} super-peer${s.hosts === 1 ? '' : 's'} known`),
    sp ? row('as super-peer', `${sp.listen} · ${sp.leaves}/${sp.leaf_slots} leaves · ${sp.neighbours} neighbours · ` +
      `${sp.records} records · ${sp.queries} queries`) : null,
    row('uploaded', `${fmtBytes(s.uploaded_bytes)} (${s.uploaded_chunks} chunks)`),
    row('upload slots', `${s.upload_slots[0]}/${s.upload_slots[1]} in use, ${s.upload_queue} waiting`),
    row('rate caps', `up ${cap(s.upload_rate)} · down ${cap(s.download_rate)}`),
    row('indirect', `${s.indirect.reverse} reverse · ${s.indirect.punched} punched · ${s.indirect.relayed} relayed`),
    s.web ? row('web UI', s.web) : null,
  ].flat());
  fill($('events'), s.events.slice(-20).reverse().map((ev) => el('li', {}, ev)));
}

// ---------- browse ----------

let listing = null; // { addr, files, total }

function browsePeer(addr) {
  showView('browse');
  $('browse-addr').value = addr;
  $('browse-status').textContent = `asking ${addr}…`;
  fill($('browse-tree'));
  const files = [];
  let total = 0, got = addr;
  send({ Browse: { source: addr } }, (r) => {
    const k = kindOf(r), b = bodyOf(r);
    if (k === 'Listing') { files.push(...b.files); total = b.total; got = b.addr; }
    else if (k === 'Error') { notice(b); $('browse-status').textContent = `failed: ${b}`; }
  }).then((replies) => {
    if (!replies.some((r) => kindOf(r) === 'Listing')) return;
    listing = { addr: got, files, total };
    drawBrowse();
  });
}

$('browse-form').addEventListener('submit', (e) => {
  e.preventDefault();
  const addr = $('browse-addr').value.trim();
  if (addr) browsePeer(addr);
});

// Folders from path components: { dirs: Map(name -> node), files: [], count, bytes, path }.
function buildTree(files) {
  const root = { dirs: new Map(), files: [], count: 0, bytes: 0, path: '' };
  for (const f of files) {
    const parts = f.path.split('/');
    let node = root;
    node.count++; node.bytes += f.size;
    for (const part of parts.slice(0, -1)) {
      if (!node.dirs.has(part)) node.dirs.set(part, { dirs: new Map(), files: [], count: 0, bytes: 0, path: node.path ? `${node.path}/${part}` : part });
      node = node.dirs.get(part);
      node.count++; node.bytes += f.size;
    }
    node.files.push({ ...f, name: parts[parts.length - 1] });
  }
  return root;
}

// A folder's contents; subfolders fill in when first opened (listings can be large).
function treeItems(node) {
  const items = [];
  for (const [name, dir] of node.dirs) {
    const getFolder = el('button', { type: 'button', class: 'get-folder' }, 'Download folder');
    getFolder.addEventListener('click', (e) => {
      e.preventDefault(); // don't toggle the <details>
      getFolder.disabled = true;
      getFolder.textContent = 'Queued';
      send({ GetFolder: { source: listing.addr, folder: dir.path, out: '', again: false } }, (r) => {
        if (kindOf(r) === 'Error') notice(bodyOf(r));
        if (kindOf(r) === 'GetFailed') notice(`download failed: ${bodyOf(r).error}`);
      }, { firstOnly: true });
    });
    const body = el('ul', { class: 'tree' });
    const details = el('details', {}, el('summary', {}, el('span', { class: 'folder' }, `${name}/`),
      el('span', { class: 'muted' }, ` ${dir.count} files, ${fmtBytes(dir.bytes)} `), getFolder), body);
    details.addEventListener('toggle', () => { if (details.open && !body.firstChild) fill(body, treeItems(dir)); });
    items.push(el('li', {}, details));
  }
  for (const f of node.files) {
    const b = el('button', { type: 'button', class: 'download' }, 'Download');
    b.addEventListener('click', () => {
      b.disabled = true;
      b.textContent = 'Queued';
      get([f.id], '', () => { b.disabled = false; b.textContent = 'Download'; }, () => { b.textContent = 'Have'; });
    });
    items.push(el('li', { class: 'file' }, el('span', { title: f.path }, f.name), el('span', { class: 'muted' }, ` ${fmtBytes(f.size)} `), b));
  }
  return items;
}

function drawBrowse() {
  const { addr, files, total } = listing;
  const root = buildTree(files);
  const more = total > files.length ? ` (listing ${files.length} of ${total})` : '';
  $('browse-status').textContent = `${addr}: ${total} files, ${fmtBytes(root.bytes)} listed${more}`;
  fill($('browse-tree'), el('ul', { class: 'tree' }, treeItems(root)));
  // A lone top folder opens by itself.
  const first = $('browse-tree').querySelector('details');
  if (root.dirs.size === 1 && !root.files.length && first) first.open = true;
}

// ---------- wishes ----------

function drawWishes(list) {
  fill($('wishes'), list.length ? list.map((w) => {
    const f = w.filter || {}, filt = [f.ext ? `.${f.ext}` : '', f.min_size != null ? `≥ ${fmtBytes(f.min_size)}` : '',
      f.max_size != null ? `≤ ${fmtBytes(f.max_size)}` : ''].filter(Boolean).join(', ');
    const rm = el('button', { type: 'button', class: 'wish-remove' }, 'Remove');
    rm.addEventListener('click', () => {
      rm.disabled = true;
      send({ WishRemove: { id: w.id } }, onWishReply);
    });
    const newest = w.matches.slice(-5).reverse();
    return el('li', { class: 'wish', 'data-id': String(w.id) },
      el('div', {}, el('strong', {}, w.words), filt ? el('span', { class: 'muted' }, ` (${filt})`) : null, ' ', rm),
      el('div', { class: 'muted' }, `${w.auto ? 'auto-download' : 'list only'} · last run ${relTime(w.last_run)} · ` +
        `${w.matches.length} match${w.matches.length === 1 ? '' : 'es'}`),
      newest.length ? el('ul', { class: 'matches' }, newest.map((m) => el('li', {}, m.name, el('span', { class: 'muted' }, ` ${fmtBytes(m.size)}`)))) : null);
  }) : el('li', { class: 'muted' }, 'No wishes yet: the node searches for each again and again.'));
}

// "Wishes" replies redraw the list; errors go to the notice.
function onWishReply(r) {
  if (kindOf(r) === 'Wishes') { lastJSON.wishes = JSON.stringify(bodyOf(r)); drawWishes(bodyOf(r)); }
  else reportErrors(r);
}

$('wish-form').addEventListener('submit', (e) => {
  e.preventDefault();
  const words = $('wish-words').value.trim();
  if (!words) return;
  const ext = $('wish-ext').value.trim().replace(/^\./, '').toLowerCase() || null;
  send({ WishAdd: { words, filter: { ext, min_size: null, max_size: null }, auto: $('wish-auto').checked, out: '' } }, (r) => {
    if (kindOf(r) === 'Wishes') { $('wish-words').value = ''; $('wish-ext').value = ''; }
    onWishReply(r);
  });
});

// ---------- start ----------

drawWishes([]);
if (token) connectStatus();
else notice(NO_TOKEN);

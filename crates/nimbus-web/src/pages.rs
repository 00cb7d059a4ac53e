//! The GUI: server-rendered pages with a little JavaScript, no build step, nothing from a CDN.

use axum::extract::{Path, State};
use axum::response::Html;
use nimbus_core::Job;
use nimbus_workloads::atoms::AtomsResult;

use crate::error::ApiError;
use crate::AppState;

const STYLE: &str = r#"
:root { --ink:#1d2433; --muted:#5b6475; --line:#e3e6ee; --accent:#3b5bdb; --ok:#2b8a3e; --bad:#c92a2a; --bg:#f7f8fb; }
* { box-sizing: border-box; }
body { margin:0; font:16px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color:var(--ink); background:var(--bg); }
header { background:#141a2e; color:#fff; padding:14px 28px; display:flex; align-items:baseline; gap:16px; }
header a { color:#fff; text-decoration:none; font-weight:700; font-size:20px; }
header span { color:#aab3c9; font-size:14px; }
header nav { margin-left:auto; display:flex; gap:18px; } header nav a { font-size:15px; font-weight:600; color:#cfd6e6; }
.drop { border:2px dashed #aab3c9; border-radius:10px; padding:34px; text-align:center; color:var(--muted); cursor:pointer; }
.drop.over { border-color:var(--accent); background:#eef2ff; }
.grid { display:grid; grid-template-columns:repeat(auto-fill, minmax(200px, 1fr)); gap:16px; }
.tile { background:#fff; border:1px solid var(--line); border-radius:10px; overflow:hidden; }
.tile img { width:100%; height:150px; object-fit:cover; display:block; background:#eef1f8; }
.tile .cap { padding:10px 12px; font-size:14px; } .tile .name { color:var(--muted); font-size:12px; overflow:hidden; text-overflow:ellipsis; white-space:nowrap; }
.tile .label { font-weight:700; margin-top:4px; } .tile .score { color:var(--muted); font-variant-numeric:tabular-nums; }
main { max-width:960px; margin:28px auto; padding:0 20px; }
.card { background:#fff; border:1px solid var(--line); border-radius:10px; padding:22px 24px; margin-bottom:22px; }
h1 { font-size:22px; margin:0 0 14px; } h2 { font-size:18px; margin:0 0 12px; }
label { display:block; font-weight:600; font-size:14px; margin-bottom:4px; }
input[type=number], input[type=file] { width:100%; padding:8px 10px; border:1px solid #c8cedb; border-radius:6px; font-size:15px; }
.row { display:grid; grid-template-columns: repeat(3, 1fr); gap:16px; margin-bottom:14px; }
.hint { color:var(--muted); font-size:13px; margin-top:3px; }
button { background:var(--accent); color:#fff; border:0; border-radius:6px; padding:10px 18px; font-size:15px; font-weight:600; cursor:pointer; }
button.secondary { background:#fff; color:var(--bad); border:1px solid var(--bad); }
table { width:100%; border-collapse:collapse; font-size:14px; }
th, td { text-align:left; padding:8px 6px; border-bottom:1px solid var(--line); }
th { color:var(--muted); font-weight:600; }
.state { font-weight:600; } .state.succeeded { color:var(--ok); } .state.failed, .state.cancelled { color:var(--bad); } .state.running, .state.queued { color:var(--accent); }
.bar { height:26px; background:#e9ecf5; border-radius:13px; overflow:hidden; }
.bar > div { height:100%; width:0; background:linear-gradient(90deg,#4c6ef5,#15aabf); transition:width .15s linear; }
.stats { display:flex; justify-content:space-between; color:var(--muted); font-size:14px; margin-top:8px; }
.result { display:grid; grid-template-columns: 1fr 1fr; gap:22px; align-items:start; }
.big { font-size:30px; font-weight:700; font-variant-numeric: tabular-nums; }
.kv { display:grid; grid-template-columns:auto 1fr; gap:4px 14px; font-size:15px; } .kv dt { color:var(--muted); } .kv dd { margin:0; font-variant-numeric: tabular-nums; }
img.plane { width:100%; max-width:420px; image-rendering:pixelated; border-radius:6px; border:1px solid var(--line); }
.error { color:var(--bad); font-weight:600; }
code { background:#eef1f8; padding:1px 5px; border-radius:4px; }
svg.chart { width:100%; height:auto; background:#fbfcfe; border:1px solid var(--line); border-radius:6px; }
button:disabled { background:#c8cedb; cursor:default; }
"#;

/// A page of the GUI: `body` inside the common header and style.
pub fn page(title: &str, body: &str) -> Html<String> {
    Html(format!(
        "<!doctype html><html lang=en><head><meta charset=utf-8><meta name=viewport content='width=device-width,initial-scale=1'>\
         <title>{title} · nimbus</title><style>{STYLE}</style></head><body>\
         <header><a href='/'>nimbus</a><span>elastic, queue-driven computing</span><nav><a href='/'>atoms</a><a href='/classify'>images</a><a href='/video'>video</a><a href='/fleet'>fleet</a><a href='/queues'>queues</a></nav></header><main>{body}</main></body></html>"
    ))
}

/// Escapes text for HTML.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

fn param(job: &Job, name: &str) -> String {
    job.params
        .get(name)
        .map_or_else(|| "–".into(), ToString::to_string)
}

fn job_row(job: &Job) -> String {
    let minimum = job
        .result
        .clone()
        .and_then(|r| serde_json::from_value::<AtomsResult>(r).ok())
        .map_or_else(|| "–".into(), |r| format!("{:.6}", r.minimum));
    let pct = (job.progress.done * 100)
        .checked_div(job.progress.total)
        .unwrap_or(0);
    format!(
        "<tr><td><a href='/jobs/{id}'><code>{short}</code></a></td><td>{kind}</td><td class='state {state}'>{state}</td><td>{grid}</td><td>{atoms}</td><td>{pct} %</td><td>{minimum}</td></tr>",
        id = escape(&job.id),
        short = escape(&job.id[job.id.len().saturating_sub(12)..]),
        kind = escape(&job.kind),
        state = job.state.as_str(),
        grid = param(job, "grid_size"),
        atoms = param(job, "atom_count"),
    )
}

pub async fn home(State(state): State<AppState>) -> Result<Html<String>, ApiError> {
    let jobs = state.store.list(15).await?;
    let rows: String = jobs.iter().map(job_row).collect();
    let recent = if rows.is_empty() {
        "<p class=hint>No jobs yet.</p>".to_string()
    } else {
        format!("<table><tr><th>job</th><th>kind</th><th>state</th><th>grid</th><th>atoms</th><th>progress</th><th>minimum</th></tr>{rows}</table>")
    };
    let limits = state.config.limits;
    let body = format!(
        r#"<section class=card><h1>Atom-effect calculator</h1>
<p class=hint>The effect at a grid point is the sum over atoms of energy / distance. nimbus splits the grid into slabs,
solves them on workers and streams the progress here, one step per grid point.</p>
<form id=job>
<div class=row>
 <div><label for=grid>Grid size n (n³ points)</label><input id=grid name=grid type=number min=1 max={max_grid} value=16 required><div class=hint>1 to {max_grid}</div></div>
 <div><label for=atoms>Atom count</label><input id=atoms name=atoms type=number min=1 max={max_atoms} value=1000><div class=hint>1 to {max_atoms}, random in the grid</div></div>
 <div><label for=seed>Seed (optional)</label><input id=seed name=seed type=number min=0 placeholder=random><div class=hint>same seed, same atoms</div></div>
</div>
<div style="margin-bottom:14px"><label for=file>…or an atom file</label><input id=file name=file type=file accept=".txt,.csv,text/plain"><div class=hint>one atom a line: <code>x y z energy</code>, inside the grid</div></div>
<button type=submit id=submit>Compute</button> <span id=msg class=error></span>
</form></section>
<section class=card><h2>Recent jobs</h2>{recent}</section>
<script>
document.getElementById('job').addEventListener('submit', async (ev) => {{
  ev.preventDefault();
  const msg = document.getElementById('msg'); msg.textContent = '';
  const grid = Number(document.getElementById('grid').value);
  const params = {{ grid_size: grid }};
  const file = document.getElementById('file').files[0];
  try {{
    if (file) {{
      const up = await fetch('/api/v1/atoms', {{ method: 'POST', body: await file.text() }});
      const u = await up.json(); if (!up.ok) throw new Error(u.error);
      params.atoms_key = u.atoms_key;
    }} else {{
      params.atom_count = Number(document.getElementById('atoms').value);
      const seed = document.getElementById('seed').value; if (seed !== '') params.seed = Number(seed);
    }}
    const r = await fetch('/api/v1/jobs', {{ method: 'POST', headers: {{ 'Content-Type': 'application/json' }}, body: JSON.stringify({{ kind: 'atoms', params }}) }});
    const j = await r.json(); if (!r.ok) throw new Error(j.error);
    location.href = '/jobs/' + j.id;
  }} catch (e) {{ msg.textContent = e.message; }}
}});
</script>"#,
        max_grid = limits.max_grid,
        max_atoms = limits.max_atoms,
    );
    Ok(page("atom-effect calculator", &body))
}

pub async fn job_page(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Html<String>, ApiError> {
    let job = state.store.get(&id).await?;
    if job.kind == nimbus_workloads::video::KIND {
        return Ok(crate::video::job_page(&job));
    }
    let cancel = if job.state.is_terminal() {
        ""
    } else {
        "<button class=secondary id=cancel>Cancel</button>"
    };
    let body = format!(
        r#"<section class=card><h1>Job <code>{id}</code></h1>
<dl class=kv><dt>state</dt><dd id=state class='state {state}'>{state}</dd><dt>grid</dt><dd>{grid}³ points</dd><dt>atoms</dt><dd>{atoms}</dd></dl></section>
<section class=card><h2>Progress</h2>
<div class=bar><div id=fill></div></div>
<div class=stats><span id=points>0 of {total} points</span><span id=pct>0 %</span><span id=eta></span></div>
<p style="margin-top:14px">{cancel}</p></section>
<section class=card id=resultcard style="display:none"><h2>Result</h2><div class=result>
<div><div class=hint>minimum effect</div><div class=big id=minimum></div>
<dl class=kv style="margin-top:12px"><dt>at grid point</dt><dd id=point></dd><dt>atoms</dt><dd id=ratoms></dd><dt>grid</dt><dd id=rgrid></dd><dt>time</dt><dd id=elapsed></dd><dt>computed on</dt><dd id=backend></dd></dl></div>
<div><div class=hint id=planecap></div><img class=plane id=plane alt="heat map of the potential in the plane of the minimum"></div>
</div></section>
<section class=card id=errorcard style="display:none"><h2>Error</h2><p class=error id=error></p></section>
<script>
const total = {total}; let done = 0; const started = Date.now(); let first = null;
const fmt = (n) => n.toLocaleString('en-US');
function show(d) {{
  if (d <= done && d !== total) return; done = Math.min(d, total);
  const pct = total ? done * 100 / total : 0;
  document.getElementById('fill').style.width = pct + '%';
  document.getElementById('points').textContent = fmt(done) + ' of ' + fmt(total) + ' points';
  document.getElementById('pct').textContent = Math.floor(pct) + ' %';
  if (first === null && done > 0) first = {{ t: Date.now(), d: done }};
  const eta = document.getElementById('eta');
  if (first && done < total && done > first.d) {{
    const rate = (done - first.d) / ((Date.now() - first.t) / 1000);
    eta.textContent = 'about ' + Math.max(1, Math.round((total - done) / rate)) + ' s left';
  }} else eta.textContent = '';
}}
function setState(s) {{ const e = document.getElementById('state'); e.textContent = s; e.className = 'state ' + s;
  if (['succeeded','failed','cancelled'].includes(s)) {{ const c = document.getElementById('cancel'); if (c) c.remove(); }} }}
function result(r) {{
  show(total); setState('succeeded');
  document.getElementById('minimum').textContent = r.minimum.toPrecision(8);
  document.getElementById('point').textContent = '(' + r.point.join(', ') + ')';
  document.getElementById('ratoms').textContent = fmt(r.atom_count);
  document.getElementById('rgrid').textContent = r.grid_size + '³';
  document.getElementById('elapsed').textContent = (r.elapsed_ms / 1000).toFixed(3) + ' s';
  document.getElementById('backend').textContent = r.backend;
  document.getElementById('planecap').textContent = 'effect in the plane z = ' + r.point[2] + ' (minimum outlined)';
  document.getElementById('plane').src = r.picture;
  document.getElementById('resultcard').style.display = '';
}}
function failed(msg, s) {{ setState(s); document.getElementById('error').textContent = msg; document.getElementById('errorcard').style.display = ''; }}
{events}</script>"#,
        id = escape(&job.id),
        state = job.state.as_str(),
        grid = param(&job, "grid_size"),
        atoms = param(&job, "atom_count"),
        events = job_events_script(&job.id),
        total = job.progress.total,
    );
    Ok(page(&format!("job {}", escape(&job.id)), &body))
}

/// The script every job page shares: the job's events (a snapshot, progress, then its end)
/// handed to the page's own `setState`, `show`, `result` and `failed`, and its Cancel button.
pub fn job_events_script(id: &str) -> String {
    format!(
        r#"const es = new EventSource('/api/v1/jobs/{id}/events');
es.addEventListener('snapshot', (e) => {{ const j = JSON.parse(e.data); setState(j.state); show(j.progress.done);
  if (j.state === 'succeeded') result(j.result); if (j.state === 'failed') failed(j.error, 'failed'); if (j.state === 'cancelled') failed('cancelled', 'cancelled');
  if (['succeeded','failed','cancelled'].includes(j.state)) es.close(); }});
es.addEventListener('progress', (e) => {{ setState('running'); show(JSON.parse(e.data).done); }});
es.addEventListener('result', (e) => {{ result(JSON.parse(e.data).result); es.close(); }});
es.addEventListener('failed', (e) => {{ failed(JSON.parse(e.data).error, 'failed'); es.close(); }});
es.addEventListener('cancelled', () => {{ failed('cancelled by a user', 'cancelled'); es.close(); }});
const c = document.getElementById('cancel');
if (c) c.addEventListener('click', async () => {{ await fetch('/api/v1/jobs/{id}/cancel', {{ method: 'POST' }}); }});
"#,
        id = escape(id)
    )
}

pub async fn classify_page() -> Html<String> {
    let body = r#"<section class=card><h1>Image recognition</h1>
<p class=hint>Drop photos here: each one goes to the queue, a worker runs an ImageNet classifier (EfficientNet-Lite0) on it, and its label appears as soon as it is done.</p>
<div class=drop id=drop>Drop images here, or click to choose (PNG, JPEG, GIF, BMP, WebP; up to 100 at once)<input id=files type=file accept="image/*" multiple hidden></div>
<p id=msg class=error></p></section>
<section class=card><div class=grid id=grid></div></section>
<script>
const drop = document.getElementById('drop'), files = document.getElementById('files'), grid = document.getElementById('grid'), msg = document.getElementById('msg');
drop.onclick = () => files.click();
files.onchange = () => send([...files.files]);
drop.ondragover = (e) => { e.preventDefault(); drop.classList.add('over'); };
drop.ondragleave = () => drop.classList.remove('over');
drop.ondrop = (e) => { e.preventDefault(); drop.classList.remove('over'); send([...e.dataTransfer.files]); };
function tile(file) {
  const t = document.createElement('div'); t.className = 'tile';
  t.innerHTML = '<img><div class=cap><div class=name></div><div class=label>waiting…</div><div class=score></div></div>';
  t.querySelector('img').src = URL.createObjectURL(file); t.querySelector('.name').textContent = file.name;
  grid.prepend(t); return t;
}
function show(t, item) {
  if (item.error) { t.querySelector('.label').textContent = 'error'; t.querySelector('.score').textContent = item.error; return; }
  const top = item.labels[0];
  t.querySelector('.label').textContent = top.label.split(',')[0];
  t.querySelector('.score').textContent = (top.score * 100).toFixed(1) + ' %' + (item.labels[1] ? ' · then ' + item.labels[1].label.split(',')[0] : '');
}
async function send(list) {
  msg.textContent = ''; if (!list.length) return;
  const tiles = list.map(tile);
  const form = new FormData(); list.forEach((f) => form.append('image', f, f.name));
  const r = await fetch('/api/v1/classify?wait=0', { method: 'POST', body: form });
  const j = await r.json();
  if (!r.ok && r.status !== 202) { msg.textContent = j.error; tiles.forEach((t) => t.querySelector('.label').textContent = 'refused'); return; }
  const es = new EventSource('/api/v1/jobs/' + j.job_id + '/events');
  const fill = (images) => images.forEach((i) => show(tiles[i.index], i));
  es.addEventListener('snapshot', (e) => { const job = JSON.parse(e.data);
    if (job.result) fill(job.result.images);
    if (['failed', 'cancelled'].includes(job.state)) msg.textContent = job.error || 'the job was cancelled';
    if (['succeeded', 'failed', 'cancelled'].includes(job.state)) es.close(); });
  es.addEventListener('cancelled', () => { msg.textContent = 'the job was cancelled'; es.close(); });
  es.addEventListener('item', (e) => { const d = JSON.parse(e.data); show(tiles[d.index], d.item); });
  es.addEventListener('result', (e) => { fill(JSON.parse(e.data).result.images); es.close(); });
  es.addEventListener('failed', (e) => { msg.textContent = JSON.parse(e.data).error; es.close(); });
}
</script>"#;
    page("image recognition", body)
}

//! The fleet and the queues, as an operator watches them: `/api/v1/fleet` (the autoscaler's
//! instances, policy, recent decisions and depths over time, as it published them to the
//! ledger), `/api/v1/queues` (every queue's depth and dead-letter queue) with a redrive that
//! moves dead-lettered messages back, and the two pages that show them.

use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::response::Html;
use axum::Json;
use nimbus_core::{OutgoingMessage, QueueName, ReceiveRequest};
use nimbus_scale::FleetStatus;
use nimbus_workloads::dead_letters;
use serde::Serialize;

use crate::error::ApiError;
use crate::AppState;

/// The most messages one redrive moves (a large dead-letter queue takes several).
pub const MAX_REDRIVE: usize = 10_000;

/// `GET /api/v1/fleet`.
pub async fn fleet(State(state): State<AppState>) -> Result<Json<FleetStatus>, ApiError> {
    match FleetStatus::read(state.store.engine()).await? {
        Some(status) => Ok(Json(status)),
        None => Err(ApiError::not_found(
            "no autoscaler has reported to this engine: `nimbus up` runs one, or `nimbus autoscale`",
        )),
    }
}

/// A queue in `/api/v1/queues`.
#[derive(Debug, Serialize)]
pub struct QueueView {
    /// Its name.
    pub name: String,
    /// Messages ready.
    pub visible: u64,
    /// Messages received and not yet deleted.
    pub in_flight: u64,
    /// Messages delayed.
    pub delayed: u64,
    /// Its dead-letter queue, if it has one.
    pub dead_letter: Option<String>,
    /// After how many receives a message moves there.
    pub max_receives: Option<u32>,
}

/// `GET /api/v1/queues`: every queue but the web replicas' event queues.
pub async fn queues(State(state): State<AppState>) -> Result<Json<Vec<QueueView>>, ApiError> {
    let engine = state.store.engine();
    let mut out = Vec::new();
    for q in engine.queue.list_queues().await? {
        if q.as_str().starts_with("events-") {
            continue;
        }
        let (Ok(depth), Ok(options)) = (
            engine.queue.depth(&q).await,
            engine.queue.queue_options(&q).await,
        ) else {
            continue; // deleted meanwhile
        };
        out.push(QueueView {
            name: q.to_string(),
            visible: depth.visible,
            in_flight: depth.in_flight,
            delayed: depth.delayed,
            dead_letter: options.dead_letter.as_ref().map(|d| d.queue.to_string()),
            max_receives: options.dead_letter.as_ref().map(|d| d.max_receives),
        });
    }
    Ok(Json(out))
}

/// What a redrive did.
#[derive(Debug, Serialize)]
pub struct Redriven {
    /// Messages moved back.
    pub moved: usize,
    /// From which dead-letter queue.
    pub from: String,
    /// Jobs that dead letters had failed, running again.
    pub jobs_reopened: usize,
}

/// `POST /api/v1/queues/{name}/redrive`: moves the messages of `name`'s dead-letter queue back to
/// `name` (at most [`MAX_REDRIVE`]), body and attributes as they were. Each is sent before it is
/// deleted from the dead-letter queue, so a failure midway duplicates rather than loses one
/// (and a task's ledger claim runs it once). A job that a dead letter failed is running again
/// before its message goes back.
pub async fn redrive(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Redriven>, ApiError> {
    let queue = QueueName::new(name.as_str()).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let engine = state.store.engine();
    let options = engine.queue.queue_options(&queue).await?;
    let Some(dead) = options.dead_letter else {
        return Err(ApiError::bad_request(format!(
            "queue `{queue}` has no dead-letter queue"
        )));
    };
    for other in engine.queue.list_queues().await? {
        if other == queue {
            continue;
        }
        let shares = engine
            .queue
            .queue_options(&other)
            .await
            .ok()
            .and_then(|o| o.dead_letter)
            .is_some_and(|d| d.queue == dead.queue);
        if shares {
            return Err(ApiError::conflict(format!(
                "dead-letter queue `{}` also takes the messages of queue `{other}`: moving them all to `{queue}` would mix the two",
                dead.queue
            )));
        }
    }
    let (mut moved, mut jobs_reopened) = (0, 0);
    let mut empty_polls = 0;
    let held_until = Instant::now() + dead_letters::PASS_LEASE + Duration::from_secs(2);
    while moved < MAX_REDRIVE && empty_polls < 3 {
        let request =
            ReceiveRequest::new(100.min(MAX_REDRIVE - moved)).wait(Duration::from_secs(1));
        let got = engine.queue.receive(&dead.queue, request).await?;
        if got.is_empty() {
            let depth = engine.queue.depth(&dead.queue).await?;
            // A receive may come back empty while messages remain (SQS samples its servers);
            // dead letters in flight are being read by the watcher, for a moment.
            if depth.visible > 0 {
                empty_polls += 1;
            } else if depth.in_flight == 0 || Instant::now() >= held_until {
                break;
            }
            continue;
        }
        let mut reopened = 0;
        for delivery in &got {
            reopened += usize::from(dead_letters::reopen(&state.store, delivery).await?);
        }
        let messages = got
            .iter()
            .map(|d| OutgoingMessage {
                body: d.body.clone(),
                attributes: d.attributes.clone(),
                group_id: d.group_id.clone(),
                dedup_id: d
                    .group_id
                    .as_ref()
                    .map(|_| format!("redrive-{}", d.message_id)),
                ..OutgoingMessage::new(bytes::Bytes::new())
            })
            .collect();
        engine.queue.send_batch(&queue, messages).await?;
        let receipts: Vec<_> = got.iter().map(|d| d.receipt.clone()).collect();
        engine.queue.delete_batch(&dead.queue, &receipts).await?;
        moved += got.len();
        jobs_reopened += reopened;
    }
    tracing::info!(queue = %queue, from = %dead.queue, moved, jobs_reopened, "dead-lettered messages moved back");
    Ok(Json(Redriven {
        moved,
        from: dead.queue.to_string(),
        jobs_reopened,
    }))
}

/// `GET /fleet`: the autoscaler's fleet with two charts over time, refreshed every 2 s.
pub async fn fleet_page() -> Html<String> {
    crate::pages::page("fleet", FLEET_PAGE)
}

/// `GET /queues`: every queue's depth and its dead-letter queue, with a redrive button.
pub async fn queues_page() -> Html<String> {
    crate::pages::page("queues", QUEUES_PAGE)
}

const FLEET_PAGE: &str = r#"
<div class=card><h1>Fleet</h1><div id=summary class=hint>loading…</div></div>
<div class=card><h2>Instances by state</h2><svg id=instances class=chart viewBox='0 0 900 220'></svg></div>
<div class=card><h2>Queue depth</h2><svg id=depth class=chart viewBox='0 0 900 220'></svg></div>
<div class=card><h2>Instances</h2><table id=fleet><thead><tr><th>id</th><th>state</th><th>age</th><th>tasks</th></tr></thead><tbody></tbody></table></div>
<div class=card><h2>Recent decisions</h2><table id=decisions><thead><tr><th>when</th><th>actions</th><th>why</th></tr></thead><tbody></tbody></table></div>
<script>
const COLORS = { running:'#2b8a3e', pending:'#f08c00', stopping:'#c92a2a', stopped:'#868e96', visible:'#3b5bdb', in_flight:'#15aabf' };
function chart(svg, samples, keys) {
  const W = 900, H = 220, L = 40, B = 24, T = 10;
  const max = Math.max(1, ...samples.flatMap((s) => keys.map((k) => s[k])));
  const t0 = samples.length ? samples[0].at_ms : 0, t1 = samples.length ? samples[samples.length - 1].at_ms : 1;
  const x = (t) => L + (W - L - 10) * (t1 > t0 ? (t - t0) / (t1 - t0) : 1);
  const y = (v) => H - B - (H - B - T) * v / max;
  let out = `<line x1=${L} y1=${H - B} x2=${W - 10} y2=${H - B} stroke='#c8cedb'/><text x=4 y=${T + 10} font-size=12 fill='#5b6475'>${max}</text><text x=4 y=${H - B} font-size=12 fill='#5b6475'>0</text>`;
  out += `<text x=${L} y=${H - 6} font-size=12 fill='#5b6475'>${samples.length ? Math.round((t1 - t0) / 1000) + ' s shown' : 'no samples yet'}</text>`;
  keys.forEach((k, i) => {
    const pts = samples.map((s) => `${x(s.at_ms).toFixed(1)},${y(s[k]).toFixed(1)}`).join(' ');
    out += `<polyline class='series ${k}' fill=none stroke='${COLORS[k]}' stroke-width=2 points='${pts}'/>`;
    out += `<text x=${W - 140} y=${T + 14 + i * 16} font-size=13 fill='${COLORS[k]}'>${k.replace('_', ' ')}</text>`;
  });
  svg.innerHTML = out;
}
function rows(tbody, list) { tbody.innerHTML = list.join(''); }
const esc = (s) => String(s).replace(/[&<>'"]/g, (c) => ({ '&':'&amp;', '<':'&lt;', '>':'&gt;', "'":'&#39;', '"':'&quot;' }[c]));
async function refresh() {
  try {
    const r = await fetch('/api/v1/fleet'); const f = await r.json();
    if (!r.ok) { document.getElementById('summary').textContent = f.error; return; }
    const s = f.samples, last = s[s.length - 1] || {};
    document.getElementById('summary').innerHTML = `policy <b>${esc(f.policy)}</b> on ${esc(f.queues.join(', '))}: ` +
      `<b id=running>${last.running ?? 0}</b> running, ${last.pending ?? 0} pending, ${last.stopped ?? 0} stopped; ` +
      `${last.visible ?? 0} waiting, ${last.in_flight ?? 0} in flight` + (f.last_error ? ` <span class=error>${esc(f.last_error)}</span>` : '');
    chart(document.getElementById('instances'), s, ['running', 'pending', 'stopping', 'stopped']);
    chart(document.getElementById('depth'), s, ['visible', 'in_flight']);
    rows(document.querySelector('#fleet tbody'), f.instances.map((i) => `<tr><td>${esc(i.id)}</td><td class='state ${esc(i.state)}'>${esc(i.state)}</td><td>${i.age_s} s</td><td>${i.tasks ?? '—'}</td></tr>`));
    rows(document.querySelector('#decisions tbody'), f.decisions.slice().reverse().map((d) =>
      `<tr><td>${new Date(d.at_ms).toLocaleTimeString()}</td><td>${esc(d.actions.join('; '))}</td><td>${esc(d.reason)}${d.errors.length ? ' <span class=error>' + esc(d.errors.join('; ')) + '</span>' : ''}</td></tr>`));
  } catch (e) { document.getElementById('summary').textContent = String(e); }
}
refresh(); setInterval(refresh, 2000);
</script>
"#;

const QUEUES_PAGE: &str = r#"
<div class=card><h1>Queues</h1><div id=msg class=hint></div>
<table id=queues><thead><tr><th>queue</th><th>visible</th><th>in flight</th><th>delayed</th><th>dead letters</th><th></th></tr></thead><tbody></tbody></table></div>
<script>
const esc = (s) => String(s).replace(/[&<>'"]/g, (c) => ({ '&':'&amp;', '<':'&lt;', '>':'&gt;', "'":'&#39;', '"':'&quot;' }[c]));
async function refresh() {
  const qs = await (await fetch('/api/v1/queues')).json();
  const byName = Object.fromEntries(qs.map((q) => [q.name, q]));
  document.querySelector('#queues tbody').innerHTML = qs.map((q) => {
    const dead = q.dead_letter ? byName[q.dead_letter] : null;
    const n = dead ? dead.visible + dead.in_flight + dead.delayed : 0;
    return `<tr><td>${esc(q.name)}</td><td>${q.visible}</td><td>${q.in_flight}</td><td>${q.delayed}</td>` +
      `<td>${q.dead_letter ? esc(q.dead_letter) + ': ' + n + ' (after ' + q.max_receives + ' receives)' : '—'}</td>` +
      `<td>${q.dead_letter ? `<button data-q='${esc(q.name)}' ${n ? '' : 'disabled'}>move back</button>` : ''}</td></tr>`;
  }).join('');
  document.querySelectorAll('button[data-q]').forEach((b) => b.onclick = async () => {
    const r = await fetch(`/api/v1/queues/${encodeURIComponent(b.dataset.q)}/redrive`, { method: 'POST' });
    const j = await r.json();
    document.getElementById('msg').textContent = r.ok ? `moved ${j.moved} from ${j.from} back to ${b.dataset.q}` : j.error;
    refresh();
  });
}
refresh(); setInterval(refresh, 3000);
</script>
"#;

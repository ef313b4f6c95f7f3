//! The explorer's pages, rendered on the server from the same database queries the gRPC
//! services use.

use super::graph;
use super::html::{bytes, esc, page, url_encode};
use crate::Services;
use crate::domain::{Job, JobEventKind, JobState, Model, Progress, Relation};
use crate::error::Error;
use crate::notifier::Notification;
use axum::extract::{Path, Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use std::collections::HashMap;
use std::fmt::Write;
use uuid::Uuid;

/// An error page with the status the failure deserves.
pub struct PageError(Error);

impl From<Error> for PageError {
    fn from(error: Error) -> Self {
        PageError(error)
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        // The status and the message the gRPC services would answer with.
        let (status, message) = (self.0.http_status(), self.0.public_message());
        let body = format!(
            "<h1>{}</h1><p class=\"error\">{}</p><p><a href=\"/\">all models</a></p>",
            status.as_u16(),
            esc(&message)
        );
        (status, Html(page("Not here", "", &body))).into_response()
    }
}

type PageResult = Result<Html<String>, PageError>;

#[derive(serde::Deserialize)]
pub struct LoginQuery {
    #[serde(default)]
    next: String,
}

pub async fn login_form(Query(query): Query<LoginQuery>) -> Html<String> {
    login_page(&query.next, None)
}

pub fn login_page(next: &str, error: Option<&str>) -> Html<String> {
    let error = error
        .map(|e| format!("<p class=\"error\">{}</p>", esc(e)))
        .unwrap_or_default();
    Html(page(
        "Log in",
        "login",
        &format!(
            "<h1>Heirloom lineage explorer</h1>\
             <p>Every model and what it inherited, down to each tensor; the family tree around \
             it; jobs as they run; everything downstream of a dataset.</p>{error}\
             <form method=\"post\" action=\"/login\" class=\"login\">\
             <label>Token <input type=\"password\" name=\"token\" autocomplete=\"off\" required autofocus></label>\
             <input type=\"hidden\" name=\"next\" value=\"{}\">\
             <button type=\"submit\">Log in</button></form>\
             <p class=\"hint\">Any reader, submitter or admin token works; an admin makes one with \
             <code>heirloom token create NAME --role reader</code>.</p>",
            esc(next)
        ),
    ))
}

fn model_link(id: Uuid, name: &str) -> String {
    format!("<a href=\"/models/{id}\">{}</a>", esc(name))
}

fn accuracy(model: &Model) -> String {
    model
        .metrics
        .as_ref()
        .map(|m| format!("{:.3}", m.holdout_accuracy))
        .unwrap_or_else(|| "—".into())
}

fn relations(model: &Model) -> String {
    let mut kinds: Vec<&str> = model.parents.iter().map(|p| p.relation.as_str()).collect();
    kinds.dedup();
    kinds.join(", ")
}

fn dataset_cell(model: &Model) -> String {
    model
        .dataset
        .as_ref()
        .map(|d| {
            format!(
                "<a href=\"/datasets/{}\">{}@{}</a>",
                d.id,
                esc(&d.name),
                d.version
            )
        })
        .unwrap_or_else(|| "—".into())
}

fn time(at: chrono::DateTime<chrono::Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%S").to_string()
}

/// Every model, newest first, with a search box and filters.
pub async fn models(State(services): State<Services>) -> PageResult {
    let mut models = services.db.all_models().await?;
    models.reverse();
    let mut kinds: Vec<&str> = models.iter().map(|m| m.source.as_str()).collect();
    kinds.sort();
    kinds.dedup();
    let options = |values: &[&str]| -> String {
        values
            .iter()
            .map(|v| format!("<option value=\"{0}\">{0}</option>", esc(v)))
            .collect()
    };
    let mut body = format!(
        "<h1>Models <span class=\"count\" id=\"model-count\">{}</span></h1>\
         <div class=\"filters\"><input id=\"search\" type=\"search\" placeholder=\"search names\" \
         data-filter-table=\"models\">\
         <select id=\"kind-filter\" data-filter-column=\"kind\"><option value=\"\">any kind</option>{}</select>\
         <select id=\"relation-filter\" data-filter-column=\"relation\"><option value=\"\">any relation</option>{}</select></div>\
         <table id=\"models\" class=\"sortable\"><thead><tr><th>name</th><th>kind</th><th>relation to parents</th>\
         <th>dataset</th><th>accuracy</th><th>created</th></tr></thead><tbody>",
        models.len(),
        options(&kinds),
        options(&Relation::ALL.map(Relation::as_str)),
    );
    for model in &models {
        let _ = write!(
            body,
            "<tr data-name=\"{name}\" data-kind=\"{kind}\" data-relation=\"{relation}\">\
             <td>{link}</td><td>{kind}</td><td>{relation}</td><td>{dataset}</td>\
             <td class=\"number\">{accuracy}</td><td>{created}</td></tr>",
            name = esc(&model.name),
            kind = esc(&model.source),
            relation = esc(&relations(model)),
            link = model_link(model.id, &model.name),
            dataset = dataset_cell(model),
            accuracy = accuracy(model),
            created = time(model.created_at),
        );
    }
    body.push_str("</tbody></table>");
    if models.is_empty() {
        body.push_str("<p class=\"hint\">No models yet: import one or run a job.</p>");
    }
    Ok(Html(page("Models", "Models", &body)))
}

/// One model: what it is, how well it does, where it came from, what came of it, and
/// where each of its tensors came from.
pub async fn model(State(services): State<Services>, Path(reference): Path<String>) -> PageResult {
    let model = services.db.find_model(&reference).await?;
    let around = services.db.graph(model.id, 0, 1).await?;
    let children: Vec<(&Model, String)> = around
        .edges
        .iter()
        .filter(|(parent, _, _)| *parent == model.id)
        .filter_map(|(_, child, relation)| {
            let child = around.nodes.iter().find(|n| n.id == *child)?;
            Some((child, relation.clone()))
        })
        .collect();
    let tensors = services.db.model_tensors(model.id).await?;
    let mut body = format!(
        "<h1>{} <span class=\"badge\">{}</span></h1>\
         <p><a href=\"/models/{}/graph\" id=\"graph-link\">lineage graph</a></p>\
         <div class=\"cards\"><section><h2>Model</h2><dl>\
         <dt>id</dt><dd><code>{}</code></dd><dt>architecture</dt><dd><code>{}</code></dd>\
         <dt>weights</dt><dd>{} · sha256 <code>{}</code></dd><dt>created</dt><dd>{}</dd>",
        esc(&model.name),
        esc(&model.source),
        model.id,
        model.id,
        esc(&serde_json::to_string(&model.architecture).unwrap_or_default()),
        bytes(model.weights_bytes),
        &model.weights_sha256[..16.min(model.weights_sha256.len())],
        time(model.created_at),
    );
    if let Some(job) = model.job_id {
        let _ = write!(
            body,
            "<dt>job</dt><dd><a href=\"/jobs/{job}\">{job}</a></dd>"
        );
    }
    let _ = write!(body, "<dt>dataset</dt><dd>{}</dd>", dataset_cell(&model));
    match &model.recipe {
        Some(recipe) => {
            let _ = write!(
                body,
                "<dt>recipe</dt><dd id=\"recipe\">{}@{}</dd>",
                esc(&recipe.name),
                recipe.version
            );
        }
        None => body.push_str("<dt>recipe</dt><dd id=\"recipe\">—</dd>"),
    }
    body.push_str("</dl></section><section><h2>Metrics</h2>");
    match &model.metrics {
        Some(m) => {
            if let Some(loss) = m.holdout_loss {
                let _ = write!(
                    body,
                    "<dl><dt>held-out perplexity</dt><dd id=\"perplexity\">{:.3}</dd>\
                     <dt>held-out next-token loss</dt><dd>{loss:.4}</dd></dl>",
                    loss.exp()
                );
            }
            let _ = write!(
                body,
                "<dl><dt>held-out accuracy</dt><dd id=\"accuracy\">{:.4}</dd><dt>training accuracy</dt><dd>{:.4}</dd>\
                 <dt>final loss</dt><dd>{:.4}</dd><dt>steps</dt><dd>{}</dd><dt>steps/s</dt><dd>{:.0}</dd></dl>",
                m.holdout_accuracy, m.train_accuracy, m.final_loss, m.steps, m.steps_per_second
            );
        }
        None => body.push_str("<p class=\"hint\">Imported: no metrics.</p>"),
    }
    body.push_str("</section></div><div class=\"cards\"><section><h2>Parents</h2>");
    if model.parents.is_empty() {
        body.push_str("<p class=\"hint\">None: a root.</p>");
    } else {
        body.push_str("<ul id=\"parents\">");
        for parent in &model.parents {
            let _ = write!(
                body,
                "<li><span class=\"relation {0}\">{0}</span> {1} <code class=\"details\">{2}</code></li>",
                parent.relation.as_str(),
                model_link(parent.parent_id, &parent.parent_name),
                esc(&parent.details.to_string()),
            );
        }
        body.push_str("</ul>");
    }
    body.push_str("</section><section><h2>Children</h2>");
    if children.is_empty() {
        body.push_str("<p class=\"hint\">None yet.</p>");
    } else {
        body.push_str("<ul id=\"children\">");
        for (child, relation) in &children {
            let _ = write!(
                body,
                "<li><span class=\"relation {0}\">{0}</span> {1}</li>",
                esc(relation),
                model_link(child.id, &child.name)
            );
        }
        body.push_str("</ul>");
    }
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for tensor in &tensors {
        *counts.entry(tensor.record.status.as_str()).or_default() += 1;
    }
    let summary: Vec<String> = ["inherited", "trained", "new", "interpolated"]
        .iter()
        .filter_map(|s| {
            counts
                .get(s)
                .map(|n| format!("<span class=\"status {s}\">{n} {s}</span>"))
        })
        .collect();
    let _ = write!(
        body,
        "</section></div><h2>Tensor provenance</h2><p>{}</p>\
         <table id=\"tensors\"><thead><tr><th>tensor</th><th>status</th><th>shape</th><th>dtype</th>\
         <th>origin</th><th>sha256</th></tr></thead><tbody>",
        summary.join(" ")
    );
    for tensor in &tensors {
        let record = &tensor.record;
        let origin = match (&record.origin, &tensor.origin_model_name) {
            (Some((id, name)), Some(model_name)) => format!(
                "<a href=\"/models/{id}#t-{}\">{}:{}</a>",
                url_encode(name),
                esc(model_name),
                esc(name)
            ),
            _ => "—".into(),
        };
        let _ = write!(
            body,
            "<tr id=\"t-{}\" class=\"status {status}\" data-status=\"{status}\"><td><code>{}</code></td>\
             <td>{status}</td><td>{:?}</td><td>{}</td><td>{origin}</td><td><code>{}</code></td></tr>",
            esc(&record.name),
            esc(&record.name),
            record.shape,
            esc(&record.dtype),
            &record.sha256[..12.min(record.sha256.len())],
            status = record.status.as_str(),
        );
    }
    body.push_str("</tbody></table>");
    Ok(Html(page(&model.name, "Models", &body)))
}

#[derive(serde::Deserialize)]
pub struct GraphQuery {
    depth: Option<u32>,
}

/// The lineage around a model, `depth` generations up and down.
pub async fn graph(
    State(services): State<Services>,
    Path(reference): Path<String>,
    Query(query): Query<GraphQuery>,
) -> PageResult {
    let depth = query.depth.unwrap_or(2).clamp(1, 8);
    let model = services.db.find_model(&reference).await?;
    let around = services.db.graph(model.id, depth, depth).await?;
    let nodes: Vec<graph::Node> = around
        .nodes
        .iter()
        .map(|node| graph::Node {
            id: node.id,
            name: node.name.clone(),
            detail: match &node.metrics {
                Some(m) => match m.holdout_perplexity() {
                    Some(perplexity) => format!("{} · ppl {perplexity:.2}", node.source),
                    None => format!("{} · acc {:.3}", node.source, m.holdout_accuracy),
                },
                None => node.source.clone(),
            },
        })
        .collect();
    let edges: Vec<graph::Edge> = around
        .edges
        .iter()
        .map(|(parent, child, relation)| graph::Edge {
            parent: *parent,
            child: *child,
            relation: relation.clone(),
        })
        .collect();
    let depth_options: String = (1..=6)
        .map(|d| {
            let selected = if d == depth { " selected" } else { "" };
            format!("<option value=\"{d}\"{selected}>{d}</option>")
        })
        .collect();
    let legend: String = Relation::ALL
        .iter()
        .map(|&r| {
            format!(
                "<span class=\"legend-item\"><span class=\"swatch\" style=\"background:{}\"></span>{}</span>",
                graph::relation_colour(r),
                r.as_str()
            )
        })
        .collect();
    let body = format!(
        "<h1>Lineage of {}</h1>\
         <form class=\"filters\" method=\"get\"><label>generations up and down \
         <select name=\"depth\" id=\"depth\" onchange=\"this.form.submit()\">{depth_options}</select></label>\
         <noscript><button>show</button></noscript> <span class=\"legend\">{legend}</span>\
         <span class=\"hint\">{} models · drag to pan, wheel to zoom, click a model to open it</span></form>\
         <div class=\"graph\" data-pan-zoom>{}</div>",
        model_link(model.id, &model.name),
        nodes.len(),
        graph::svg(&nodes, &edges, model.id),
    );
    Ok(Html(page(
        &format!("Lineage of {}", model.name),
        "Models",
        &body,
    )))
}

fn state_cell(job: &Job) -> String {
    format!("<span class=\"state {0}\">{0}</span>", job.state.as_str())
}

fn progress_text(progress: Option<&Progress>) -> String {
    match progress {
        Some(p) => format!(
            "epoch {}/{} · step {}/{} · loss {:.4} · acc {:.3}",
            p.epoch, p.epochs, p.step, p.total_steps, p.loss, p.accuracy
        ),
        None => String::new(),
    }
}

/// Each job's latest progress report (only running jobs report any).
async fn latest_progress(services: &Services, job: &Job) -> Result<Option<Progress>, Error> {
    if job.state != JobState::Running && !job.state.is_final() {
        return Ok(None);
    }
    let events = services.db.events_after(job.id, 0).await?;
    Ok(events.into_iter().rev().find_map(|event| match event.kind {
        JobEventKind::Progress(progress) => Some(progress),
        JobEventKind::State(_) => None,
    }))
}

/// Every job, newest first; rows update themselves as events arrive.
pub async fn jobs(State(services): State<Services>) -> PageResult {
    let mut jobs = services.db.jobs(None).await?;
    jobs.sort_by_key(|job| std::cmp::Reverse(job.created_at));
    let mut body = format!(
        "<h1>Jobs <span class=\"count\">{}</span> <span class=\"live\" id=\"live\">live</span></h1>\
         <table id=\"jobs\" data-live-jobs><thead><tr><th>job</th><th>kind</th><th>model</th><th>state</th>\
         <th>progress</th><th>created</th></tr></thead><tbody>",
        jobs.len()
    );
    for job in &jobs {
        let progress = if job.state == JobState::Running {
            progress_text(latest_progress(&services, job).await?.as_ref())
        } else {
            String::new()
        };
        let model = match job.model_id {
            Some(id) => model_link(id, &job.spec.model_name),
            None => esc(&job.spec.model_name),
        };
        let _ = write!(
            body,
            "<tr id=\"job-{id}\" data-job=\"{id}\"><td><a href=\"/jobs/{id}\">{short}</a></td><td>{}</td>\
             <td>{model}</td><td class=\"state-cell\">{}</td><td class=\"progress-cell\">{progress}</td><td>{}</td></tr>",
            job.spec.kind.as_str(),
            state_cell(job),
            time(job.created_at),
            id = job.id,
            short = &job.id.to_string()[..8],
        );
    }
    body.push_str("</tbody></table>");
    Ok(Html(page("Jobs", "Jobs", &body)))
}

/// Server-sent events: one JSON object per job event, `{id, state, progress}`.
pub async fn job_stream(State(services): State<Services>) -> Response {
    let mut notifications = services.notifier.subscribe();
    let stream = async_stream(move |sender| async move {
        use tokio::sync::broadcast::error::RecvError;
        loop {
            // The browser reconnects on its own; the server must not wait for it to stop.
            let received = tokio::select! {
                _ = services.stopping.cancelled() => return,
                received = notifications.recv() => received,
            };
            let job_id = match received {
                Ok(Notification::JobEvent(id)) => id,
                Ok(_) => continue,
                Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => return,
            };
            let Ok(job) = services.db.job(job_id).await else {
                continue;
            };
            let progress = latest_progress(&services, &job).await.ok().flatten();
            let update = serde_json::json!({
                "id": job.id,
                "state": job.state.as_str(),
                "final": job.state.is_final(),
                "progress": progress_text(progress.as_ref()),
                "model_id": job.model_id,
            });
            if sender
                .send(Event::default().data(update.to_string()))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// A stream fed by `produce` through a channel.
fn async_stream<F, Fut>(
    produce: F,
) -> impl futures::Stream<Item = Result<Event, std::convert::Infallible>>
where
    F: FnOnce(tokio::sync::mpsc::Sender<Event>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (sender, receiver) = tokio::sync::mpsc::channel(64);
    tokio::spawn(produce(sender));
    futures::StreamExt::map(tokio_stream::wrappers::ReceiverStream::new(receiver), Ok)
}

/// The loss and accuracy curves of a job's progress reports, as an SVG.
fn chart(points: &[Progress]) -> String {
    if points.is_empty() {
        return "<p class=\"hint\" id=\"chart\">No progress reported yet.</p>".into();
    }
    let (width, height, pad) = (640.0, 240.0, 36.0);
    let last_step = points.iter().map(|p| p.step).max().unwrap_or(1).max(1) as f64;
    let max_loss = points.iter().map(|p| p.loss).fold(0.0, f64::max).max(1e-9);
    let x = |step: u64| pad + (step as f64 / last_step) * (width - 2.0 * pad);
    let y = |value: f64, top: f64| height - pad - (value / top) * (height - 2.0 * pad);
    let line = |value: &dyn Fn(&Progress) -> f64, top: f64| -> String {
        points
            .iter()
            .map(|p| format!("{:.1},{:.1}", x(p.step), y(value(p), top)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    format!(
        "<svg id=\"chart\" class=\"chart\" viewBox=\"0 0 {width} {height}\" xmlns=\"http://www.w3.org/2000/svg\" \
         data-points=\"{n}\"><line x1=\"{pad}\" y1=\"{base}\" x2=\"{right}\" y2=\"{base}\" class=\"axis\"/>\
         <line x1=\"{pad}\" y1=\"{pad}\" x2=\"{pad}\" y2=\"{base}\" class=\"axis\"/>\
         <polyline id=\"loss-line\" points=\"{loss}\" class=\"loss\"/>\
         <polyline id=\"accuracy-line\" points=\"{accuracy}\" class=\"accuracy\"/>\
         <text x=\"{pad}\" y=\"20\" class=\"loss-label\">loss (max {max_loss:.3})</text>\
         <text x=\"{mid}\" y=\"20\" class=\"accuracy-label\">accuracy (0–1)</text>\
         <text x=\"{right}\" y=\"{below}\" text-anchor=\"end\">step {last_step}</text></svg>",
        n = points.len(),
        base = height - pad,
        right = width - pad,
        mid = width / 2.0,
        below = height - 10.0,
        loss = line(&|p| p.loss, max_loss),
        accuracy = line(&|p| p.accuracy, 1.0),
    )
}

/// The job's progress reports after its first step (the report at step 0, before any
/// training, has no loss to draw).
async fn progress_points(services: &Services, job_id: Uuid) -> Result<Vec<Progress>, Error> {
    let events = services.db.events_after(job_id, 0).await?;
    Ok(events
        .into_iter()
        .filter_map(|event| match event.kind {
            JobEventKind::Progress(progress) if progress.step > 0 => Some(progress),
            _ => None,
        })
        .collect())
}

fn parse_job_id(text: &str) -> Result<Uuid, Error> {
    Uuid::parse_str(text).map_err(|_| Error::NotFound(format!("no job is {text:?}")))
}

pub async fn job_chart(State(services): State<Services>, Path(id): Path<String>) -> PageResult {
    let id = parse_job_id(&id)?;
    Ok(Html(chart(&progress_points(&services, id).await?)))
}

/// How many ranks an attempt ran on, over what, and where each ran (and which was lost).
fn ranks_cell(attempt: &crate::domain::JobAttempt) -> String {
    if attempt.world_size <= 1 {
        return "1".to_string();
    }
    let placed: Vec<String> = attempt
        .ranks
        .iter()
        .map(|rank| {
            let lost = attempt.failed_rank == Some(rank.rank as i32);
            format!(
                "<span title=\"worker {}\"{}>{}: {}</span>",
                rank.worker_id,
                if lost { " class=\"error\"" } else { "" },
                rank.rank,
                esc(&rank.device)
            )
        })
        .collect();
    format!(
        "{} ranks over {} ({})",
        attempt.world_size,
        esc(&attempt.backend),
        placed.join(", ")
    )
}

/// One job: its spec, state, attempts, data shift, curves and events.
pub async fn job(State(services): State<Services>, Path(id): Path<String>) -> PageResult {
    let job = services.db.job(parse_job_id(&id)?).await?;
    let attempts = services.db.attempts(job.id).await?;
    let events = services.db.events_after(job.id, 0).await?;
    let points = progress_points(&services, job.id).await?;
    let spec = &job.spec;
    let parents = services.db.models_with_ids(&spec.parents).await?;
    let parent_links: Vec<String> = spec
        .parents
        .iter()
        .map(|id| match parents.get(id) {
            Some(parent) => model_link(parent.id, &parent.name),
            None => id.to_string(),
        })
        .collect();
    let model = match job.model_id {
        Some(id) => model_link(id, &spec.model_name),
        None => esc(&spec.model_name),
    };
    let mut body = format!(
        "<h1>Job <code>{}</code></h1><div class=\"cards\"><section><h2>What</h2><dl>\
         <dt>kind</dt><dd>{}</dd><dt>model</dt><dd id=\"job-model\">{model}</dd>\
         <dt>parents</dt><dd>{}</dd><dt>state</dt><dd id=\"job-state\" data-job=\"{}\" data-final=\"{}\">{}</dd>",
        job.id,
        spec.kind.as_str(),
        if parent_links.is_empty() {
            "—".to_string()
        } else {
            parent_links.join(", ")
        },
        job.id,
        job.state.is_final(),
        state_cell(&job),
    );
    if let Some(used) = &spec.recipe {
        let _ = write!(
            body,
            "<dt>recipe</dt><dd>{}@{}</dd>",
            esc(&used.recipe.name),
            used.recipe.version
        );
    }
    if let Some(error) = &job.error {
        let _ = write!(
            body,
            "<dt>error</dt><dd class=\"error\">{}</dd>",
            esc(error)
        );
    }
    let hp = &spec.hyperparameters;
    let _ = write!(
        body,
        "<dt>training</dt><dd>{} epochs · batch {} · lr {} · {:?} · seed {}</dd></dl></section>\
         <section><h2>Data shift</h2>",
        hp.epochs, hp.batch_size, hp.learning_rate, hp.optimizer, hp.seed
    );
    if spec.data_shift.is_empty() {
        body.push_str("<p class=\"hint\">Not measured: no parent with recorded training data.</p>");
    }
    for shift in &spec.data_shift {
        let _ = write!(
            body,
            "<p><b>{}</b> from {}'s training data {}@{}: mean shift {:.3} σ, label distance {:.3}</p>",
            shift.shift.verdict(),
            esc(&shift.parent_name),
            esc(&shift.reference_name),
            shift.reference_version,
            shift.shift.mean_shift,
            shift.shift.label_distance
        );
    }
    let _ = write!(
        body,
        "</section></div><h2>Loss and accuracy</h2><div id=\"chart-box\" data-chart=\"/jobs/{}/chart\">{}</div>\
         <h2>Attempts</h2><table id=\"attempts\"><thead><tr><th>attempt</th><th>worker</th><th>outcome</th>\
         <th>ranks</th><th>started</th><th>ended</th><th>error</th></tr></thead><tbody>",
        job.id,
        chart(&points)
    );
    for attempt in &attempts {
        let _ = write!(
            body,
            "<tr><td>{}</td><td><code>{}</code></td><td>{}</td><td class=\"ranks\">{}</td>\
             <td>{}</td><td>{}</td><td>{}</td></tr>",
            attempt.attempt,
            attempt.worker_id,
            esc(&attempt.outcome),
            ranks_cell(attempt),
            time(attempt.started_at),
            attempt.ended_at.map(time).unwrap_or_default(),
            esc(attempt.error.as_deref().unwrap_or(""))
        );
    }
    body.push_str("</tbody></table><h2>Events</h2><ol id=\"events\" class=\"events\">");
    for event in events
        .iter()
        .filter(|e| matches!(e.kind, JobEventKind::State(_)))
    {
        if let JobEventKind::State(state) = &event.kind {
            let _ = write!(
                body,
                "<li>{} <span class=\"state {1}\">{1}</span> {2}</li>",
                time(event.at),
                state.as_str(),
                esc(&event.message)
            );
        }
    }
    body.push_str("</ol>");
    Ok(Html(page(
        &format!("Job {}", &job.id.to_string()[..8]),
        "Jobs",
        &body,
    )))
}

pub async fn datasets(State(services): State<Services>) -> PageResult {
    let datasets = services.db.datasets().await?;
    let mut body = String::from(
        "<h1>Datasets</h1><table id=\"datasets\"><thead><tr><th>dataset</th><th>examples</th>\
         <th>features</th><th>labels</th><th>size</th><th>registered</th></tr></thead><tbody>",
    );
    for dataset in &datasets {
        let _ = write!(
            body,
            "<tr><td><a href=\"/datasets/{}\">{}@{}</a></td><td class=\"number\">{}</td>\
             <td class=\"number\">{}</td><td class=\"number\">{}</td><td>{}</td><td>{}</td></tr>",
            dataset.id,
            esc(&dataset.name),
            dataset.version,
            dataset.num_examples,
            dataset.num_features,
            dataset.num_classes,
            bytes(dataset.size_bytes),
            time(dataset.created_at)
        );
    }
    body.push_str("</tbody></table>");
    Ok(Html(page("Datasets", "Datasets", &body)))
}

/// A dataset version and every model downstream of it.
pub async fn dataset(
    State(services): State<Services>,
    Path(reference): Path<String>,
) -> PageResult {
    let dataset = services.db.find_dataset(&reference).await?;
    let impact = services.db.dataset_impact(dataset.id, 0, 10_000).await?;
    let mut body = format!(
        "<h1>{}@{}</h1><p>{} examples · {} features · labels 0..{} · {} · sha256 <code>{}</code></p>",
        esc(&dataset.name),
        dataset.version,
        dataset.num_examples,
        dataset.num_features,
        dataset.num_classes.saturating_sub(1),
        bytes(dataset.size_bytes),
        &dataset.sha256[..16.min(dataset.sha256.len())]
    );
    if let Some(statistics) = &dataset.statistics {
        let counts: Vec<String> = statistics
            .labels()
            .iter()
            .map(|l| format!("{l}: {}", statistics.label_counts[*l as usize]))
            .collect();
        let _ = write!(
            body,
            "<p>label counts {} · mean {:.3} · std {:.3}</p>",
            counts.join(", "),
            statistics.mean,
            statistics.std
        );
    }
    let _ = write!(
        body,
        "<h2>Impact: every model downstream <span class=\"count\" id=\"impact-count\">{}</span></h2>\
         <table id=\"impact\"><thead><tr><th>model</th><th>kind</th><th>generations below</th><th>created</th></tr></thead><tbody>",
        impact.entries.len()
    );
    for reached in &impact.entries {
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td class=\"number\">{}</td><td>{}</td></tr>",
            model_link(reached.id, &reached.name),
            esc(&reached.source),
            reached.depth,
            time(reached.created_at)
        );
    }
    body.push_str("</tbody></table>");
    if impact.entries.is_empty() {
        body.push_str("<p class=\"hint\">No model has trained on it yet.</p>");
    }
    Ok(Html(page(&dataset.name, "Datasets", &body)))
}

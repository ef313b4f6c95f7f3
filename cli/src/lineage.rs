//! `heirloom lineage …`: every lineage question in one call each, printed for people or
//! as JSON, DOT or Mermaid for tools.

use crate::output::{Output, out, outln};
use clap::{Subcommand, ValueEnum};
use heirloom_client::connection::Connection;
use heirloom_proto::v1 as pb;
use heirloom_proto::v1::model_service_client::ModelServiceClient;
use std::path::PathBuf;

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Readable lines.
    Text,
    Json,
    Dot,
    Mermaid,
}

impl Format {
    /// `--output json` asks for JSON where `--format` was left at text.
    fn for_output(self, output: Output) -> Format {
        match (self, output) {
            (Format::Text, Output::Json) => Format::Json,
            (format, _) => format,
        }
    }
}

#[derive(Subcommand)]
pub enum Command {
    /// Every ancestor of a model, nearest first.
    Ancestors {
        model: String,
        /// How many generations (0 = all).
        #[arg(long, default_value_t = 0)]
        depth: u32,
        /// Follow only edges of this relation (finetune, transfer, direct, module); repeat.
        #[arg(long = "relation")]
        relations: Vec<String>,
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Every descendant of a model, nearest first.
    Descendants {
        model: String,
        #[arg(long, default_value_t = 0)]
        depth: u32,
        #[arg(long = "relation")]
        relations: Vec<String>,
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// A shortest line of descent between two models.
    Path {
        from: String,
        to: String,
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// The nearest common ancestors of two models.
    Common {
        a: String,
        b: String,
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// The graph around a model as JSON, DOT or Mermaid; an image with Graphviz installed.
    Graph {
        model: String,
        /// Generations of ancestors (0 = all).
        #[arg(long, default_value_t = 0)]
        up: u32,
        /// Generations of descendants (0 = all).
        #[arg(long, default_value_t = 0)]
        down: u32,
        #[arg(long, value_enum, default_value_t = Format::Dot)]
        format: Format,
        /// Also draw it with Graphviz's `dot` into this .svg or .png file.
        #[arg(long)]
        image: Option<PathBuf>,
    },
    /// Where a model's tensor last changed, hop by hop through its provenance.
    Blame {
        model: String,
        tensor: String,
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Every model trained on a dataset (id, name@version or name), and all their descendants.
    Impact {
        dataset: String,
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
}

/// Which way `walk` goes.
#[derive(Clone, Copy)]
enum Walk {
    Up,
    Down,
}

/// Every entry of a walk up or down from `model`, page after page: names, sources and
/// depths, all that is printed.
async fn walk(
    client: &ModelServiceClient<Connection>,
    direction: Walk,
    model: &str,
    depth: u32,
    relations: &[String],
) -> anyhow::Result<Vec<pb::LineageEntry>> {
    all_pages(|page_token| {
        let mut client = client.clone();
        let (model, relations) = (model.to_string(), relations.to_vec());
        let view = pb::LineageView::Basic as i32;
        async move {
            let (entries, next) = match direction {
                Walk::Up => {
                    let request = pb::ListAncestorsRequest {
                        model,
                        max_depth: depth,
                        relations,
                        page_size: 10_000,
                        page_token,
                        view,
                    };
                    let page = client.list_ancestors(request).await?.into_inner();
                    (page.entries, page.next_page_token)
                }
                Walk::Down => {
                    let request = pb::ListDescendantsRequest {
                        model,
                        max_depth: depth,
                        relations,
                        page_size: 10_000,
                        page_token,
                        view,
                    };
                    let page = client.list_descendants(request).await?.into_inner();
                    (page.entries, page.next_page_token)
                }
            };
            Ok((entries, next))
        }
    })
    .await
}

pub async fn run(channel: Connection, command: Command, output: Output) -> anyhow::Result<()> {
    let mut client = ModelServiceClient::new(channel);
    match command {
        Command::Ancestors {
            model,
            depth,
            relations,
            format,
        } => {
            let entries = walk(&client, Walk::Up, &model, depth, &relations).await?;
            print_entries(&entries, format.for_output(output))?;
        }
        Command::Descendants {
            model,
            depth,
            relations,
            format,
        } => {
            let entries = walk(&client, Walk::Down, &model, depth, &relations).await?;
            print_entries(&entries, format.for_output(output))?;
        }
        Command::Path { from, to, format } => {
            let format = format.for_output(output);
            let path = client
                .find_path(pb::FindPathRequest { from, to })
                .await?
                .into_inner();
            if format == Format::Json {
                let steps: Vec<serde_json::Value> = path
                    .steps
                    .iter()
                    .map(|step| {
                        let model = step.model.clone().unwrap_or_default();
                        serde_json::json!({"id": model.id, "name": model.name, "relation": step.relation})
                    })
                    .collect();
                outln!(
                    "{}",
                    serde_json::json!({"steps": steps, "reversed": path.reversed})
                );
            } else {
                for step in &path.steps {
                    let model = step.model.clone().unwrap_or_default();
                    match step.relation.as_str() {
                        "" => outln!("{}", model.name),
                        relation => outln!("  └─{relation}→ {}", model.name),
                    }
                }
            }
        }
        Command::Common { a, b, format } => {
            let format = format.for_output(output);
            let common = client
                .common_ancestors(pb::CommonAncestorsRequest { a, b })
                .await?
                .into_inner()
                .ancestors;
            if format == Format::Json {
                let rows: Vec<serde_json::Value> = common
                    .iter()
                    .map(|c| {
                        let model = c.model.clone().unwrap_or_default();
                        serde_json::json!({"id": model.id, "name": model.name,
                            "depth_from_a": c.depth_from_a, "depth_from_b": c.depth_from_b})
                    })
                    .collect();
                outln!("{}", serde_json::Value::Array(rows));
            } else if common.is_empty() {
                outln!("no common ancestor");
            } else {
                for c in &common {
                    let model = c.model.clone().unwrap_or_default();
                    outln!(
                        "{}  ({} up from the first, {} up from the second)",
                        model.name,
                        c.depth_from_a,
                        c.depth_from_b
                    );
                }
            }
        }
        Command::Graph {
            model,
            up,
            down,
            format,
            image,
        } => {
            let format = format.for_output(output);
            let graph_format = match format {
                Format::Json => pb::GraphFormat::Json,
                Format::Mermaid => pb::GraphFormat::Mermaid,
                Format::Dot | Format::Text => pb::GraphFormat::Dot,
            };
            let graph = client
                .lineage_graph(pb::LineageGraphRequest {
                    model: model.clone(),
                    ancestors_depth: up,
                    descendants_depth: down,
                    format: graph_format as i32,
                })
                .await?
                .into_inner();
            out!("{}", graph.rendered);
            if let Some(image) = image {
                draw(&model, &mut client, up, down, &image).await?;
            }
        }
        Command::Blame {
            model,
            tensor,
            format,
        } => {
            let format = format.for_output(output);
            let steps = client
                .blame_tensor(pb::BlameTensorRequest { model, tensor })
                .await?
                .into_inner()
                .steps;
            if format == Format::Json {
                let rows: Vec<serde_json::Value> = steps
                    .iter()
                    .map(|s| {
                        serde_json::json!({"model_id": s.model_id, "model": s.model_name,
                            "tensor": s.tensor, "status": crate::tree::status(s.status()),
                            "sha256": s.sha256})
                    })
                    .collect();
                outln!("{}", serde_json::Value::Array(rows));
            } else {
                let last = steps.len().saturating_sub(1);
                for (i, step) in steps.iter().enumerate() {
                    let note = if i == last {
                        "  ← last changed here"
                    } else {
                        ""
                    };
                    outln!(
                        "{:<32} {:<24} {:<12} {}{note}",
                        step.model_name,
                        step.tensor,
                        crate::tree::status(step.status()),
                        &step.sha256[..12.min(step.sha256.len())]
                    );
                }
            }
        }
        Command::Impact { dataset, format } => {
            let format = format.for_output(output);
            let entries = all_pages(|page_token| {
                let mut client = client.clone();
                let request = pb::DatasetImpactRequest {
                    dataset: dataset.clone(),
                    page_size: 10_000,
                    page_token,
                    // Names, sources and depths are all it prints.
                    view: pb::LineageView::Basic as i32,
                };
                async move {
                    let page = client.dataset_impact(request).await?.into_inner();
                    Ok((page.entries, page.next_page_token))
                }
            })
            .await?;
            print_entries(&entries, format)?;
        }
    }
    Ok(())
}

/// Every page of a paged answer, in order: `fetch` takes a page token and returns the
/// page's entries and the next token (empty after the last page).
async fn all_pages<F, Fut>(mut fetch: F) -> anyhow::Result<Vec<pb::LineageEntry>>
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = Result<(Vec<pb::LineageEntry>, String), tonic::Status>>,
{
    let mut entries = Vec::new();
    let mut page_token = String::new();
    loop {
        let (page, next) = fetch(page_token).await?;
        entries.extend(page);
        if next.is_empty() {
            return Ok(entries);
        }
        page_token = next;
    }
}

fn print_entries(entries: &[pb::LineageEntry], format: Format) -> anyhow::Result<()> {
    match format {
        Format::Json => {
            let rows: Vec<serde_json::Value> = entries
                .iter()
                .map(|entry| {
                    let model = entry.model.clone().unwrap_or_default();
                    serde_json::json!({"id": model.id, "name": model.name, "depth": entry.depth,
                        "source": model.source})
                })
                .collect();
            outln!("{}", serde_json::Value::Array(rows));
        }
        Format::Text => {
            outln!("depth  model  [made by]  id");
            for entry in entries {
                let model = entry.model.clone().unwrap_or_default();
                outln!(
                    "{:>5}  {}  [{}]  {}",
                    entry.depth,
                    model.name,
                    model.source,
                    model.id
                );
            }
        }
        Format::Dot | Format::Mermaid => {
            return Err(crate::usage(
                "--format dot and mermaid are for `heirloom lineage graph`",
            ));
        }
    }
    Ok(())
}

/// Draws the graph with Graphviz's `dot` into `image` (.svg or .png).
async fn draw(
    model: &str,
    client: &mut ModelServiceClient<Connection>,
    up: u32,
    down: u32,
    image: &std::path::Path,
) -> anyhow::Result<()> {
    use std::io::Write;
    let kind = match image.extension().and_then(|e| e.to_str()) {
        Some("svg") => "svg",
        Some("png") => "png",
        _ => {
            return Err(crate::usage(format!(
                "--image {}: name an .svg or .png file",
                image.display()
            )));
        }
    };
    let dot = client
        .lineage_graph(pb::LineageGraphRequest {
            model: model.to_string(),
            ancestors_depth: up,
            descendants_depth: down,
            format: pb::GraphFormat::Dot as i32,
        })
        .await?
        .into_inner()
        .rendered;
    let mut child = std::process::Command::new("dot")
        .arg(format!("-T{kind}"))
        .arg("-o")
        .arg(image)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .map_err(|err| {
            anyhow::anyhow!("--image needs Graphviz's `dot` (apt-get install graphviz): {err}")
        })?;
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(dot.as_bytes())?;
    anyhow::ensure!(child.wait()?.success(), "dot failed");
    eprintln!("drew {}", image.display());
    Ok(())
}

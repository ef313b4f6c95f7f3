//! `heirloom job plan`: a job's plan, printed for people.

use crate::output::{out, outln};
use heirloom_client::display::bytes;
use heirloom_proto::v1 as pb;

pub fn print(plan: &pb::JobPlan) {
    let spec = plan.spec.clone().unwrap_or_default();
    let kind = crate::tree::kind(spec.kind());
    let recipe = match &plan.recipe {
        Some(recipe) => format!(" from recipe {}@{}", recipe.name, recipe.version),
        None => String::new(),
    };
    if plan.spec.is_some() {
        outln!("plan: {kind} job making {:?}{recipe}", spec.model_name);
    } else {
        outln!("plan: no tensor plan could be made");
    }
    if plan.refusals.is_empty() {
        outln!("verdict: would be queued");
    } else {
        outln!("verdict: REFUSED ({} reason(s))", plan.refusals.len());
        for refusal in &plan.refusals {
            outln!("  {}: {}", refusal.code, refusal.message);
        }
    }
    if !plan.tensors.is_empty() {
        print_tensors(&plan.tensors);
        outln!(
            "parameters: {} trainable, {} frozen",
            thousands(plan.trainable_parameters),
            thousands(plan.frozen_parameters)
        );
    }
    if !plan.checks.is_empty() {
        outln!("checks:");
        for check in &plan.checks {
            let mark = if check.passed { "ok  " } else { "FAIL" };
            outln!("  {mark} {:<18} {}", check.check, check.detail);
        }
    }
    if let Some(memory) = &plan.memory {
        outln!(
            "memory at batch size {}: {} = weights {} + gradients {} + optimizer {} + activations {} + data {} + output {}",
            memory.batch_size,
            bytes(memory.total_bytes),
            bytes(memory.weights_bytes),
            bytes(memory.gradients_bytes),
            bytes(memory.optimizer_bytes),
            bytes(memory.activations_bytes),
            bytes(memory.data_bytes),
            bytes(memory.output_bytes)
        );
        if !memory.note.is_empty() {
            outln!("  ({})", memory.note);
        }
    }
    if let Some(gang) = &plan.gang {
        let elastic = match gang.min_ranks {
            min if min < gang.world_size => format!(" (a retry may run with {min})"),
            _ => String::new(),
        };
        outln!(
            "gang: {} ranks{elastic}, {} rows of each batch and {} of memory per rank",
            gang.world_size,
            gang.batch_per_rank,
            bytes(gang.memory_per_rank_bytes)
        );
        outln!("  placement now: {}", gang.placement);
    }
}

/// One line for a job's data shift from a parent's training data.
pub fn print_shift(shift: &pb::DataShift) {
    let reference = shift.reference.clone().unwrap_or_default();
    out!(
        "data shift from {}'s training data {}@{}: {} (mean shift {:.3} σ, largest {:.3} σ at \
         feature {}, deviation ratio {:.3}, label distance {:.3}",
        shift.parent_model_name,
        reference.name,
        reference.version,
        shift.verdict,
        shift.mean_shift,
        shift.max_mean_shift,
        shift.max_mean_shift_feature,
        shift.std_ratio,
        shift.label_distance
    );
    if !shift.new_labels.is_empty() {
        out!(", new labels {:?}", shift.new_labels);
    }
    outln!(")");
}

fn print_tensors(tensors: &[pb::PlannedTensor]) {
    let rows: Vec<[String; 5]> = tensors
        .iter()
        .map(|tensor| {
            [
                tensor.name.clone(),
                tensor
                    .status()
                    .as_str_name()
                    .trim_start_matches("TENSOR_STATUS_")
                    .to_lowercase(),
                if tensor.trainable { "trains" } else { "frozen" }.to_string(),
                format!("{:?}", tensor.shape),
                match tensor.origin_model_name.as_str() {
                    "" => "-".to_string(),
                    model => format!("{model}:{}", tensor.origin_tensor),
                },
            ]
        })
        .collect();
    let header = ["TENSOR", "STATUS", "TRAINING", "SHAPE", "ORIGIN"];
    let widths: Vec<usize> = (0..4)
        .map(|column| {
            rows.iter()
                .map(|row| row[column].len())
                .chain([header[column].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    outln!("tensors ({}):", tensors.len());
    for row in std::iter::once(header.map(String::from)).chain(rows) {
        outln!(
            "  {:<w0$}  {:<w1$}  {:<w2$}  {:<w3$}  {}",
            row[0],
            row[1],
            row[2],
            row[3],
            row[4],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2],
            w3 = widths[3]
        );
    }
}

fn thousands(count: u64) -> String {
    let digits = count.to_string();
    let mut grouped = String::new();
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    grouped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_read_well() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(1234567), "1,234,567");
        assert_eq!(thousands(999), "999");
    }
}

//! The bounds every request is held to at the edge, in one place (SECURITY.md quotes
//! them). A request past one is refused with the field named; nothing is written.

use crate::Invalid;
use std::collections::HashMap;

/// Tensors in one model, manifest, checkpoint or job output.
pub const MAX_TENSORS: usize = 100_000;
/// Bytes in a tensor's name.
pub const MAX_TENSOR_NAME_BYTES: usize = 512;
/// Dimensions of a tensor.
pub const MAX_DIMENSIONS: usize = 8;
/// Elements in one tensor (4 TiB of f32): products of dimensions stay far from overflow.
pub const MAX_TENSOR_ELEMENTS: u64 = 1 << 40;
/// Labels on a worker or in a job's requirements, and bytes in each key and value.
pub const MAX_LABELS: usize = 64;
pub const MAX_LABEL_BYTES: usize = 128;
/// Devices one worker reports.
pub const MAX_DEVICES: usize = 64;
/// Jobs one worker runs at once.
pub const MAX_CONCURRENCY: u32 = 256;
/// The most ranks one job may train on at once.
pub const MAX_WORLD_SIZE: u32 = 64;
/// Leases one heartbeat renews.
pub const MAX_LEASES_PER_HEARTBEAT: usize = 1024;
/// Trainable patterns in one job, and bytes in each.
pub const MAX_PATTERNS: usize = 256;
pub const MAX_PATTERN_BYTES: usize = 256;
/// Modules in one compose job's module map.
pub const MAX_MODULES: usize = 256;
/// Bytes in a reference to a model or dataset (a name or an id) or in a tensor name asked about.
pub const MAX_REFERENCE_BYTES: usize = 512;
/// Bytes kept of a worker's error message or hand-back reason (the rest is cut).
pub const MAX_REPORT_BYTES: usize = 16 * 1024;
/// Job priorities lie in -MAX_PRIORITY..=MAX_PRIORITY.
pub const MAX_PRIORITY: i32 = 1000;
/// Bytes in a dataset registered by hash (the coordinator reads it once to check it).
pub const MAX_DATASET_BYTES: u64 = 1 << 30;

/// Is this 64 lowercase hex digits, as every blob is named?
pub fn is_sha256(text: &str) -> bool {
    text.len() == 64
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

pub fn check_sha256(field: &str, text: &str) -> Result<(), Invalid> {
    if is_sha256(text) {
        Ok(())
    } else {
        let shown: String = text.chars().take(80).collect();
        Err(Invalid::new(
            field,
            format!("{shown:?} is not a lowercase hex sha256"),
        ))
    }
}

/// At most `max` items.
pub fn check_count(field: &str, count: usize, max: usize) -> Result<(), Invalid> {
    if count > max {
        return Err(Invalid::new(
            field,
            format!("has {count} entries; at most {max} are allowed"),
        ));
    }
    Ok(())
}

/// At most `max` bytes.
/// Splits `name@version` at its last `@` into the name and the version; text without
/// `@` is a name alone. The version is digits only, from 1: `-1`, `0`, `+3`, `x` and an
/// empty version are refused saying what to write.
pub fn split_version<'a>(field: &str, text: &'a str) -> Result<(&'a str, Option<i32>), Invalid> {
    let Some((name, version)) = text.rsplit_once('@') else {
        return Ok((text, None));
    };
    // Digits only: `parse` would also take `+3`, and its own error names no fix.
    Some(version)
        .filter(|digits| digits.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|digits| digits.parse::<i32>().ok())
        .filter(|&version| version >= 1)
        .map(|version| (name, Some(version)))
        .ok_or_else(|| {
            Invalid::new(
                field,
                format!(
                    "{text:?}: the version after @ must be a whole number from 1, e.g. {name}@3"
                ),
            )
        })
}

pub fn check_length(field: &str, text: &str, max: usize) -> Result<(), Invalid> {
    if text.len() > max {
        return Err(Invalid::new(
            field,
            format!("is {} bytes long; at most {max} are allowed", text.len()),
        ));
    }
    Ok(())
}

/// A tensor's name and shape as a request describes them.
pub fn check_tensor(field: &str, name: &str, shape: &[u64]) -> Result<(), Invalid> {
    if name.is_empty() {
        return Err(Invalid::new(format!("{field}.name"), "is required"));
    }
    check_length(&format!("{field}.name"), name, MAX_TENSOR_NAME_BYTES)?;
    check_count(&format!("{field}.shape"), shape.len(), MAX_DIMENSIONS)?;
    let elements = shape
        .iter()
        .try_fold(1u64, |product, &d| product.checked_mul(d))
        .filter(|&elements| elements <= MAX_TENSOR_ELEMENTS);
    if elements.is_none() {
        return Err(Invalid::new(
            format!("{field}.shape"),
            format!("{shape:?} has more than {MAX_TENSOR_ELEMENTS} elements"),
        ));
    }
    Ok(())
}

/// Tensors a request lists as (name, shape, sha256): how many, and each one's bounds.
pub fn check_tensors<'a>(
    field: &str,
    tensors: impl ExactSizeIterator<Item = (&'a str, &'a [u64], &'a str)>,
) -> Result<(), Invalid> {
    check_count(field, tensors.len(), MAX_TENSORS)?;
    for (i, (name, shape, sha256)) in tensors.enumerate() {
        let field = format!("{field}[{i}]");
        check_tensor(&field, name, shape)?;
        check_sha256(&format!("{field}.sha256"), sha256)?;
    }
    Ok(())
}

pub fn check_labels(field: &str, labels: &HashMap<String, String>) -> Result<(), Invalid> {
    check_count(field, labels.len(), MAX_LABELS)?;
    for (key, value) in labels {
        if key.is_empty() {
            return Err(Invalid::new(field, "a label's key is empty"));
        }
        check_length(&format!("{field}[{key:.40}]"), key, MAX_LABEL_BYTES)?;
        check_length(&format!("{field}[{key:.40}]"), value, MAX_LABEL_BYTES)?;
    }
    Ok(())
}

/// `text` cut to at most `max` bytes, on a character boundary.
pub fn truncated(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push_str(" …(cut)");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_that_would_overflow_are_refused() {
        assert!(check_tensor("t", "w", &[1 << 20, 1 << 20]).is_ok());
        assert!(check_tensor("t", "w", &[1 << 32, 1 << 32]).is_err());
        assert!(check_tensor("t", "w", &[u64::MAX, 2]).is_err());
        assert!(check_tensor("t", "w", &[1; 9]).is_err());
        assert!(check_tensor("t", "", &[1]).is_err());
    }

    #[test]
    fn hashes_are_64_lowercase_hex_digits() {
        assert!(is_sha256(&"a".repeat(64)));
        assert!(!is_sha256(&"A".repeat(64)));
        assert!(!is_sha256("../../etc/passwd"));
        assert!(!is_sha256(&format!("{}/", "a".repeat(63))));
    }

    #[test]
    fn truncation_keeps_whole_characters() {
        let cut = truncated("é".repeat(10), 5);
        assert!(cut.starts_with("éé"), "{cut}");
        assert_eq!(truncated("short".into(), 10), "short");
    }
}

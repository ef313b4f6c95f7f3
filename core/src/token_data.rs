//! Token datasets for causal language models: many shards, each a safetensors file with
//! one tensor `tokens` (int32 or int64, `[sequences, length]`, every shard of one length),
//! each stored as a blob of its own and registered by a manifest of shards with the
//! vocabulary size (and optionally the padding token). A worker streams the shards; the
//! coordinator reads each one once, at registration, to check every token id.

use crate::{Invalid, sha256_hex};
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};

/// The shards a token dataset may have.
pub const MAX_SHARDS: usize = 100_000;

/// One shard of a registered token dataset, in the dataset's order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenShard {
    pub sha256: String,
    pub sequences: u64,
    pub size_bytes: u64,
}

/// What a shard holds, once checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardInfo {
    pub sequences: u64,
    pub sequence_length: u32,
}

/// Checks a shard's file: one tensor `tokens`, int32 or int64, two dimensions, at least
/// two positions (a next token to predict), and every id inside the vocabulary.
/// `field` names the shard in the request.
pub fn read_token_shard(field: &str, bytes: &[u8], vocab_size: u32) -> Result<ShardInfo, Invalid> {
    let file = SafeTensors::deserialize(bytes)
        .map_err(|err| Invalid::new(field, format!("not a safetensors file: {err}")))?;
    let names = file.names();
    if names.len() != 1 || names[0] != "tokens" {
        return Err(Invalid::new(
            field,
            format!("a token shard holds exactly one tensor, `tokens`; this one holds {names:?}"),
        ));
    }
    let tokens = file
        .tensor("tokens")
        .map_err(|err| Invalid::new(field, err.to_string()))?;
    let shape = tokens.shape();
    let [sequences, length] = shape else {
        return Err(Invalid::new(
            field,
            format!("`tokens` must be [sequences, length], is {shape:?}"),
        ));
    };
    if *sequences == 0 || *length < 2 || *length > crate::language_model::MAX_POSITIONS as usize {
        return Err(Invalid::new(
            field,
            format!(
                "`tokens` is {shape:?}: a shard needs at least one sequence of 2 to {} tokens",
                crate::language_model::MAX_POSITIONS
            ),
        ));
    }
    let ids: Box<dyn Iterator<Item = i64>> = match tokens.dtype() {
        Dtype::I64 => Box::new(
            tokens
                .data()
                .chunks_exact(8)
                .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes"))),
        ),
        Dtype::I32 => Box::new(
            tokens
                .data()
                .chunks_exact(4)
                .map(|b| i64::from(i32::from_le_bytes(b.try_into().expect("4 bytes")))),
        ),
        other => {
            return Err(Invalid::new(
                field,
                format!("`tokens` must be int32 or int64 token ids, is {other:?}"),
            ));
        }
    };
    for (at, id) in ids.enumerate() {
        if !(0..i64::from(vocab_size)).contains(&id) {
            return Err(Invalid::new(
                field,
                format!(
                    "token id {id} at sequence {}, position {} is outside the vocabulary \
                     (ids 0 to {}): re-tokenise it, or register the dataset with a larger \
                     vocab_size",
                    at / length,
                    at % length,
                    vocab_size - 1
                ),
            ));
        }
    }
    Ok(ShardInfo {
        sequences: *sequences as u64,
        sequence_length: *length as u32,
    })
}

/// The identity of a token dataset: the hash of its manifest (the shards in order, the
/// vocabulary and the padding token), as `datasets.sha256` holds it.
pub fn token_manifest_sha256(
    shards: &[String],
    vocab_size: u32,
    pad_token_id: Option<u32>,
) -> String {
    let manifest = serde_json::json!({
        "shards": shards,
        "vocab_size": vocab_size,
        "pad_token_id": pad_token_id,
    });
    sha256_hex(manifest.to_string().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(dtype: Dtype, shape: Vec<usize>, ids: &[i64]) -> Vec<u8> {
        let data: Vec<u8> = match dtype {
            Dtype::I32 => ids
                .iter()
                .flat_map(|&id| (id as i32).to_le_bytes())
                .collect(),
            _ => ids.iter().flat_map(|&id| id.to_le_bytes()).collect(),
        };
        let view = safetensors::tensor::TensorView::new(dtype, shape, &data).unwrap();
        safetensors::serialize([("tokens", view)], None).unwrap()
    }

    #[test]
    fn every_id_is_checked_and_the_first_outside_named_by_position() {
        let good = shard(Dtype::I32, vec![2, 3], &[0, 1, 2, 3, 4, 9]);
        assert_eq!(
            read_token_shard("s", &good, 10).unwrap(),
            ShardInfo {
                sequences: 2,
                sequence_length: 3
            }
        );
        let bad = shard(Dtype::I64, vec![2, 3], &[0, 1, 2, 3, 10, 9]);
        let error = read_token_shard("tokens.shard_sha256[1]", &bad, 10).unwrap_err();
        assert_eq!(error.field, "tokens.shard_sha256[1]");
        assert!(
            error.reason.starts_with(
                "token id 10 at sequence 1, position 1 is outside the vocabulary (ids 0 to 9)"
            ),
            "{}",
            error.reason
        );
        let negative = shard(Dtype::I32, vec![1, 2], &[0, -1]);
        assert!(
            read_token_shard("s", &negative, 10)
                .unwrap_err()
                .reason
                .starts_with("token id -1")
        );
    }

    #[test]
    fn a_shard_is_one_two_dimensional_integer_tensor() {
        let check = |bytes: Vec<u8>, says: &str| {
            let reason = read_token_shard("s", &bytes, 10).unwrap_err().reason;
            assert!(reason.contains(says), "{reason}");
        };
        check(
            shard(Dtype::I32, vec![6], &[0; 6]),
            "must be [sequences, length]",
        );
        check(shard(Dtype::I32, vec![3, 1], &[0; 3]), "2 to");
        let floats =
            safetensors::tensor::TensorView::new(Dtype::F32, vec![1, 2], &[0u8; 8]).unwrap();
        check(
            safetensors::serialize([("tokens", floats)], None).unwrap(),
            "int32 or int64",
        );
        let other =
            safetensors::tensor::TensorView::new(Dtype::I32, vec![1, 2], &[0u8; 8]).unwrap();
        check(
            safetensors::serialize([("ids", other)], None).unwrap(),
            "exactly one tensor, `tokens`",
        );
        check(b"not safetensors".to_vec(), "not a safetensors file");
    }
}

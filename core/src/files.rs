//! The two file formats that cross the coordinator/worker boundary, both safetensors:
//! datasets (`x`: float32 [N, F], `y`: int64 [N] with labels 0..C-1) and weights
//! (one tensor per parameter, PyTorch state-dict names). A dataset's `x` must be finite.

use crate::{Architecture, DatasetStatistics, Invalid};
use safetensors::{Dtype, SafeTensors};
use sha2::{Digest, Sha256};

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<usize>,
}

/// The dtypes Heirloom stores: float32 weights, bfloat16 and float16 weights of language
/// models, int64 counters (`num_batches_tracked`).
const STORED_DTYPES: [&str; 4] = ["f32", "bf16", "f16", "i64"];

impl TensorInfo {
    /// The bytes the tensor's elements take; `None` when `dtype` names no safetensors
    /// dtype.
    pub fn byte_len(&self) -> Option<u64> {
        let dtype: Dtype =
            serde_json::from_value(serde_json::Value::String(self.dtype.to_uppercase())).ok()?;
        let elements = self
            .shape
            .iter()
            .try_fold(1u64, |product, &d| product.checked_mul(d as u64))?;
        Some(elements.checked_mul(dtype.bitsize() as u64)?.div_ceil(8))
    }
}

/// Checks that a tensor a request lists has a dtype Heirloom stores; `field` names the
/// tensor in the request.
pub fn check_stored_dtype(field: &str, info: &TensorInfo) -> Result<(), Invalid> {
    if STORED_DTYPES.contains(&info.dtype.as_str()) {
        return Ok(());
    }
    let (name, dtype, shape) = (&info.name, &info.dtype, &info.shape);
    let what = match info.byte_len() {
        Some(bytes) => format!("tensor {name} is {dtype} {shape:?}, {bytes} bytes"),
        None => format!("tensor {name} has dtype {dtype:?}, which safetensors does not name"),
    };
    Err(Invalid::new(
        format!("{field}.dtype"),
        format!(
            "{what}; Heirloom stores weights as f32 (bf16 or f16 for a language model \
             whose architecture says so) and counters such as num_batches_tracked as i64: \
             convert it"
        ),
    ))
}

pub fn read_tensor_infos(field: &str, bytes: &[u8]) -> Result<Vec<TensorInfo>, Invalid> {
    let tensors = SafeTensors::deserialize(bytes)
        .map_err(|err| Invalid::new(field, format!("not a safetensors file: {err}")))?;
    let mut infos: Vec<TensorInfo> = tensors
        .tensors()
        .into_iter()
        .map(|(name, view)| TensorInfo {
            name,
            dtype: format!("{:?}", view.dtype()).to_lowercase(),
            shape: view.shape().to_vec(),
        })
        .collect();
    crate::limits::check_count(field, infos.len(), crate::limits::MAX_TENSORS)?;
    for info in &infos {
        let shape: Vec<u64> = info.shape.iter().map(|&d| d as u64).collect();
        crate::limits::check_tensor(&format!("{field}: tensor"), &info.name, &shape)?;
    }
    infos.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(infos)
}

/// Checks that `infos` describe exactly the state dict of `architecture`.
pub fn check_manifest(
    field: &str,
    infos: &[TensorInfo],
    architecture: &Architecture,
) -> Result<(), Invalid> {
    let expected = architecture.parameters();
    let mut given = std::collections::HashMap::with_capacity(infos.len());
    for info in infos {
        if given.insert(info.name.as_str(), info).is_some() {
            return Err(Invalid::new(
                field,
                format!("tensor {} is listed twice", info.name),
            ));
        }
    }
    for tensor in &expected {
        let name = &tensor.name;
        let Some(info) = given.get(name.as_str()) else {
            return Err(Invalid::new(
                field,
                format!(
                    "tensor {name} is missing; the architecture needs {}",
                    architecture.names().join(", ")
                ),
            ));
        };
        if info.shape != tensor.shape || info.dtype != tensor.dtype {
            return Err(Invalid::new(
                field,
                format!(
                    "tensor {name} is {} {:?}; the architecture needs {} {:?}",
                    info.dtype, info.shape, tensor.dtype, tensor.shape
                ),
            ));
        }
    }
    let wanted: std::collections::HashSet<&str> =
        expected.iter().map(|t| t.name.as_str()).collect();
    if let Some(extra) = infos
        .iter()
        .find(|info| !wanted.contains(info.name.as_str()))
    {
        return Err(Invalid::new(
            field,
            format!("tensor {} is not part of the architecture", extra.name),
        ));
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq)]
pub struct DatasetInfo {
    pub num_examples: u64,
    pub num_features: u32,
    pub num_classes: u32,
    pub statistics: DatasetStatistics,
}

pub fn read_dataset_info(field: &str, bytes: &[u8]) -> Result<DatasetInfo, Invalid> {
    let tensors = SafeTensors::deserialize(bytes)
        .map_err(|err| Invalid::new(field, format!("not a safetensors file: {err}")))?;
    // A tensor beside `x` and `y` would be stored and never read: most likely the data
    // meant to be in one of them.
    if let Some(extra) = tensors
        .names()
        .into_iter()
        .filter(|name| !matches!(*name, "x" | "y"))
        .min()
    {
        return Err(Invalid::new(
            field,
            format!("holds tensor `{extra}`; a dataset holds only `x` and `y`: remove it"),
        ));
    }
    let x = tensors
        .tensor("x")
        .map_err(|_| Invalid::new(field, "has no tensor `x` (float32 [N, F])"))?;
    let y = tensors
        .tensor("y")
        .map_err(|_| Invalid::new(field, "has no tensor `y` (int64 [N])"))?;
    let &[rows, features] = x.shape() else {
        return Err(Invalid::new(
            field,
            format!("`x` must be 2-D [N, F], is {:?}", x.shape()),
        ));
    };
    if x.dtype() != Dtype::F32 {
        return Err(Invalid::new(
            field,
            format!("`x` must be float32, is {:?}", x.dtype()),
        ));
    }
    if y.dtype() != Dtype::I64 || y.shape() != [rows] {
        return Err(Invalid::new(
            field,
            format!(
                "`y` must be int64 [{rows}], is {:?} {:?}",
                y.dtype(),
                y.shape()
            ),
        ));
    }
    if rows < 2 || features == 0 {
        return Err(Invalid::new(
            field,
            "needs at least 2 examples and 1 feature",
        ));
    }
    // Statistics of a NaN are NaN, which JSON cannot hold, and no training survives one:
    // refused before anything is measured or written.
    if let Some((index, value)) = crate::first_non_finite("f32", x.data()) {
        return Err(Invalid::new(
            field,
            format!(
                "x holds {value} at row {}, feature {}: datasets must be finite",
                index / features,
                index % features
            ),
        ));
    }
    let mut max_label = 0i64;
    for chunk in y.data().chunks_exact(8) {
        let label = i64::from_le_bytes(chunk.try_into().expect("8-byte chunk"));
        if label < 0 {
            return Err(Invalid::new(
                field,
                format!("`y` holds a negative label {label}"),
            ));
        }
        max_label = max_label.max(label);
    }
    if max_label >= 1 << 16 {
        return Err(Invalid::new(
            field,
            format!("`y` holds label {max_label}; at most 65535"),
        ));
    }
    Ok(DatasetInfo {
        statistics: DatasetStatistics::measure(x.data(), features, y.data()),
        num_examples: rows as u64,
        num_features: u32::try_from(features)
            .map_err(|_| Invalid::new(field, "too many features"))?,
        num_classes: max_label as u32 + 1,
    })
}

/// One tensor of a safetensors file: what it is, its sha256 over its raw little-endian
/// bytes, and where those bytes lie in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HashedTensor {
    pub info: TensorInfo,
    pub sha256: String,
    pub range: std::ops::Range<usize>,
}

/// Every tensor of a safetensors file, hashed, by name.
pub fn tensor_hashes(field: &str, bytes: &[u8]) -> Result<Vec<HashedTensor>, Invalid> {
    let tensors = SafeTensors::deserialize(bytes)
        .map_err(|err| Invalid::new(field, format!("not a safetensors file: {err}")))?;
    let mut hashes: Vec<HashedTensor> = tensors
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            let start = view.data().as_ptr() as usize - bytes.as_ptr() as usize;
            HashedTensor {
                info: TensorInfo {
                    name,
                    dtype: format!("{:?}", view.dtype()).to_lowercase(),
                    shape: view.shape().to_vec(),
                },
                sha256: sha256_hex(view.data()),
                range: start..start + view.data().len(),
            }
        })
        .collect();
    hashes.sort_by(|a, b| a.info.name.cmp(&b.info.name));
    Ok(hashes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A dataset of `rows` × 3 features, each value its index, but `value` at `at`.
    fn dataset(rows: usize, at: usize, value: f32) -> Vec<u8> {
        let mut x: Vec<f32> = (0..rows * 3).map(|i| i as f32).collect();
        x[at] = value;
        let x: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
        let y: Vec<u8> = (0..rows as i64)
            .flat_map(|v| (v % 2).to_le_bytes())
            .collect();
        let views = [
            (
                "x",
                safetensors::tensor::TensorView::new(Dtype::F32, vec![rows, 3], &x).unwrap(),
            ),
            (
                "y",
                safetensors::tensor::TensorView::new(Dtype::I64, vec![rows], &y).unwrap(),
            ),
        ];
        safetensors::serialize(views, None).unwrap()
    }

    #[test]
    fn a_dataset_holds_only_x_and_y() {
        let bytes = dataset(4, 0, 1.0);
        let mut tensors = SafeTensors::deserialize(&bytes).unwrap().tensors();
        let weights: Vec<u8> = [0.5f32; 2].iter().flat_map(|v| v.to_le_bytes()).collect();
        tensors.push((
            "weights".into(),
            safetensors::tensor::TensorView::new(Dtype::F32, vec![2], &weights).unwrap(),
        ));
        let bytes = safetensors::serialize(tensors, None).unwrap();
        assert_eq!(
            read_dataset_info("content", &bytes)
                .unwrap_err()
                .to_string(),
            "content: holds tensor `weights`; a dataset holds only `x` and `y`: remove it"
        );
    }

    #[test]
    fn a_stored_tensor_is_f32_or_i64_and_its_size_is_counted_in_its_dtype() {
        let info = |dtype: &str, shape: Vec<usize>| TensorInfo {
            name: "w".into(),
            dtype: dtype.into(),
            shape,
        };
        assert_eq!(info("f64", vec![5]).byte_len(), Some(40));
        assert_eq!(info("f32", vec![5]).byte_len(), Some(20));
        assert_eq!(info("i64", vec![2, 3]).byte_len(), Some(48));
        assert_eq!(info("bf16", vec![]).byte_len(), Some(2));
        assert_eq!(info("f4", vec![3]).byte_len(), Some(2));
        assert_eq!(info("nope", vec![5]).byte_len(), None);
        for dtype in STORED_DTYPES {
            assert_eq!(
                check_stored_dtype("tensors[0]", &info(dtype, vec![5])),
                Ok(())
            );
        }
        assert_eq!(
            check_stored_dtype("tensors[0]", &info("f64", vec![5]))
                .unwrap_err()
                .to_string(),
            "tensors[0].dtype: tensor w is f64 [5], 40 bytes; Heirloom stores weights as f32 \
             (bf16 or f16 for a language model whose architecture says so) and counters such \
             as num_batches_tracked as i64: convert it"
        );
        let unknown = check_stored_dtype("tensors[1]", &info("float", vec![5])).unwrap_err();
        assert_eq!(unknown.field, "tensors[1].dtype");
        assert!(
            unknown
                .reason
                .starts_with("tensor w has dtype \"float\", which safetensors does not name")
        );
    }

    #[test]
    fn a_dataset_must_be_finite() {
        let info = read_dataset_info("content", &dataset(4, 0, -7.5)).unwrap();
        assert!(info.statistics.mean.is_finite());
        for (at, value, message) in [
            (5, f32::NAN, "content: x holds NaN at row 1, feature 2"),
            (0, f32::INFINITY, "content: x holds inf at row 0, feature 0"),
            (
                10,
                f32::NEG_INFINITY,
                "content: x holds -inf at row 3, feature 1",
            ),
        ] {
            assert_eq!(
                read_dataset_info("content", &dataset(4, at, value))
                    .unwrap_err()
                    .to_string(),
                format!("{message}: datasets must be finite")
            );
        }
    }
}

//! Whether a tensor's values are all finite: the one scan that a dataset's `x` passes at
//! registration and that weights pass wherever they enter or are made (an import, a
//! job's output, a checkpoint), so that no NaN or ±inf is ever stored. Float tensors
//! (`f32`, `f64`, `f16`, `bf16`, little-endian, as safetensors lays them out) are
//! scanned; integer tensors hold no such values and are never scanned.

use crate::Invalid;

/// A value that is not a finite number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonFinite {
    Nan,
    Infinity,
    NegativeInfinity,
}

impl std::fmt::Display for NonFinite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NonFinite::Nan => "NaN",
            NonFinite::Infinity => "inf",
            NonFinite::NegativeInfinity => "-inf",
        })
    }
}

/// The bits of one float format: its width in bytes and where its exponent lies. A value
/// whose exponent bits are all set is not finite: NaN with a nonzero mantissa, else an
/// infinity of its sign.
struct Format {
    bytes: usize,
    exponent: u64,
    mantissa: u64,
    sign: u64,
}

fn format(dtype: &str) -> Option<Format> {
    let format = |bytes, exponent_bits: u32, mantissa_bits: u32| Format {
        bytes,
        exponent: ((1u64 << exponent_bits) - 1) << mantissa_bits,
        mantissa: (1u64 << mantissa_bits) - 1,
        sign: 1u64 << (exponent_bits + mantissa_bits),
    };
    match dtype {
        "f64" => Some(format(8, 11, 52)),
        "f32" => Some(format(4, 8, 23)),
        "f16" => Some(format(2, 5, 10)),
        "bf16" => Some(format(2, 8, 7)),
        _ => None,
    }
}

/// Whether `dtype` (as safetensors names it, lowercase) is a float: what can hold a
/// value that is not finite, and what an interpolation or a scale may change.
pub fn is_float_dtype(dtype: &str) -> bool {
    format(dtype).is_some()
}

/// The first value of a tensor of `dtype` (as safetensors names it, lowercase) in
/// little-endian `bytes` that is not finite, with its index among the tensor's elements;
/// `None` when every value is finite or the dtype is not a float.
pub fn first_non_finite(dtype: &str, bytes: &[u8]) -> Option<(usize, NonFinite)> {
    let format = format(dtype)?;
    bytes
        .chunks_exact(format.bytes)
        .enumerate()
        .find_map(|(index, value)| {
            let mut word = [0u8; 8];
            word[..format.bytes].copy_from_slice(value);
            let bits = u64::from_le_bytes(word);
            if bits & format.exponent != format.exponent {
                None
            } else if bits & format.mantissa != 0 {
                Some((index, NonFinite::Nan))
            } else if bits & format.sign != 0 {
                Some((index, NonFinite::NegativeInfinity))
            } else {
                Some((index, NonFinite::Infinity))
            }
        })
}

/// Refuses weights that are not finite: `{field}: tensor {name} holds inf at element 7:
/// a model with non-finite weights is never stored`. Integer tensors pass.
pub fn check_finite(field: &str, name: &str, dtype: &str, bytes: &[u8]) -> Result<(), Invalid> {
    check_finite_part(field, name, dtype, bytes, 0)
}

/// [`check_finite`] for the piece of a tensor that starts `offset` bytes into it (a
/// multiple of the element's size), as a stream delivers a large tensor; the element
/// named is counted from the tensor's start.
pub fn check_finite_part(
    field: &str,
    name: &str,
    dtype: &str,
    bytes: &[u8],
    offset: usize,
) -> Result<(), Invalid> {
    match first_non_finite(dtype, bytes) {
        None => Ok(()),
        Some((index, value)) => {
            let element = offset / format(dtype).map_or(1, |f| f.bytes) + index;
            Err(Invalid::new(
                field,
                format!(
                    "tensor {name} holds {value} at element {element}: \
                     a model with non-finite weights is never stored"
                ),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f32s(values: &[f32]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    fn check(dtype: &str, bytes: &[u8], expected: Option<(usize, NonFinite)>) {
        assert_eq!(
            first_non_finite(dtype, bytes),
            expected,
            "{dtype} {bytes:?}"
        );
    }

    #[test]
    fn finds_the_first_value_that_is_not_finite() {
        use NonFinite::*;
        check("f32", &f32s(&[0.0, -1.5, f32::MAX, f32::MIN]), None);
        check("f32", &f32s(&[f32::MIN_POSITIVE / 2.0, -0.0]), None); // subnormal, -0
        check(
            "f32",
            &f32s(&[1.0, f32::NAN, f32::INFINITY]),
            Some((1, Nan)),
        );
        check(
            "f32",
            &f32s(&[1.0, 2.0, f32::INFINITY]),
            Some((2, Infinity)),
        );
        check(
            "f32",
            &f32s(&[f32::NEG_INFINITY]),
            Some((0, NegativeInfinity)),
        );
        check("f32", &f32s(&[-f32::NAN]), Some((0, Nan)));
        check("f32", &[], None);

        let f64s =
            |values: &[f64]| -> Vec<u8> { values.iter().flat_map(|v| v.to_le_bytes()).collect() };
        check("f64", &f64s(&[1e300, -1e-300, f64::MAX]), None);
        check("f64", &f64s(&[1.0, f64::NAN]), Some((1, Nan)));
        check(
            "f64",
            &f64s(&[f64::NEG_INFINITY]),
            Some((0, NegativeInfinity)),
        );
        // An f32 NaN and a zero, read as one f64, are a finite (subnormal) number: the
        // dtype decides how bytes are read.
        check("f64", &f32s(&[f32::NAN, 0.0]), None);

        // f16: 0x3C00 is 1.0, 0x7BFF the largest finite, 0x7C00 inf, 0xFC00 -inf, 0x7E00 NaN.
        let halves =
            |bits: &[u16]| -> Vec<u8> { bits.iter().flat_map(|b| b.to_le_bytes()).collect() };
        check("f16", &halves(&[0x3C00, 0x7BFF, 0xFBFF]), None);
        check("f16", &halves(&[0x3C00, 0x7C00]), Some((1, Infinity)));
        check("f16", &halves(&[0xFC00]), Some((0, NegativeInfinity)));
        check("f16", &halves(&[0x7E00]), Some((0, Nan)));
        // bf16 is the top half of an f32.
        let top = |v: f32| (v.to_bits() >> 16) as u16;
        check("bf16", &halves(&[top(1.0), top(-3e38)]), None);
        check("bf16", &halves(&[top(1.0), top(f32::NAN)]), Some((1, Nan)));
        check("bf16", &halves(&[top(f32::INFINITY)]), Some((0, Infinity)));
        check(
            "bf16",
            &halves(&[0x7BFF, top(f32::NEG_INFINITY)]),
            Some((1, NegativeInfinity)),
        );
    }

    #[test]
    fn integer_tensors_are_never_scanned() {
        // All bits set: as a float that would be NaN.
        check("i64", &[0xFF; 16], None);
        check("i32", &[0xFF; 8], None);
        check("u8", &[0xFF; 4], None);
        check("bool", &[1; 4], None);
        assert_eq!(
            check_finite("weights", "num_batches_tracked", "i64", &[0xFF; 8]),
            Ok(())
        );
    }

    #[test]
    fn the_refusal_names_the_tensor_and_the_element() {
        let bytes = f32s(&[0.5, 0.25, f32::INFINITY]);
        assert_eq!(
            check_finite("weights", "fc.weight", "f32", &f32s(&[0.5])),
            Ok(())
        );
        assert_eq!(
            check_finite("weights", "fc.weight", "f32", &bytes)
                .unwrap_err()
                .to_string(),
            "weights: tensor fc.weight holds inf at element 2: \
             a model with non-finite weights is never stored"
        );
        // A piece 8 bytes in: its third value is the tensor's fifth element.
        assert_eq!(
            check_finite_part("output.tensors", "fc.bias", "f32", &bytes, 8)
                .unwrap_err()
                .to_string(),
            "output.tensors: tensor fc.bias holds inf at element 4: \
             a model with non-finite weights is never stored"
        );
    }
}

//! Test data made in code, the same on every run: pseudo-random numbers, Gaussian blobs
//! as a dataset, safetensors files, MLP architectures and their weights. Never touches
//! a coordinator or the network.

use heirloom_proto::v1 as pb;

/// Deterministic pseudo-random numbers, so test data is the same on every run.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    pub fn normal(&mut self) -> f32 {
        let (u, v) = (self.uniform().max(1e-7), self.uniform());
        (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
    }
}

pub const FEATURES: usize = 64;

/// Gaussian blobs: one centre per class in 0..10, `per_class` examples of each of
/// `classes`, labelled from 0 in the order given. The same centres on every call.
pub fn blobs(classes: std::ops::Range<usize>, per_class: usize, seed: u64) -> Vec<u8> {
    let mut centres = Rng::new(7);
    let centres: Vec<Vec<f32>> = (0..10)
        .map(|_| (0..FEATURES).map(|_| centres.normal()).collect())
        .collect();
    let mut rng = Rng::new(seed);
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for _ in 0..per_class {
        for (label, class) in classes.clone().enumerate() {
            x.extend(centres[class].iter().map(|c| c + 1.2 * rng.normal()));
            y.push(label as i64);
        }
    }
    let rows = y.len();
    let x_bytes: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
    let y_bytes: Vec<u8> = y.iter().flat_map(|v| v.to_le_bytes()).collect();
    safetensors_file(&[
        ("x", safetensors::Dtype::F32, vec![rows, FEATURES], x_bytes),
        ("y", safetensors::Dtype::I64, vec![rows], y_bytes),
    ])
}

/// A token shard of arithmetic sequences, `sequences` × `length` int32 ids in
/// `1..vocab`: each starts anywhere and steps by 1, 2 or 3 (mod vocab - 1), so the next
/// token follows from the two before it. With `pad`, every fourth sequence ends in a run
/// of that id.
pub fn token_shard(
    sequences: usize,
    length: usize,
    vocab: u32,
    pad: Option<u32>,
    seed: u64,
) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let modulus = vocab - 1;
    let mut ids = Vec::with_capacity(sequences * length);
    for sequence in 0..sequences {
        let start = (rng.uniform() * modulus as f32) as u32 % modulus;
        let stride = 1 + (rng.uniform() * 3.0) as u32 % 3;
        let padded_from = match pad {
            Some(_) if sequence % 4 == 3 => length / 2 + sequence % (length / 2),
            _ => length,
        };
        for position in 0..length {
            let id = match pad {
                Some(pad) if position >= padded_from => pad,
                _ => 1 + (start + stride * position as u32) % modulus,
            };
            ids.push(id as i32);
        }
    }
    let bytes = ids.iter().flat_map(|id| id.to_le_bytes()).collect();
    safetensors_file(&[(
        "tokens",
        safetensors::Dtype::I32,
        vec![sequences, length],
        bytes,
    )])
}

pub fn safetensors_file(tensors: &[(&str, safetensors::Dtype, Vec<usize>, Vec<u8>)]) -> Vec<u8> {
    let views: Vec<(&str, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(name, dtype, shape, data)| {
            (
                *name,
                safetensors::tensor::TensorView::new(*dtype, shape.clone(), data).expect("view"),
            )
        })
        .collect();
    safetensors::serialize(views, None).expect("serialize")
}

pub fn mlp(input_features: u32, hidden: Vec<u32>, num_classes: u32) -> pb::Architecture {
    pb::Architecture {
        kind: Some(pb::architecture::Kind::Mlp(pb::Mlp {
            input_features,
            hidden,
            num_classes,
        })),
    }
}

/// Seed 1, `epochs`, and `learning_rate` (`None` leaves it to the optimizer's default);
/// the rest unset, taking their defaults.
pub fn hyperparameters(
    epochs: u32,
    learning_rate: impl Into<Option<f64>>,
) -> Option<pb::Hyperparameters> {
    Some(pb::Hyperparameters {
        epochs: Some(epochs),
        learning_rate: learning_rate.into(),
        seed: 1,
        ..Default::default()
    })
}

pub fn floats(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|chunk| f32::from_le_bytes(chunk.try_into().expect("4 bytes")))
        .collect()
}

/// An MLP `input → hidden → classes` state dict whose four tensors are filled with
/// `fills` (weight, bias, head weight, head bias).
pub fn mlp_weights(input: usize, hidden: usize, classes: usize, fills: [f32; 4]) -> Vec<u8> {
    let tensor = |name: &'static str, shape: Vec<usize>, fill: f32| {
        let count: usize = shape.iter().product();
        (
            name,
            safetensors::Dtype::F32,
            shape,
            fill.to_le_bytes().repeat(count),
        )
    };
    safetensors_file(&[
        tensor("hidden.0.weight", vec![hidden, input], fills[0]),
        tensor("hidden.0.bias", vec![hidden], fills[1]),
        tensor("fc.weight", vec![classes, hidden], fills[2]),
        tensor("fc.bias", vec![classes], fills[3]),
    ])
}

/// Random weights for an MLP `input → hidden… → classes` (torch's state-dict names).
pub fn random_mlp_weights(input: usize, hidden: &[usize], classes: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let mut tensor = |name: String, shape: Vec<usize>| {
        let fan_in = *shape.last().expect("a shape") as f32;
        let count: usize = shape.iter().product();
        let values: Vec<u8> = (0..count)
            .flat_map(|_| (rng.normal() / fan_in.sqrt()).to_le_bytes())
            .collect();
        (name, shape, values)
    };
    let mut tensors = Vec::new();
    let mut width = input;
    for (i, &size) in hidden.iter().enumerate() {
        tensors.push(tensor(format!("hidden.{i}.weight"), vec![size, width]));
        tensors.push(tensor(format!("hidden.{i}.bias"), vec![size]));
        width = size;
    }
    tensors.push(tensor("fc.weight".into(), vec![classes, width]));
    tensors.push(tensor("fc.bias".into(), vec![classes]));
    let named: Vec<(&str, safetensors::Dtype, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(name, shape, values)| {
            (
                name.as_str(),
                safetensors::Dtype::F32,
                shape.clone(),
                values.clone(),
            )
        })
        .collect();
    safetensors_file(&named)
}

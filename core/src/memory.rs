//! What a job needs in memory, estimated from its architecture, its tensor plan and its
//! batch size, before any worker loads it.

use crate::{
    Architecture, Hyperparameters, Optimizer, Precision, TensorPlan, VggLayer, resnet_stages,
};
use serde::{Deserialize, Serialize};

/// Bytes, by what holds them, in the weights' dtype (float32 unless a language model's
/// architecture says otherwise).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryEstimate {
    pub batch_size: u64,
    pub weights_bytes: u64,
    pub gradients_bytes: u64,
    pub optimizer_bytes: u64,
    pub activations_bytes: u64,
    pub data_bytes: u64,
    /// The finished weights, written out and read back whole to hash and upload.
    pub output_bytes: u64,
    pub note: String,
}

impl MemoryEstimate {
    pub fn total_bytes(&self) -> u64 {
        [
            self.weights_bytes,
            self.gradients_bytes,
            self.optimizer_bytes,
            self.activations_bytes,
            self.data_bytes,
            self.output_bytes,
        ]
        .into_iter()
        .fold(0, u64::saturating_add)
    }
}

/// Weights of every tensor; a gradient and the optimizer's state (Adam: two moments;
/// SGD: momentum) for each trainable parameter; activations kept for the backward pass,
/// per example times the batch size, when anything trains (one batch's forward pass
/// otherwise); the dataset, which a worker holds whole; and the finished weights once
/// more, as the worker serializes them and reads them back to hash and upload.
pub fn estimate(
    architecture: &Architecture,
    plan: &[TensorPlan],
    hyperparameters: &Hyperparameters,
    dataset_examples: u64,
) -> MemoryEstimate {
    // Stored weights in their dtype; while training, the weights, gradients and optimizer
    // state in the precision's master dtype, activations in its compute dtype (and, for
    // a mixed precision, a copy of the weights in that dtype per pass).
    let stored = architecture.weight_dtype().bytes();
    let (master, compute, copies) = match hyperparameters.precision {
        Precision::Fp32 => (4, 4, 0),
        Precision::Bf16 => (2, 2, 0),
        Precision::Bf16Mixed | Precision::Fp16Mixed => (4, 2, 2),
    };
    let elements: std::collections::HashMap<String, (u64, bool)> = architecture
        .parameters()
        .into_iter()
        .map(|tensor| {
            let count = tensor.shape.iter().map(|&d| d as u64).product::<u64>();
            (tensor.name, (count, tensor.buffer))
        })
        .collect();
    let weights: u64 = elements.values().map(|(count, _)| count).sum();
    let trained: u64 = plan
        .iter()
        .filter(|tensor| tensor.trainable)
        .filter_map(|tensor| elements.get(&tensor.name))
        .filter(|(_, buffer)| !buffer)
        .map(|(count, _)| count)
        .sum();
    let optimizer_states = match hyperparameters.optimizer {
        Optimizer::Adam => 2,
        Optimizer::Sgd => 1,
    };
    let batch = u64::from(hyperparameters.batch_size);
    let trains = trained > 0;
    let (held, copies) = if trains {
        (master, copies)
    } else {
        (stored, 0)
    };
    let (per_example, note) = match activation_elements(architecture) {
        Some(count) => (count, String::new()),
        None => (
            architecture.input_features() + u64::from(architecture.num_classes()),
            "a TorchScript program's activations are unknown to Heirloom: only its input and \
             output are counted"
                .to_string(),
        ),
    };
    // Without training only the current layer's output is live; with it, all of them.
    // Saturating: the largest architectures the limits allow, at the largest batch, pass
    // u64's range; such an estimate reads as "more than any machine has".
    let activations = if trains {
        per_example.saturating_mul(batch)
    } else {
        per_example.saturating_mul(batch) / 4
    };
    MemoryEstimate {
        batch_size: batch,
        weights_bytes: weights.saturating_mul(held + copies),
        gradients_bytes: trained.saturating_mul(master),
        optimizer_bytes: trained.saturating_mul(optimizer_states * master),
        activations_bytes: activations.saturating_mul(if trains { compute } else { held }),
        data_bytes: dataset_examples.saturating_mul(example_bytes(architecture)),
        output_bytes: weights.saturating_mul(stored),
        note,
    }
}

/// The bytes one example of the dataset takes: float32 features and an int64 label, or a
/// language model's int64 token ids.
fn example_bytes(architecture: &Architecture) -> u64 {
    if architecture.is_language_model() {
        architecture.input_features().saturating_mul(8)
    } else {
        architecture.input_features().saturating_mul(4) + 8
    }
}

/// Output elements per example of every layer the backward pass keeps (convolution,
/// norm, activation and pooling outputs, each counted once), for the built-in
/// architectures; `None` for a TorchScript program.
pub fn activation_elements(architecture: &Architecture) -> Option<u64> {
    let map = |channels: u32, height: u64, width: u64| u64::from(channels) * height * width;
    let halve = |size: u64| size.div_ceil(2);
    match architecture {
        Architecture::Mlp(mlp) => Some(
            u64::from(mlp.input_features)
                + mlp.hidden.iter().map(|&w| 2 * u64::from(w)).sum::<u64>()
                + u64::from(mlp.num_classes),
        ),
        Architecture::SmallCnn(cnn) => {
            let (mut height, mut width) = (u64::from(cnn.height), u64::from(cnn.width));
            let mut total = map(cnn.in_channels, height, width);
            for &channels in &cnn.channels {
                // Convolution and ReLU at full size, then the pooled map.
                total += 2 * map(channels, height, width);
                (height, width) = (height / 2, width / 2);
                total += map(channels, height, width);
            }
            Some(total + u64::from(cnn.num_classes))
        }
        Architecture::Resnet(resnet) => {
            let (mut height, mut width) = (u64::from(resnet.height), u64::from(resnet.width));
            let mut total = map(resnet.in_channels, height, width);
            // The stem: a stride-2 convolution, its norm and ReLU, then a stride-2 pool.
            (height, width) = (halve(height), halve(width));
            total += 3 * map(64, height, width);
            (height, width) = (halve(height), halve(width));
            total += map(64, height, width);
            for (stage, &blocks) in resnet_stages(resnet.depth)?.iter().enumerate() {
                let planes = 64u32 << stage;
                for block in 0..blocks {
                    if block == 0 && stage > 0 {
                        (height, width) = (halve(height), halve(width));
                        // The downsample's convolution and norm.
                        total += 2 * map(planes, height, width);
                    }
                    // conv, norm, ReLU, conv, norm, the sum, ReLU.
                    total += 7 * map(planes, height, width);
                }
            }
            Some(total + 512 + u64::from(resnet.num_classes))
        }
        Architecture::Vgg(vgg) => {
            let (mut height, mut width) = (u64::from(vgg.height), u64::from(vgg.width));
            let mut total = map(vgg.in_channels, height, width);
            let per_conv = if vgg.batch_norm { 3 } else { 2 };
            let mut current = vgg.in_channels;
            for layer in vgg.layers() {
                match layer {
                    VggLayer::Conv { channels, .. } => {
                        current = channels;
                        total += per_conv * map(channels, height, width);
                    }
                    VggLayer::Pool => {
                        (height, width) = (height / 2, width / 2);
                        total += map(current, height, width);
                    }
                }
            }
            // Adaptive pooling to 7×7, then two 4096-wide layers (linear, ReLU, dropout).
            Some(total + 512 * 49 + 2 * 3 * 4096 + u64::from(vgg.num_classes))
        }
        Architecture::Torchscript(_) => None,
        // Per sequence of the longest length: every layer's outputs at every position,
        // the attention probabilities that libtorch's math kernel keeps (heads × length
        // per position), and the logits with their log-softmax.
        Architecture::Llama(llama) => {
            let length = u64::from(llama.max_position_embeddings);
            let queries = u64::from(llama.num_attention_heads * llama.head_size());
            let keys = u64::from(llama.key_value_heads() * llama.head_size());
            let per_layer = 5 * u64::from(llama.hidden_size)
                + 2 * queries
                + 2 * keys
                + 4 * u64::from(llama.intermediate_size)
                + u64::from(llama.num_attention_heads) * length;
            Some(
                length
                    * (u64::from(llama.num_hidden_layers) * per_layer
                        + 2 * u64::from(llama.hidden_size)
                        + 2 * u64::from(llama.vocab_size)),
            )
        }
        Architecture::Gpt2(gpt2) => {
            let length = u64::from(gpt2.n_positions);
            let width = u64::from(gpt2.n_embd);
            let per_layer =
                9 * width + 2 * u64::from(gpt2.inner_size()) + u64::from(gpt2.n_head) * length;
            Some(
                length
                    * (u64::from(gpt2.n_layer) * per_layer
                        + 2 * width
                        + 2 * u64::from(gpt2.vocab_size)),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Mlp, plan_finetune, plan_scratch};

    fn mlp() -> Architecture {
        Architecture::Mlp(Mlp {
            input_features: 10,
            hidden: vec![20],
            num_classes: 3,
        })
    }

    fn hyperparameters(optimizer: Optimizer) -> Hyperparameters {
        let input = crate::HyperparameterInput {
            epochs: Some(1),
            batch_size: Some(8),
            optimizer: Some(optimizer),
            ..Default::default()
        };
        Hyperparameters::resolve("hp", &input).unwrap()
    }

    #[test]
    fn an_mlp_counts_every_part() {
        let architecture = mlp();
        let plan = plan_scratch(&architecture);
        let estimate = estimate(&architecture, &plan, &hyperparameters(Optimizer::Adam), 100);
        // 10·20 + 20 + 20·3 + 3 = 283 parameters, all trained.
        assert_eq!(estimate.weights_bytes, 283 * 4);
        assert_eq!(estimate.gradients_bytes, 283 * 4);
        assert_eq!(estimate.optimizer_bytes, 2 * 283 * 4);
        // (10 + 2·20 + 3) elements per example, 8 examples.
        assert_eq!(estimate.activations_bytes, 53 * 8 * 4);
        assert_eq!(estimate.data_bytes, 100 * (10 * 4 + 8));
        assert_eq!(estimate.output_bytes, estimate.weights_bytes);
    }

    #[test]
    fn frozen_tensors_need_no_gradients_and_sgd_keeps_one_state() {
        let architecture = mlp();
        let patterns =
            crate::TrainablePatterns::parse("t", &["fc.*".into()], &architecture.names()).unwrap();
        let plan = plan_finetune(&architecture, &patterns);
        let estimate = estimate(&architecture, &plan, &hyperparameters(Optimizer::Sgd), 0);
        assert_eq!(estimate.gradients_bytes, 63 * 4);
        assert_eq!(estimate.optimizer_bytes, 63 * 4);
    }

    #[test]
    fn the_largest_inputs_saturate_instead_of_overflowing() {
        let huge = Architecture::Vgg(crate::Vgg {
            depth: 16,
            in_channels: 1 << 16,
            height: 1 << 16,
            width: 1 << 16,
            num_classes: 1 << 16,
            batch_norm: true,
        });
        let plan = plan_scratch(&huge);
        let mut hyperparameters = hyperparameters(Optimizer::Adam);
        hyperparameters.batch_size = 1 << 20;
        let estimate = estimate(&huge, &plan, &hyperparameters, u64::MAX / 2);
        assert_eq!(estimate.total_bytes(), u64::MAX);
    }

    #[test]
    fn resnet_activations_follow_the_strides() {
        let small = Architecture::Resnet(crate::Resnet {
            depth: 18,
            in_channels: 3,
            height: 32,
            width: 32,
            num_classes: 10,
        });
        let large = Architecture::Resnet(crate::Resnet {
            height: 64,
            width: 64,
            ..match &small {
                Architecture::Resnet(resnet) => resnet.clone(),
                _ => unreachable!(),
            }
        });
        let (small, large) = (
            activation_elements(&small).unwrap(),
            activation_elements(&large).unwrap(),
        );
        // Four times the pixels: nearly four times the activations.
        assert!(large > 3 * small && large <= 4 * small, "{small} {large}");
    }
}

//! Conversions between the core types and their messages (architectures,
//! hyperparameters, progress, metrics, tensor statuses, adjustments, manifest tensors),
//! used by the coordinator, the worker and the CLI alike, so that each mapping is written
//! once. Messages only one side builds (jobs, models, plans) are converted there.

use crate::v1 as pb;
use heirloom_core::{
    Adjustment, Architecture, Gpt2, HyperparameterInput, Hyperparameters, Invalid, Llama, Metrics,
    Mlp, Optimizer, Precision, ProgramParameter, Progress, Resnet, SmallCnn, TensorStatus,
    Torchscript, Vgg, WeightDtype,
};

impl From<&Architecture> for pb::Architecture {
    fn from(architecture: &Architecture) -> Self {
        let kind = match architecture {
            Architecture::Mlp(mlp) => pb::architecture::Kind::Mlp(pb::Mlp {
                input_features: mlp.input_features,
                hidden: mlp.hidden.clone(),
                num_classes: mlp.num_classes,
            }),
            Architecture::SmallCnn(cnn) => pb::architecture::Kind::SmallCnn(pb::SmallCnn {
                in_channels: cnn.in_channels,
                height: cnn.height,
                width: cnn.width,
                channels: cnn.channels.clone(),
                num_classes: cnn.num_classes,
            }),
            Architecture::Resnet(resnet) => pb::architecture::Kind::Resnet(pb::Resnet {
                depth: resnet.depth,
                in_channels: resnet.in_channels,
                height: resnet.height,
                width: resnet.width,
                num_classes: resnet.num_classes,
            }),
            Architecture::Vgg(vgg) => pb::architecture::Kind::Vgg(pb::Vgg {
                depth: vgg.depth,
                in_channels: vgg.in_channels,
                height: vgg.height,
                width: vgg.width,
                num_classes: vgg.num_classes,
                batch_norm: vgg.batch_norm,
            }),
            Architecture::Torchscript(script) => {
                pb::architecture::Kind::Torchscript(pb::Torchscript {
                    program_sha256: script.program_sha256.clone(),
                    input_shape: script.input_shape.clone(),
                    output_size: script.output_size,
                    parameters: script
                        .parameters
                        .iter()
                        .map(|p| pb::ProgramParameter {
                            name: p.name.clone(),
                            shape: p.shape.iter().map(|&d| d as u64).collect(),
                        })
                        .collect(),
                    head: script.head.unwrap_or_default(),
                })
            }
            Architecture::Llama(llama) => pb::architecture::Kind::Llama(pb::Llama {
                vocab_size: llama.vocab_size,
                hidden_size: llama.hidden_size,
                intermediate_size: llama.intermediate_size,
                num_hidden_layers: llama.num_hidden_layers,
                num_attention_heads: llama.num_attention_heads,
                num_key_value_heads: llama.num_key_value_heads,
                head_dim: llama.head_dim,
                max_position_embeddings: llama.max_position_embeddings,
                rms_norm_eps: Some(llama.rms_norm_eps),
                rope_theta: Some(llama.rope_theta),
                tie_word_embeddings: llama.tie_word_embeddings,
                attention_bias: llama.attention_bias,
                mlp_bias: llama.mlp_bias,
                attention_dropout: Some(llama.attention_dropout),
                dtype: pb::WeightDtype::from(llama.dtype) as i32,
            }),
            Architecture::Gpt2(gpt2) => pb::architecture::Kind::Gpt2(pb::Gpt2 {
                vocab_size: gpt2.vocab_size,
                n_positions: gpt2.n_positions,
                n_embd: gpt2.n_embd,
                n_layer: gpt2.n_layer,
                n_head: gpt2.n_head,
                n_inner: gpt2.n_inner,
                layer_norm_epsilon: Some(gpt2.layer_norm_epsilon),
                tie_word_embeddings: Some(gpt2.tie_word_embeddings),
                resid_pdrop: Some(gpt2.resid_pdrop),
                embd_pdrop: Some(gpt2.embd_pdrop),
                attn_pdrop: Some(gpt2.attn_pdrop),
                dtype: pb::WeightDtype::from(gpt2.dtype) as i32,
            }),
        };
        pb::Architecture { kind: Some(kind) }
    }
}

impl pb::Architecture {
    /// The spec this message names, checked; `field` is its path in the request.
    pub fn to_core(&self, field: &str) -> Result<Architecture, Invalid> {
        let architecture = match &self.kind {
            None => {
                return Err(Invalid::new(
                    field,
                    "names no architecture: set `mlp`, `small_cnn`, `resnet`, `vgg`, `torchscript`, \
                     `llama` or `gpt2`",
                ));
            }
            Some(pb::architecture::Kind::Mlp(mlp)) => Architecture::Mlp(Mlp {
                input_features: mlp.input_features,
                hidden: mlp.hidden.clone(),
                num_classes: mlp.num_classes,
            }),
            Some(pb::architecture::Kind::SmallCnn(cnn)) => Architecture::SmallCnn(SmallCnn {
                in_channels: cnn.in_channels,
                height: cnn.height,
                width: cnn.width,
                channels: cnn.channels.clone(),
                num_classes: cnn.num_classes,
            }),
            Some(pb::architecture::Kind::Resnet(resnet)) => Architecture::Resnet(Resnet {
                depth: resnet.depth,
                in_channels: resnet.in_channels,
                height: resnet.height,
                width: resnet.width,
                num_classes: resnet.num_classes,
            }),
            Some(pb::architecture::Kind::Vgg(vgg)) => Architecture::Vgg(Vgg {
                depth: vgg.depth,
                in_channels: vgg.in_channels,
                height: vgg.height,
                width: vgg.width,
                num_classes: vgg.num_classes,
                batch_norm: vgg.batch_norm,
            }),
            Some(pb::architecture::Kind::Torchscript(script)) => {
                Architecture::Torchscript(Torchscript {
                    program_sha256: script.program_sha256.clone(),
                    input_shape: script.input_shape.clone(),
                    output_size: script.output_size,
                    parameters: script
                        .parameters
                        .iter()
                        .map(|p| ProgramParameter {
                            name: p.name.clone(),
                            shape: p.shape.iter().map(|&d| d as usize).collect(),
                        })
                        .collect(),
                    head: (script.head != 0).then_some(script.head),
                })
            }
            Some(pb::architecture::Kind::Llama(llama)) => Architecture::Llama(Llama {
                vocab_size: llama.vocab_size,
                hidden_size: llama.hidden_size,
                intermediate_size: llama.intermediate_size,
                num_hidden_layers: llama.num_hidden_layers,
                num_attention_heads: llama.num_attention_heads,
                num_key_value_heads: llama.num_key_value_heads,
                head_dim: llama.head_dim,
                max_position_embeddings: llama.max_position_embeddings,
                rms_norm_eps: llama.rms_norm_eps.unwrap_or(Llama::DEFAULT_RMS_NORM_EPS),
                rope_theta: llama.rope_theta.unwrap_or(Llama::DEFAULT_ROPE_THETA),
                tie_word_embeddings: llama.tie_word_embeddings,
                attention_bias: llama.attention_bias,
                mlp_bias: llama.mlp_bias,
                attention_dropout: llama.attention_dropout.unwrap_or(0.0),
                dtype: weight_dtype(&format!("{field}.llama.dtype"), llama.dtype)?,
            }),
            Some(pb::architecture::Kind::Gpt2(gpt2)) => Architecture::Gpt2(Gpt2 {
                vocab_size: gpt2.vocab_size,
                n_positions: gpt2.n_positions,
                n_embd: gpt2.n_embd,
                n_layer: gpt2.n_layer,
                n_head: gpt2.n_head,
                n_inner: gpt2.n_inner,
                layer_norm_epsilon: gpt2
                    .layer_norm_epsilon
                    .unwrap_or(Gpt2::DEFAULT_LAYER_NORM_EPSILON),
                tie_word_embeddings: gpt2.tie_word_embeddings.unwrap_or(true),
                resid_pdrop: gpt2.resid_pdrop.unwrap_or(Gpt2::DEFAULT_DROPOUT),
                embd_pdrop: gpt2.embd_pdrop.unwrap_or(Gpt2::DEFAULT_DROPOUT),
                attn_pdrop: gpt2.attn_pdrop.unwrap_or(Gpt2::DEFAULT_DROPOUT),
                dtype: weight_dtype(&format!("{field}.gpt2.dtype"), gpt2.dtype)?,
            }),
        };
        architecture.validate(field)?;
        Ok(architecture)
    }
}

impl From<Precision> for pb::Precision {
    fn from(precision: Precision) -> Self {
        match precision {
            Precision::Fp32 => pb::Precision::Fp32,
            Precision::Bf16 => pb::Precision::Bf16,
            Precision::Bf16Mixed => pb::Precision::Bf16Mixed,
            Precision::Fp16Mixed => pb::Precision::Fp16Mixed,
        }
    }
}

impl From<WeightDtype> for pb::WeightDtype {
    fn from(dtype: WeightDtype) -> Self {
        match dtype {
            WeightDtype::Float32 => pb::WeightDtype::Float32,
            WeightDtype::Bfloat16 => pb::WeightDtype::Bfloat16,
            WeightDtype::Float16 => pb::WeightDtype::Float16,
        }
    }
}

/// A weight dtype as a request gives it (unspecified: float32); `field` is its path.
fn weight_dtype(field: &str, value: i32) -> Result<WeightDtype, Invalid> {
    match pb::WeightDtype::try_from(value) {
        Ok(pb::WeightDtype::Unspecified | pb::WeightDtype::Float32) => Ok(WeightDtype::Float32),
        Ok(pb::WeightDtype::Bfloat16) => Ok(WeightDtype::Bfloat16),
        Ok(pb::WeightDtype::Float16) => Ok(WeightDtype::Float16),
        Err(_) => Err(Invalid::new(
            field,
            format!("{value} names no weight dtype: use FLOAT32, BFLOAT16 or FLOAT16"),
        )),
    }
}

/// Every field set: the values a job really uses.
impl From<&Hyperparameters> for pb::Hyperparameters {
    fn from(hyperparameters: &Hyperparameters) -> Self {
        pb::Hyperparameters {
            epochs: Some(hyperparameters.epochs),
            batch_size: Some(hyperparameters.batch_size),
            learning_rate: Some(hyperparameters.learning_rate),
            optimizer: match hyperparameters.optimizer {
                Optimizer::Sgd => pb::Optimizer::Sgd,
                Optimizer::Adam => pb::Optimizer::Adam,
            } as i32,
            seed: hyperparameters.seed,
            holdout_fraction: Some(hyperparameters.holdout_fraction),
            precision: pb::Precision::from(hyperparameters.precision) as i32,
        }
    }
}

impl pb::Hyperparameters {
    /// The settings with unset fields taking their defaults, checked (a set field out of
    /// range is refused, never replaced); `field` is their path in the request.
    pub fn resolve(&self, field: &str) -> Result<Hyperparameters, Invalid> {
        let optimizer = match pb::Optimizer::try_from(self.optimizer) {
            Ok(pb::Optimizer::Unspecified) => None,
            Ok(pb::Optimizer::Sgd) => Some(Optimizer::Sgd),
            Ok(pb::Optimizer::Adam) => Some(Optimizer::Adam),
            Err(_) => {
                return Err(Invalid::new(
                    format!("{field}.optimizer"),
                    format!("{} is not an optimizer", self.optimizer),
                ));
            }
        };
        let precision = match pb::Precision::try_from(self.precision) {
            Ok(pb::Precision::Unspecified) => None,
            Ok(pb::Precision::Fp32) => Some(Precision::Fp32),
            Ok(pb::Precision::Bf16) => Some(Precision::Bf16),
            Ok(pb::Precision::Bf16Mixed) => Some(Precision::Bf16Mixed),
            Ok(pb::Precision::Fp16Mixed) => Some(Precision::Fp16Mixed),
            Err(_) => {
                return Err(Invalid::new(
                    format!("{field}.precision"),
                    format!("{} is not a precision", self.precision),
                ));
            }
        };
        let input = HyperparameterInput {
            epochs: self.epochs,
            batch_size: self.batch_size,
            learning_rate: self.learning_rate,
            optimizer,
            seed: self.seed,
            holdout_fraction: self.holdout_fraction,
            precision,
        };
        Hyperparameters::resolve(field, &input)
    }
}

impl From<&Progress> for pb::Progress {
    fn from(progress: &Progress) -> Self {
        pb::Progress {
            epoch: progress.epoch,
            epochs: progress.epochs,
            step: progress.step,
            total_steps: progress.total_steps,
            loss: progress.loss,
            accuracy: progress.accuracy,
            steps_per_second: progress.steps_per_second,
        }
    }
}

impl From<&pb::Progress> for Progress {
    fn from(progress: &pb::Progress) -> Self {
        Progress {
            epoch: progress.epoch,
            epochs: progress.epochs,
            step: progress.step,
            total_steps: progress.total_steps,
            loss: progress.loss,
            accuracy: progress.accuracy,
            steps_per_second: progress.steps_per_second,
        }
    }
}

impl From<&Metrics> for pb::Metrics {
    fn from(metrics: &Metrics) -> Self {
        pb::Metrics {
            holdout_accuracy: metrics.holdout_accuracy,
            final_loss: metrics.final_loss,
            train_accuracy: metrics.train_accuracy,
            steps: metrics.steps,
            steps_per_second: metrics.steps_per_second,
            holdout_loss: metrics.holdout_loss,
            holdout_perplexity: metrics.holdout_perplexity(),
        }
    }
}

impl pb::Metrics {
    /// The metrics, checked: accuracies are fractions.
    pub fn to_core(&self, field: &str) -> Result<Metrics, Invalid> {
        let fraction = |value: f64| (0.0..=1.0).contains(&value);
        if !fraction(self.holdout_accuracy) || !fraction(self.train_accuracy) {
            return Err(Invalid::new(field, "accuracies must lie in [0, 1]"));
        }
        let metrics = Metrics {
            holdout_accuracy: self.holdout_accuracy,
            final_loss: self.final_loss,
            train_accuracy: self.train_accuracy,
            steps: self.steps,
            steps_per_second: self.steps_per_second,
            // The perplexity follows from the loss; what a worker sends for it is not kept.
            holdout_loss: self.holdout_loss,
        };
        metrics.check(field)?;
        Ok(metrics)
    }
}

impl From<TensorStatus> for pb::TensorStatus {
    fn from(status: TensorStatus) -> Self {
        match status {
            TensorStatus::Inherited => pb::TensorStatus::Inherited,
            TensorStatus::Trained => pb::TensorStatus::Trained,
            TensorStatus::New => pb::TensorStatus::New,
            TensorStatus::Interpolated => pb::TensorStatus::Interpolated,
        }
    }
}

impl pb::TensorStatus {
    /// The status, checked: `UNSPECIFIED` is refused, and so is a number this contract
    /// does not know (prost's getter reads it as `UNSPECIFIED`); `field` is its path in
    /// the request.
    pub fn to_core(self, field: &str) -> Result<TensorStatus, Invalid> {
        match self {
            pb::TensorStatus::Unspecified => Err(Invalid::new(field, "is not a tensor status")),
            pb::TensorStatus::Inherited => Ok(TensorStatus::Inherited),
            pb::TensorStatus::Trained => Ok(TensorStatus::Trained),
            pb::TensorStatus::New => Ok(TensorStatus::New),
            pb::TensorStatus::Interpolated => Ok(TensorStatus::Interpolated),
        }
    }
}

impl From<Adjustment> for pb::Adjustment {
    fn from(adjustment: Adjustment) -> Self {
        let kind = match adjustment {
            Adjustment::Interpolate { alpha } => pb::adjustment::Kind::Interpolate(alpha),
            Adjustment::Scale { factor } => pb::adjustment::Kind::Scale(factor),
            Adjustment::WiseFt { alpha } => pb::adjustment::Kind::WiseFt(alpha),
        };
        pb::Adjustment { kind: Some(kind) }
    }
}

impl pb::Adjustment {
    /// The step this message names; `None` when it names none.
    pub fn to_core(&self) -> Option<Adjustment> {
        self.kind.map(|kind| match kind {
            pb::adjustment::Kind::Interpolate(alpha) => Adjustment::Interpolate { alpha },
            pb::adjustment::Kind::Scale(factor) => Adjustment::Scale { factor },
            pb::adjustment::Kind::WiseFt(alpha) => Adjustment::WiseFt { alpha },
        })
    }
}

/// A hashed tensor of a file, as a manifest names it.
impl From<heirloom_core::HashedTensor> for pb::ManifestTensor {
    fn from(tensor: heirloom_core::HashedTensor) -> Self {
        pb::ManifestTensor {
            name: tensor.info.name,
            dtype: tensor.info.dtype,
            shape: tensor.info.shape.iter().map(|&d| d as u64).collect(),
            sha256: tensor.sha256,
        }
    }
}

impl From<heirloom_core::JobKind> for pb::JobKind {
    fn from(kind: heirloom_core::JobKind) -> Self {
        use heirloom_core::JobKind;
        match kind {
            JobKind::Train => pb::JobKind::Train,
            JobKind::Finetune => pb::JobKind::Finetune,
            JobKind::Transfer => pb::JobKind::Transfer,
            JobKind::Direct => pb::JobKind::Direct,
            JobKind::Compose => pb::JobKind::Compose,
        }
    }
}

impl pb::JobKind {
    /// The core's kind; `None` for `JOB_KIND_UNSPECIFIED`.
    pub fn to_core(self) -> Option<heirloom_core::JobKind> {
        use heirloom_core::JobKind;
        match self {
            pb::JobKind::Unspecified => None,
            pb::JobKind::Train => Some(JobKind::Train),
            pb::JobKind::Finetune => Some(JobKind::Finetune),
            pb::JobKind::Transfer => Some(JobKind::Transfer),
            pb::JobKind::Direct => Some(JobKind::Direct),
            pb::JobKind::Compose => Some(JobKind::Compose),
        }
    }
}

impl From<heirloom_core::Relation> for pb::Relation {
    fn from(relation: heirloom_core::Relation) -> Self {
        use heirloom_core::Relation;
        match relation {
            Relation::Finetune => pb::Relation::Finetune,
            Relation::Transfer => pb::Relation::Transfer,
            Relation::Direct => pb::Relation::Direct,
            Relation::Module => pb::Relation::Module,
        }
    }
}

impl pb::Relation {
    /// The core's relation; `None` for `RELATION_UNSPECIFIED`.
    pub fn to_core(self) -> Option<heirloom_core::Relation> {
        use heirloom_core::Relation;
        match self {
            pb::Relation::Unspecified => None,
            pb::Relation::Finetune => Some(Relation::Finetune),
            pb::Relation::Transfer => Some(Relation::Transfer),
            pb::Relation::Direct => Some(Relation::Direct),
            pb::Relation::Module => Some(Relation::Module),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensor_statuses_round_trip_and_unspecified_is_refused() {
        for status in [
            TensorStatus::Inherited,
            TensorStatus::Trained,
            TensorStatus::New,
            TensorStatus::Interpolated,
        ] {
            assert_eq!(pb::TensorStatus::from(status).to_core("status"), Ok(status));
        }
        let unknown = pb::TensorProvenance {
            status: 99,
            ..Default::default()
        };
        for message in [pb::TensorStatus::Unspecified, unknown.status()] {
            let err = message.to_core("output.tensors[0].status").unwrap_err();
            assert_eq!(err.field, "output.tensors[0].status");
        }
    }

    #[test]
    fn hyperparameters_unset_take_defaults_and_zero_is_refused() {
        let resolved = pb::Hyperparameters::default().resolve("hp").unwrap();
        let written_out = pb::Hyperparameters::from(&resolved);
        assert_eq!(written_out.epochs, Some(10));
        assert_eq!(written_out.batch_size, Some(64));
        assert_eq!(written_out.resolve("hp"), Ok(resolved));
        let zero = pb::Hyperparameters {
            epochs: Some(0),
            ..Default::default()
        };
        assert_eq!(zero.resolve("hp").unwrap_err().field, "hp.epochs");
    }

    #[test]
    fn adjustments_round_trip() {
        for adjustment in [
            Adjustment::Interpolate { alpha: 0.25 },
            Adjustment::Scale { factor: 2.0 },
            Adjustment::WiseFt { alpha: 0.5 },
        ] {
            assert_eq!(pb::Adjustment::from(adjustment).to_core(), Some(adjustment));
        }
        assert_eq!(pb::Adjustment::default().to_core(), None);
    }
}

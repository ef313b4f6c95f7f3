//! Conversions between the shared spec types and their messages, used by the
//! coordinator, the worker and the CLI alike.

use crate::v1 as pb;
use heirloom_spec::{
    Architecture, Hyperparameters, Invalid, Metrics, Mlp, Optimizer, ProgramParameter, Progress,
    Resnet, SmallCnn, Torchscript, Vgg,
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
        };
        pb::Architecture { kind: Some(kind) }
    }
}

impl pb::Architecture {
    /// The spec this message names, checked; `field` is its path in the request.
    pub fn to_spec(&self, field: &str) -> Result<Architecture, Invalid> {
        let architecture = match &self.kind {
            None => {
                return Err(Invalid::new(
                    field,
                    "names no architecture: set `mlp`, `small_cnn`, `resnet`, `vgg` or `torchscript`",
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
        };
        architecture.validate(field)?;
        Ok(architecture)
    }
}

impl From<&Hyperparameters> for pb::Hyperparameters {
    fn from(hyperparameters: &Hyperparameters) -> Self {
        pb::Hyperparameters {
            epochs: hyperparameters.epochs,
            batch_size: hyperparameters.batch_size,
            learning_rate: hyperparameters.learning_rate,
            optimizer: match hyperparameters.optimizer {
                Optimizer::Sgd => pb::Optimizer::Sgd,
                Optimizer::Adam => pb::Optimizer::Adam,
            } as i32,
            seed: hyperparameters.seed,
            holdout_fraction: hyperparameters.holdout_fraction,
        }
    }
}

impl pb::Hyperparameters {
    /// The settings with defaults filled in, checked; `field` is their path in the request.
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
        Hyperparameters::resolve(
            field,
            self.epochs,
            self.batch_size,
            self.learning_rate,
            optimizer,
            self.seed,
            self.holdout_fraction,
        )
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
        }
    }
}

impl pb::Metrics {
    /// The metrics, checked: accuracies are fractions.
    pub fn to_spec(&self, field: &str) -> Result<Metrics, Invalid> {
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
        };
        metrics.check(field)?;
        Ok(metrics)
    }
}

/// A hashed tensor of a file, as a manifest names it.
impl From<heirloom_spec::HashedTensor> for pb::ManifestTensor {
    fn from(tensor: heirloom_spec::HashedTensor) -> Self {
        pb::ManifestTensor {
            name: tensor.info.name,
            dtype: tensor.info.dtype,
            shape: tensor.info.shape.iter().map(|&d| d as u64).collect(),
            sha256: tensor.sha256,
        }
    }
}

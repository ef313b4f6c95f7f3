//! Built-in architectures and the state-dict names and shapes of their parameters.

use crate::Invalid;
use serde::{Deserialize, Serialize};

/// The name prefix of every architecture's classification head.
pub const HEAD: &str = "fc";

/// The largest width, channel count or input size a built-in architecture accepts.
const MAX_WIDTH: u32 = 1 << 16;
const MAX_LAYERS: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Architecture {
    Mlp(Mlp),
    SmallCnn(SmallCnn),
}

/// Linear layers `hidden.{i}` with ReLU between them, then the head `fc`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mlp {
    pub input_features: u32,
    pub hidden: Vec<u32>,
    pub num_classes: u32,
}

/// Blocks `conv.{i}` of 3x3 convolution (padding 1) + ReLU + 2x2 max-pool, global
/// average pooling, then the head `fc`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmallCnn {
    pub in_channels: u32,
    pub height: u32,
    pub width: u32,
    pub channels: Vec<u32>,
    pub num_classes: u32,
}

impl Architecture {
    /// Checks every size; `field` is the path of this spec in the request.
    pub fn validate(&self, field: &str) -> Result<(), Invalid> {
        match self {
            Architecture::Mlp(mlp) => {
                let field = format!("{field}.mlp");
                positive(&format!("{field}.input_features"), mlp.input_features)?;
                layers(&format!("{field}.hidden"), &mlp.hidden)?;
                positive(&format!("{field}.num_classes"), mlp.num_classes)
            }
            Architecture::SmallCnn(cnn) => {
                let field = format!("{field}.small_cnn");
                positive(&format!("{field}.in_channels"), cnn.in_channels)?;
                positive(&format!("{field}.height"), cnn.height)?;
                positive(&format!("{field}.width"), cnn.width)?;
                layers(&format!("{field}.channels"), &cnn.channels)?;
                if cnn.channels.is_empty() {
                    return Err(Invalid::new(
                        format!("{field}.channels"),
                        "needs at least one convolution block",
                    ));
                }
                positive(&format!("{field}.num_classes"), cnn.num_classes)
            }
        }
    }

    /// The length of one input row.
    pub fn input_features(&self) -> u64 {
        match self {
            Architecture::Mlp(mlp) => u64::from(mlp.input_features),
            Architecture::SmallCnn(cnn) => {
                u64::from(cnn.in_channels) * u64::from(cnn.height) * u64::from(cnn.width)
            }
        }
    }

    pub fn num_classes(&self) -> u32 {
        match self {
            Architecture::Mlp(mlp) => mlp.num_classes,
            Architecture::SmallCnn(cnn) => cnn.num_classes,
        }
    }

    /// The same architecture with a head of another output size.
    pub fn with_num_classes(&self, num_classes: u32) -> Architecture {
        let mut changed = self.clone();
        match &mut changed {
            Architecture::Mlp(mlp) => mlp.num_classes = num_classes,
            Architecture::SmallCnn(cnn) => cnn.num_classes = num_classes,
        }
        changed
    }

    /// The name prefixes of the blocks before the head, in forward order.
    pub fn blocks(&self) -> Vec<String> {
        match self {
            Architecture::Mlp(mlp) => (0..mlp.hidden.len())
                .map(|i| format!("hidden.{i}"))
                .collect(),
            Architecture::SmallCnn(cnn) => (0..cnn.channels.len())
                .map(|i| format!("conv.{i}"))
                .collect(),
        }
    }

    /// Every parameter's state-dict name and shape, in forward order.
    pub fn parameters(&self) -> Vec<(String, Vec<usize>)> {
        let mut parameters = Vec::new();
        let mut linear = |name: String, inputs: u32, outputs: u32| {
            parameters.push((
                format!("{name}.weight"),
                vec![outputs as usize, inputs as usize],
            ));
            parameters.push((format!("{name}.bias"), vec![outputs as usize]));
        };
        match self {
            Architecture::Mlp(mlp) => {
                let mut inputs = mlp.input_features;
                for (i, &width) in mlp.hidden.iter().enumerate() {
                    linear(format!("hidden.{i}"), inputs, width);
                    inputs = width;
                }
                linear(HEAD.to_string(), inputs, mlp.num_classes);
            }
            Architecture::SmallCnn(cnn) => {
                let mut inputs = cnn.in_channels;
                for (i, &channels) in cnn.channels.iter().enumerate() {
                    parameters.push((
                        format!("conv.{i}.weight"),
                        vec![channels as usize, inputs as usize, 3, 3],
                    ));
                    parameters.push((format!("conv.{i}.bias"), vec![channels as usize]));
                    inputs = channels;
                }
                parameters.push((
                    format!("{HEAD}.weight"),
                    vec![cnn.num_classes as usize, inputs as usize],
                ));
                parameters.push((format!("{HEAD}.bias"), vec![cnn.num_classes as usize]));
            }
        }
        parameters
    }
}

fn positive(field: &str, value: u32) -> Result<(), Invalid> {
    if value == 0 {
        return Err(Invalid::new(field, "must be greater than 0"));
    }
    if value > MAX_WIDTH {
        return Err(Invalid::new(field, format!("must be at most {MAX_WIDTH}")));
    }
    Ok(())
}

fn layers(field: &str, widths: &[u32]) -> Result<(), Invalid> {
    if widths.len() > MAX_LAYERS {
        return Err(Invalid::new(field, format!("at most {MAX_LAYERS} layers")));
    }
    for (i, &width) in widths.iter().enumerate() {
        positive(&format!("{field}[{i}]"), width)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mlp(input_features: u32, hidden: Vec<u32>, num_classes: u32) -> Architecture {
        Architecture::Mlp(Mlp {
            input_features,
            hidden,
            num_classes,
        })
    }

    #[test]
    fn mlp_parameters_follow_pytorch_names() {
        let names: Vec<_> = mlp(64, vec![32, 16], 10)
            .parameters()
            .into_iter()
            .map(|(name, shape)| format!("{name}{shape:?}"))
            .collect();
        assert_eq!(
            names,
            [
                "hidden.0.weight[32, 64]",
                "hidden.0.bias[32]",
                "hidden.1.weight[16, 32]",
                "hidden.1.bias[16]",
                "fc.weight[10, 16]",
                "fc.bias[10]",
            ]
        );
    }

    #[test]
    fn invalid_sizes_name_the_field() {
        let check = |arch: Architecture, field: &str| {
            assert_eq!(arch.validate("architecture").unwrap_err().field, field);
        };
        check(mlp(0, vec![8], 2), "architecture.mlp.input_features");
        check(mlp(4, vec![8, 0], 2), "architecture.mlp.hidden[1]");
        check(mlp(4, vec![8], 0), "architecture.mlp.num_classes");
        check(
            Architecture::SmallCnn(SmallCnn {
                in_channels: 1,
                height: 8,
                width: 8,
                channels: vec![],
                num_classes: 3,
            }),
            "architecture.small_cnn.channels",
        );
    }

    #[test]
    fn json_form_is_externally_tagged() {
        let arch: Architecture = serde_json::from_str(
            r#"{"mlp": {"input_features": 4, "hidden": [3], "num_classes": 2}}"#,
        )
        .unwrap();
        assert_eq!(arch, mlp(4, vec![3], 2));
    }
}

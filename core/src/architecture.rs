//! Built-in architectures and the state-dict names, shapes and initialisation of their
//! tensors. ResNet and VGG follow torchvision's `state_dict()` keys exactly, buffers
//! (batch-norm statistics) included, so weights move between PyTorch and Heirloom as they
//! are; the language models (`language_model.rs`) follow Hugging Face transformers'.

use crate::Invalid;
pub use crate::language_model::{Gpt2, Llama};
use serde::{Deserialize, Serialize};

/// The largest width, channel count or input size a built-in architecture accepts.
const MAX_WIDTH: u32 = 1 << 16;
const MAX_LAYERS: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Architecture {
    Mlp(Mlp),
    SmallCnn(SmallCnn),
    Resnet(Resnet),
    Vgg(Vgg),
    Torchscript(Torchscript),
    Llama(Llama),
    Gpt2(Gpt2),
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

/// torchvision's ResNet-18 or ResNet-34 (BasicBlock), head `fc`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resnet {
    pub depth: u32,
    pub in_channels: u32,
    pub height: u32,
    pub width: u32,
    pub num_classes: u32,
}

/// torchvision's VGG-11 or VGG-16, optionally with batch norm, head `classifier.6`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vgg {
    pub depth: u32,
    pub in_channels: u32,
    pub height: u32,
    pub width: u32,
    pub num_classes: u32,
    #[serde(default)]
    pub batch_norm: bool,
}

/// A TorchScript module exported from PyTorch (`torch.jit.script` or `trace`), with an
/// optional new linear head `head` on its output. The program is stored by its sha256
/// and never changes; its parameters are the tensors Heirloom tracks, by their
/// `named_parameters()` names. It always runs in evaluation mode, so batch-norm
/// statistics and other buffers stay as exported, part of the program.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Torchscript {
    /// Filled in by the coordinator when the program is imported.
    #[serde(default)]
    pub program_sha256: String,
    /// The shape of one example, without the batch dimension (`[3, 32, 32]`).
    pub input_shape: Vec<u32>,
    /// The length of the program's output for one example.
    pub output_size: u32,
    /// The program's parameters; filled in by the coordinator from the imported weights.
    #[serde(default)]
    pub parameters: Vec<ProgramParameter>,
    /// Outputs of a new linear head on the program's output, if any.
    #[serde(default)]
    pub head: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProgramParameter {
    pub name: String,
    pub shape: Vec<usize>,
}

/// How a fresh tensor starts: torchvision's initialisation for each layer kind.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    /// Uniform in ±1/sqrt(fan_in): PyTorch's default for Linear and Conv2d.
    UniformFanIn(usize),
    /// Kaiming normal, fan-out mode, ReLU gain: std sqrt(2 / fan_out).
    KaimingFanOut(usize),
    Normal(f64),
    Zeros,
    Ones,
    /// As the TorchScript program holds it.
    FromProgram,
}

/// One entry of a model's state dict.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub init: Init,
    /// A buffer (batch-norm statistics) rather than a parameter: never given gradients.
    pub buffer: bool,
    /// As safetensors names it: `f32`, `bf16` or `f16` (a language model's weights), or
    /// `i64` for `num_batches_tracked`.
    pub dtype: &'static str,
}

/// The VGG configurations: output channels of each 3x3 convolution, 0 for a max-pool.
fn vgg_layers(depth: u32) -> Option<&'static [u32]> {
    match depth {
        11 => Some(&[64, 0, 128, 0, 256, 256, 0, 512, 512, 0, 512, 512, 0]),
        16 => Some(&[
            64, 64, 0, 128, 128, 0, 256, 256, 256, 0, 512, 512, 512, 0, 512, 512, 512, 0,
        ]),
        _ => None,
    }
}

/// Residual blocks per stage of a ResNet.
pub fn resnet_stages(depth: u32) -> Option<[usize; 4]> {
    match depth {
        18 => Some([2, 2, 2, 2]),
        34 => Some([3, 4, 6, 3]),
        _ => None,
    }
}

/// One VGG feature layer as torchvision numbers them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VggLayer {
    /// A convolution at `features.{index}`, its batch norm (if any) right after it.
    Conv {
        index: usize,
        channels: u32,
    },
    Pool,
}

impl Vgg {
    pub fn layers(&self) -> Vec<VggLayer> {
        let mut index = 0;
        let step = if self.batch_norm { 3 } else { 2 };
        vgg_layers(self.depth)
            .unwrap_or_default()
            .iter()
            .map(|&channels| {
                if channels == 0 {
                    index += 1;
                    VggLayer::Pool
                } else {
                    let layer = VggLayer::Conv { index, channels };
                    index += step;
                    layer
                }
            })
            .collect()
    }
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
                image(&field, cnn.in_channels, cnn.height, cnn.width)?;
                layers(&format!("{field}.channels"), &cnn.channels)?;
                if cnn.channels.is_empty() {
                    return Err(Invalid::new(
                        format!("{field}.channels"),
                        "needs at least one convolution block",
                    ));
                }
                positive(&format!("{field}.num_classes"), cnn.num_classes)
            }
            Architecture::Resnet(resnet) => {
                let field = format!("{field}.resnet");
                if resnet_stages(resnet.depth).is_none() {
                    return Err(Invalid::new(format!("{field}.depth"), "must be 18 or 34"));
                }
                image(&field, resnet.in_channels, resnet.height, resnet.width)?;
                positive(&format!("{field}.num_classes"), resnet.num_classes)
            }
            Architecture::Vgg(vgg) => {
                let field = format!("{field}.vgg");
                if vgg_layers(vgg.depth).is_none() {
                    return Err(Invalid::new(format!("{field}.depth"), "must be 11 or 16"));
                }
                image(&field, vgg.in_channels, vgg.height, vgg.width)?;
                if vgg.height < 32 || vgg.width < 32 {
                    return Err(Invalid::new(
                        format!("{field}.height"),
                        "VGG halves the image five times: height and width must be at least 32",
                    ));
                }
                positive(&format!("{field}.num_classes"), vgg.num_classes)
            }
            Architecture::Torchscript(script) => {
                let field = format!("{field}.torchscript");
                if script.input_shape.is_empty() || script.input_shape.len() > 4 {
                    return Err(Invalid::new(
                        format!("{field}.input_shape"),
                        "give one example's shape, 1 to 4 dimensions, such as [3, 32, 32]",
                    ));
                }
                for (i, &d) in script.input_shape.iter().enumerate() {
                    positive(&format!("{field}.input_shape[{i}]"), d)?;
                }
                let values = script
                    .input_shape
                    .iter()
                    .try_fold(1u64, |product, &d| product.checked_mul(u64::from(d)));
                if values.is_none_or(|values| values > u64::from(u32::MAX)) {
                    return Err(Invalid::new(
                        format!("{field}.input_shape"),
                        "one example may have at most 2^32 values",
                    ));
                }
                // Set by the coordinator from an imported program; a job may only name
                // one by its hash, which is never a path.
                if !script.program_sha256.is_empty() {
                    crate::limits::check_sha256(
                        &format!("{field}.program_sha256"),
                        &script.program_sha256,
                    )?;
                }
                crate::limits::check_count(
                    &format!("{field}.parameters"),
                    script.parameters.len(),
                    crate::limits::MAX_TENSORS,
                )?;
                for (i, parameter) in script.parameters.iter().enumerate() {
                    let shape: Vec<u64> = parameter.shape.iter().map(|&d| d as u64).collect();
                    crate::limits::check_tensor(
                        &format!("{field}.parameters[{i}]"),
                        &parameter.name,
                        &shape,
                    )?;
                }
                positive(&format!("{field}.output_size"), script.output_size)?;
                if let Some(head) = script.head {
                    positive(&format!("{field}.head"), head)?;
                }
                Ok(())
            }
            Architecture::Llama(llama) => llama.validate(&format!("{field}.llama")),
            Architecture::Gpt2(gpt2) => gpt2.validate(&format!("{field}.gpt2")),
        }
    }

    /// How the weights are stored: float32, or what a language model's spec says.
    pub fn weight_dtype(&self) -> crate::WeightDtype {
        match self {
            Architecture::Llama(llama) => llama.dtype,
            Architecture::Gpt2(gpt2) => gpt2.dtype,
            Architecture::Mlp(_)
            | Architecture::SmallCnn(_)
            | Architecture::Resnet(_)
            | Architecture::Vgg(_)
            | Architecture::Torchscript(_) => crate::WeightDtype::Float32,
        }
    }

    /// Whether this is a language model: its input rows are token ids, its outputs a
    /// distribution over its vocabulary at every position.
    pub fn is_language_model(&self) -> bool {
        match self {
            Architecture::Llama(_) | Architecture::Gpt2(_) => true,
            Architecture::Mlp(_)
            | Architecture::SmallCnn(_)
            | Architecture::Resnet(_)
            | Architecture::Vgg(_)
            | Architecture::Torchscript(_) => false,
        }
    }

    /// The length of one input row: for a language model, the longest sequence it takes.
    pub fn input_features(&self) -> u64 {
        let pixels = |channels: u32, height: u32, width: u32| {
            u64::from(channels) * u64::from(height) * u64::from(width)
        };
        match self {
            Architecture::Mlp(mlp) => u64::from(mlp.input_features),
            Architecture::SmallCnn(cnn) => pixels(cnn.in_channels, cnn.height, cnn.width),
            Architecture::Resnet(resnet) => pixels(resnet.in_channels, resnet.height, resnet.width),
            Architecture::Vgg(vgg) => pixels(vgg.in_channels, vgg.height, vgg.width),
            Architecture::Torchscript(script) => {
                script.input_shape.iter().map(|&d| u64::from(d)).product()
            }
            Architecture::Llama(llama) => u64::from(llama.max_position_embeddings),
            Architecture::Gpt2(gpt2) => u64::from(gpt2.n_positions),
        }
    }

    /// The head's outputs: for a language model, its vocabulary.
    pub fn num_classes(&self) -> u32 {
        match self {
            Architecture::Mlp(mlp) => mlp.num_classes,
            Architecture::SmallCnn(cnn) => cnn.num_classes,
            Architecture::Resnet(resnet) => resnet.num_classes,
            Architecture::Vgg(vgg) => vgg.num_classes,
            Architecture::Torchscript(script) => script.head.unwrap_or(script.output_size),
            Architecture::Llama(llama) => llama.vocab_size,
            Architecture::Gpt2(gpt2) => gpt2.vocab_size,
        }
    }

    /// The same architecture with a head of another output size.
    pub fn with_num_classes(&self, num_classes: u32) -> Architecture {
        let mut changed = self.clone();
        match &mut changed {
            Architecture::Mlp(mlp) => mlp.num_classes = num_classes,
            Architecture::SmallCnn(cnn) => cnn.num_classes = num_classes,
            Architecture::Resnet(resnet) => resnet.num_classes = num_classes,
            Architecture::Vgg(vgg) => vgg.num_classes = num_classes,
            Architecture::Torchscript(script) => script.head = Some(num_classes),
            Architecture::Llama(llama) => llama.vocab_size = num_classes,
            Architecture::Gpt2(gpt2) => gpt2.vocab_size = num_classes,
        }
        changed
    }

    /// The name prefix of the classification head (a language model's output
    /// projection, which is its embedding when the two are tied).
    pub fn head(&self) -> &'static str {
        match self {
            Architecture::Vgg(_) => "classifier.6",
            Architecture::Torchscript(_) => "head",
            Architecture::Llama(llama) if llama.tie_word_embeddings => "model.embed_tokens",
            Architecture::Gpt2(gpt2) if gpt2.tie_word_embeddings => "transformer.wte",
            Architecture::Llama(_) | Architecture::Gpt2(_) => "lm_head",
            Architecture::Mlp(_) | Architecture::SmallCnn(_) | Architecture::Resnet(_) => "fc",
        }
    }

    /// A language model's token embedding, whose rows are its vocabulary's.
    pub fn input_embedding(&self) -> Option<&'static str> {
        match self {
            Architecture::Llama(_) => Some("model.embed_tokens"),
            Architecture::Gpt2(_) => Some("transformer.wte"),
            Architecture::Mlp(_)
            | Architecture::SmallCnn(_)
            | Architecture::Resnet(_)
            | Architecture::Vgg(_)
            | Architecture::Torchscript(_) => None,
        }
    }

    /// The name prefixes of the blocks before the head, in forward order: what
    /// "unfreeze the last N blocks" counts.
    pub fn blocks(&self) -> Vec<String> {
        match self {
            Architecture::Mlp(mlp) => (0..mlp.hidden.len())
                .map(|i| format!("hidden.{i}"))
                .collect(),
            Architecture::SmallCnn(cnn) => (0..cnn.channels.len())
                .map(|i| format!("conv.{i}"))
                .collect(),
            Architecture::Resnet(resnet) => {
                let stages = resnet_stages(resnet.depth).unwrap_or_default();
                // The stem (conv1, bn1) is no block: unfreeze it with a fine-tune pattern.
                let mut blocks = Vec::new();
                for (stage, &count) in stages.iter().enumerate() {
                    blocks.extend((0..count).map(|block| format!("layer{}.{block}", stage + 1)));
                }
                blocks
            }
            Architecture::Vgg(vgg) => {
                let mut blocks: Vec<String> = vgg
                    .layers()
                    .into_iter()
                    .filter_map(|layer| match layer {
                        VggLayer::Conv { index, .. } => Some(format!("features.{index}")),
                        VggLayer::Pool => None,
                    })
                    .collect();
                blocks.extend(["classifier.0".to_string(), "classifier.3".to_string()]);
                blocks
            }
            // An opaque program has no blocks Heirloom knows of: fine-tune by pattern.
            Architecture::Torchscript(_) => Vec::new(),
            Architecture::Llama(llama) => (0..llama.num_hidden_layers)
                .map(|i| format!("model.layers.{i}"))
                .collect(),
            Architecture::Gpt2(gpt2) => (0..gpt2.n_layer)
                .map(|i| format!("transformer.h.{i}"))
                .collect(),
        }
    }

    /// The names of every state-dict entry.
    pub fn names(&self) -> Vec<String> {
        self.parameters()
            .into_iter()
            .map(|tensor| tensor.name)
            .collect()
    }

    /// Every state-dict entry, parameters and buffers, in forward order.
    pub fn parameters(&self) -> Vec<TensorSpec> {
        let mut tensors = StateDict::default();
        match self {
            Architecture::Mlp(mlp) => {
                let mut inputs = mlp.input_features;
                for (i, &width) in mlp.hidden.iter().enumerate() {
                    tensors.linear(&format!("hidden.{i}"), inputs, width, false);
                    inputs = width;
                }
                tensors.linear("fc", inputs, mlp.num_classes, false);
            }
            Architecture::SmallCnn(cnn) => {
                let mut inputs = cnn.in_channels;
                for (i, &channels) in cnn.channels.iter().enumerate() {
                    tensors.conv(
                        &format!("conv.{i}"),
                        inputs,
                        channels,
                        3,
                        Conv::DefaultWithBias,
                    );
                    inputs = channels;
                }
                tensors.linear("fc", inputs, cnn.num_classes, false);
            }
            Architecture::Resnet(resnet) => {
                tensors.conv("conv1", resnet.in_channels, 64, 7, Conv::Kaiming);
                tensors.batch_norm("bn1", 64);
                let mut inputs = 64;
                let stages = resnet_stages(resnet.depth).unwrap_or_default();
                for (stage, &count) in stages.iter().enumerate() {
                    let planes = 64 << stage;
                    for block in 0..count {
                        let prefix = format!("layer{}.{block}", stage + 1);
                        tensors.conv(&format!("{prefix}.conv1"), inputs, planes, 3, Conv::Kaiming);
                        tensors.batch_norm(&format!("{prefix}.bn1"), planes);
                        tensors.conv(&format!("{prefix}.conv2"), planes, planes, 3, Conv::Kaiming);
                        tensors.batch_norm(&format!("{prefix}.bn2"), planes);
                        if block == 0 && stage > 0 {
                            tensors.conv(
                                &format!("{prefix}.downsample.0"),
                                inputs,
                                planes,
                                1,
                                Conv::Kaiming,
                            );
                            tensors.batch_norm(&format!("{prefix}.downsample.1"), planes);
                        }
                        inputs = planes;
                    }
                }
                tensors.linear("fc", 512, resnet.num_classes, false);
            }
            Architecture::Vgg(vgg) => {
                let mut inputs = vgg.in_channels;
                for layer in vgg.layers() {
                    if let VggLayer::Conv { index, channels } = layer {
                        tensors.conv(
                            &format!("features.{index}"),
                            inputs,
                            channels,
                            3,
                            Conv::KaimingWithBias,
                        );
                        if vgg.batch_norm {
                            tensors.batch_norm(&format!("features.{}", index + 1), channels);
                        }
                        inputs = channels;
                    }
                }
                tensors.linear("classifier.0", 512 * 7 * 7, 4096, true);
                tensors.linear("classifier.3", 4096, 4096, true);
                tensors.linear("classifier.6", 4096, vgg.num_classes, true);
            }
            Architecture::Torchscript(script) => {
                for parameter in &script.parameters {
                    tensors.push(
                        parameter.name.clone(),
                        parameter.shape.clone(),
                        Init::FromProgram,
                        false,
                    );
                }
                if let Some(outputs) = script.head {
                    tensors.linear("head", script.output_size, outputs, false);
                }
            }
            Architecture::Llama(llama) => return llama.parameters(),
            Architecture::Gpt2(gpt2) => return gpt2.parameters(),
        }
        tensors.0
    }
}

#[derive(Clone, Copy)]
enum Conv {
    /// PyTorch's default Conv2d initialisation, with a bias.
    DefaultWithBias,
    /// torchvision's ResNet convolutions: Kaiming, no bias.
    Kaiming,
    /// torchvision's VGG convolutions: Kaiming, zero bias.
    KaimingWithBias,
}

#[derive(Default)]
struct StateDict(Vec<TensorSpec>);

impl StateDict {
    fn push(&mut self, name: String, shape: Vec<usize>, init: Init, buffer: bool) {
        let dtype = if name.ends_with("num_batches_tracked") {
            "i64"
        } else {
            "f32"
        };
        self.0.push(TensorSpec {
            name,
            shape,
            init,
            buffer,
            dtype,
        });
    }

    /// `vgg_style`: torchvision's VGG classifier initialisation, N(0, 0.01) and zero bias.
    fn linear(&mut self, prefix: &str, inputs: u32, outputs: u32, vgg_style: bool) {
        let (inputs, outputs) = (inputs as usize, outputs as usize);
        let (weight, bias) = if vgg_style {
            (Init::Normal(0.01), Init::Zeros)
        } else {
            (Init::UniformFanIn(inputs), Init::UniformFanIn(inputs))
        };
        self.push(
            format!("{prefix}.weight"),
            vec![outputs, inputs],
            weight,
            false,
        );
        self.push(format!("{prefix}.bias"), vec![outputs], bias, false);
    }

    fn conv(&mut self, prefix: &str, inputs: u32, outputs: u32, kernel: usize, kind: Conv) {
        let (inputs, outputs) = (inputs as usize, outputs as usize);
        let shape = vec![outputs, inputs, kernel, kernel];
        let fan_in = inputs * kernel * kernel;
        let fan_out = outputs * kernel * kernel;
        match kind {
            Conv::DefaultWithBias => {
                self.push(
                    format!("{prefix}.weight"),
                    shape,
                    Init::UniformFanIn(fan_in),
                    false,
                );
                self.push(
                    format!("{prefix}.bias"),
                    vec![outputs],
                    Init::UniformFanIn(fan_in),
                    false,
                );
            }
            Conv::Kaiming => self.push(
                format!("{prefix}.weight"),
                shape,
                Init::KaimingFanOut(fan_out),
                false,
            ),
            Conv::KaimingWithBias => {
                self.push(
                    format!("{prefix}.weight"),
                    shape,
                    Init::KaimingFanOut(fan_out),
                    false,
                );
                self.push(format!("{prefix}.bias"), vec![outputs], Init::Zeros, false);
            }
        }
    }

    fn batch_norm(&mut self, prefix: &str, channels: u32) {
        let channels = channels as usize;
        self.push(
            format!("{prefix}.weight"),
            vec![channels],
            Init::Ones,
            false,
        );
        self.push(format!("{prefix}.bias"), vec![channels], Init::Zeros, false);
        self.push(
            format!("{prefix}.running_mean"),
            vec![channels],
            Init::Zeros,
            true,
        );
        self.push(
            format!("{prefix}.running_var"),
            vec![channels],
            Init::Ones,
            true,
        );
        self.push(
            format!("{prefix}.num_batches_tracked"),
            vec![],
            Init::Zeros,
            true,
        );
    }
}

fn image(field: &str, channels: u32, height: u32, width: u32) -> Result<(), Invalid> {
    positive(&format!("{field}.in_channels"), channels)?;
    positive(&format!("{field}.height"), height)?;
    positive(&format!("{field}.width"), width)
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
            .map(|tensor| format!("{}{:?}", tensor.name, tensor.shape))
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

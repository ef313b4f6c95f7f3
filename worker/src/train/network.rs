//! Built-in architectures as named tensors and a forward function. ResNet and VGG follow
//! torchvision's modules and names, so weights from PyTorch give the same outputs here.

use super::collectives::ProcessGroup;
use super::transformer;
use crate::error::{Error, Result};
use heirloom_core::{Architecture, Init, Precision, TensorPlan, VggLayer, resnet_stages};
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use tch::{CModule, Device, Kind, Tensor};

const BATCH_NORM_MOMENTUM: f64 = 0.1;
const BATCH_NORM_EPS: f64 = 1e-5;

pub struct Network {
    architecture: Architecture,
    /// The state dict, in the architecture's order. A TorchScript program's parameters
    /// are the program's own tensors, so they are only ever changed in place.
    tensors: Vec<(String, Tensor)>,
    /// Batch norms whose statistics train: they run in training mode while fitting.
    training_norms: HashSet<String>,
    /// The TorchScript program, for that architecture; always in evaluation mode.
    program: Option<CModule>,
    /// The ranks of a data-parallel run: training-mode batch norms take their
    /// statistics over every rank's rows (SyncBatchNorm), so the ranks compute what one
    /// process would on the whole batch.
    ranks: Option<Arc<ProcessGroup>>,
    /// A language model's padding token: no position attends to it.
    pad_token_id: Option<i64>,
    /// A mixed precision's dtype for the matrix products; the rest stays float32.
    compute: Option<Kind>,
}

impl Network {
    /// Fresh weights, initialised as torchvision initialises each layer; a TorchScript
    /// program's parameters start as the program holds them.
    pub fn fresh(
        architecture: &Architecture,
        program: Option<&Path>,
        device: Device,
    ) -> Result<Network> {
        let program = match (architecture, program) {
            (Architecture::Torchscript(_), Some(path)) => {
                let mut module = CModule::load_on_device(path, device)?;
                module.set_eval();
                Some(module)
            }
            (Architecture::Torchscript(_), None) => {
                return Err(Error::InvalidJob(
                    "a torchscript model needs its program".into(),
                ));
            }
            _ => None,
        };
        let mut program_parameters: HashMap<String, Tensor> = match &program {
            Some(module) => module.named_parameters()?.into_iter().collect(),
            None => HashMap::new(),
        };
        let tensors = architecture
            .parameters()
            .into_iter()
            .map(|spec| {
                let size: Vec<i64> = spec.shape.iter().map(|&d| d as i64).collect();
                let kind = kind_of(spec.dtype)?;
                let empty = || Tensor::empty(size.as_slice(), (kind, device));
                let tensor = match spec.init {
                    Init::UniformFanIn(fan_in) => {
                        let bound = 1.0 / (fan_in as f64).sqrt();
                        empty().uniform_(-bound, bound)
                    }
                    Init::KaimingFanOut(fan_out) => {
                        empty().normal_(0.0, (2.0 / fan_out as f64).sqrt())
                    }
                    Init::Normal(std) => empty().normal_(0.0, std),
                    Init::Zeros => Tensor::zeros(size.as_slice(), (kind, device)),
                    Init::Ones => Tensor::ones(size.as_slice(), (kind, device)),
                    Init::FromProgram => {
                        let tensor = program_parameters.remove(&spec.name).ok_or_else(|| {
                            Error::InvalidJob(format!("the program has no parameter {}", spec.name))
                        })?;
                        if tensor.size() != size {
                            return Err(Error::InvalidJob(format!(
                                "the program's {} is {:?}, not {:?}",
                                spec.name,
                                tensor.size(),
                                size
                            )));
                        }
                        tensor.set_requires_grad(false)
                    }
                };
                Ok((spec.name, tensor))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Network {
            architecture: architecture.clone(),
            tensors,
            training_norms: HashSet::new(),
            program,
            ranks: None,
            pad_token_id: None,
            compute: None,
        })
    }

    /// The starting weights a plan describes: each tensor copied from its origin in a
    /// parent, or fresh. Batch norms whose running statistics the plan lets train run in
    /// training mode while fitting; the others keep their statistics frozen.
    pub fn assemble(
        architecture: &Architecture,
        program: Option<&Path>,
        plan: &[TensorPlan],
        parents: &[HashMap<String, Tensor>],
        device: Device,
    ) -> Result<Network> {
        let mut network = Network::fresh(architecture, program, device)?;
        for (name, tensor) in &mut network.tensors {
            let tensor_plan = plan
                .iter()
                .find(|t| &t.name == name)
                .ok_or_else(|| Error::InvalidJob(format!("the plan has no entry for {name}")))?;
            if let Some(norm) = name.strip_suffix(".running_mean")
                && tensor_plan.trainable
            {
                network.training_norms.insert(norm.to_string());
            }
            let Some(origin) = &tensor_plan.origin else {
                continue;
            };
            let inherited = parents
                .get(origin.parent)
                .and_then(|parent| parent.get(&origin.tensor))
                .ok_or_else(|| {
                    Error::InvalidJob(format!(
                        "parent {} has no tensor {} for {name}",
                        origin.parent, origin.tensor
                    ))
                })?;
            if inherited.size() != tensor.size() || inherited.kind() != tensor.kind() {
                return Err(Error::InvalidJob(format!(
                    "the parent's {} is {:?} {:?}; {name} needs {:?} {:?}",
                    origin.tensor,
                    inherited.kind(),
                    inherited.size(),
                    tensor.kind(),
                    tensor.size()
                )));
            }
            // Copied in place: training must never write into the parent's tensors, which
            // the WiSE-FT blend reads afterwards, and a program's parameters must stay
            // the program's.
            tch::no_grad(|| tensor.copy_(inherited));
        }
        Ok(network)
    }

    /// Overwrites every tensor with its saved value from a checkpoint, in place.
    pub fn restore(&mut self, saved: &HashMap<String, Tensor>) -> Result<()> {
        tch::no_grad(|| {
            for (name, tensor) in &mut self.tensors {
                let value = saved.get(name).ok_or_else(|| {
                    Error::InvalidJob(format!("the checkpoint has no tensor {name}"))
                })?;
                if value.size() != tensor.size() {
                    return Err(Error::InvalidJob(format!(
                        "the checkpoint's {name} is {:?}, the network's {:?}",
                        value.size(),
                        tensor.size()
                    )));
                }
                tensor.copy_(value);
            }
            Ok(())
        })
    }

    pub fn parameters_mut(&mut self) -> impl Iterator<Item = (&str, &mut Tensor)> {
        self.tensors
            .iter_mut()
            .map(|(name, tensor)| (name.as_str(), tensor))
    }

    fn get(&self, name: &str) -> &Tensor {
        let at = self.tensors.iter().position(|(n, _)| n == name);
        &self.tensors[at.unwrap_or_else(|| panic!("{name} is part of the architecture"))].1
    }
}

impl transformer::Weights for Network {
    fn weight(&self, name: &str) -> &Tensor {
        self.get(name)
    }

    fn has(&self, name: &str) -> bool {
        self.tensors.iter().any(|(n, _)| n == name)
    }
}

/// The libtorch kind of a dtype as safetensors names it.
pub fn kind_of(dtype: &str) -> Result<Kind> {
    match dtype {
        "f32" => Ok(Kind::Float),
        "bf16" => Ok(Kind::BFloat16),
        "f16" => Ok(Kind::Half),
        "i64" => Ok(Kind::Int64),
        other => Err(Error::InvalidJob(format!(
            "tensors of dtype {other} are not stored by Heirloom"
        ))),
    }
}

impl Network {
    /// Logits for a batch of input rows. `training` turns on dropout and the batch
    /// norms whose statistics train.
    pub fn forward(&self, x: &Tensor, training: bool) -> Result<Tensor> {
        if let (Architecture::Torchscript(script), Some(program)) =
            (&self.architecture, &self.program)
        {
            let mut shape = vec![-1i64];
            shape.extend(script.input_shape.iter().map(|&d| i64::from(d)));
            let output = program.forward_ts(&[x.reshape(shape.as_slice())])?;
            if output.size() != [x.size()[0], i64::from(script.output_size)] {
                return Err(Error::InvalidJob(format!(
                    "the program's output is {:?}; the architecture says [batch, {}]",
                    output.size(),
                    script.output_size
                )));
            }
            return Ok(match script.head {
                Some(_) => self.linear(&output, "head"),
                None => output,
            });
        }
        self.forward_builtin(x, training)
    }

    /// Trains a language model in `precision`: its float weights are held in the
    /// precision's master dtype (float32, or bfloat16 for bf16), and a mixed precision's
    /// matrix products run in bfloat16 or float16 as autocast runs them. Saving casts every tensor back to the
    /// architecture's dtype; a frozen tensor comes back with its own bytes, as a float32
    /// detour of a 16-bit value is exact.
    pub fn train_in(&mut self, precision: Precision) {
        if !self.architecture.is_language_model() {
            return; // planning lets only language models train in another precision
        }
        let (master, compute) = match precision {
            Precision::Fp32 => (Kind::Float, None),
            Precision::Bf16 => (Kind::BFloat16, None),
            Precision::Bf16Mixed => (Kind::Float, Some(Kind::BFloat16)),
            Precision::Fp16Mixed => (Kind::Float, Some(Kind::Half)),
        };
        for (_, tensor) in &mut self.tensors {
            if tensor.is_floating_point() && tensor.kind() != master {
                *tensor = tensor.to_kind(master);
            }
        }
        self.compute = compute;
    }

    /// Keeps every position of a language model from attending to padding.
    pub fn mask_padding(&mut self, pad_token_id: i64) {
        self.pad_token_id = Some(pad_token_id);
    }

    /// Makes training-mode batch norms synchronise their statistics over `ranks`.
    pub fn synchronise_norms(&mut self, ranks: Arc<ProcessGroup>) {
        self.ranks = Some(ranks);
    }

    fn forward_builtin(&self, x: &Tensor, training: bool) -> Result<Tensor> {
        match &self.architecture {
            Architecture::Mlp(mlp) => {
                let mut h = x.shallow_clone();
                for i in 0..mlp.hidden.len() {
                    h = self.linear(&h, &format!("hidden.{i}")).relu();
                }
                Ok(self.linear(&h, "fc"))
            }
            Architecture::SmallCnn(cnn) => {
                let mut h = x.reshape([
                    -1,
                    cnn.in_channels.into(),
                    cnn.height.into(),
                    cnn.width.into(),
                ]);
                for i in 0..cnn.channels.len() {
                    h = self.conv(&h, &format!("conv.{i}"), 1, 1).relu().max_pool2d(
                        [2, 2],
                        [2, 2],
                        [0, 0],
                        [1, 1],
                        true,
                    );
                }
                let pooled = h.mean_dim([2i64, 3].as_slice(), false, Kind::Float);
                Ok(self.linear(&pooled, "fc"))
            }
            Architecture::Resnet(resnet) => {
                let h = x.reshape([
                    -1,
                    resnet.in_channels.into(),
                    resnet.height.into(),
                    resnet.width.into(),
                ]);
                let h = self.conv(&h, "conv1", 2, 3);
                let mut h = self.batch_norm(&h, "bn1", training)?.relu().max_pool2d(
                    [3, 3],
                    [2, 2],
                    [1, 1],
                    [1, 1],
                    false,
                );
                let stages = resnet_stages(resnet.depth).unwrap_or_default();
                for (stage, &count) in stages.iter().enumerate() {
                    for block in 0..count {
                        let prefix = format!("layer{}.{block}", stage + 1);
                        let stride = if block == 0 && stage > 0 { 2 } else { 1 };
                        h = self.basic_block(&h, &prefix, stride, training)?;
                    }
                }
                let pooled = h.adaptive_avg_pool2d([1, 1]).flatten(1, -1);
                Ok(self.linear(&pooled, "fc"))
            }
            Architecture::Vgg(vgg) => {
                let mut h = x.reshape([
                    -1,
                    vgg.in_channels.into(),
                    vgg.height.into(),
                    vgg.width.into(),
                ]);
                for layer in vgg.layers() {
                    h = match layer {
                        VggLayer::Conv { index, .. } => {
                            let conv = self.conv(&h, &format!("features.{index}"), 1, 1);
                            let normed = if vgg.batch_norm {
                                self.batch_norm(
                                    &conv,
                                    &format!("features.{}", index + 1),
                                    training,
                                )?
                            } else {
                                conv
                            };
                            normed.relu()
                        }
                        VggLayer::Pool => h.max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false),
                    };
                }
                let h = h.adaptive_avg_pool2d([7, 7]).flatten(1, -1);
                let h = self
                    .linear(&h, "classifier.0")
                    .relu()
                    .dropout(0.5, training);
                let h = self
                    .linear(&h, "classifier.3")
                    .relu()
                    .dropout(0.5, training);
                Ok(self.linear(&h, "classifier.6"))
            }
            Architecture::Torchscript(_) => unreachable!("forward runs the program"),
            Architecture::Llama(llama) => {
                Ok(transformer::llama(llama, self, x, self.pass(training)))
            }
            Architecture::Gpt2(gpt2) => Ok(transformer::gpt2(gpt2, self, x, self.pass(training))),
        }
    }

    fn basic_block(&self, x: &Tensor, prefix: &str, stride: i64, training: bool) -> Result<Tensor> {
        let h = self.conv(x, &format!("{prefix}.conv1"), stride, 1);
        let h = self
            .batch_norm(&h, &format!("{prefix}.bn1"), training)?
            .relu();
        let h = self.conv(&h, &format!("{prefix}.conv2"), 1, 1);
        let h = self.batch_norm(&h, &format!("{prefix}.bn2"), training)?;
        let shortcut = if self
            .tensors
            .iter()
            .any(|(n, _)| n == &format!("{prefix}.downsample.0.weight"))
        {
            let d = self.conv(x, &format!("{prefix}.downsample.0"), stride, 0);
            self.batch_norm(&d, &format!("{prefix}.downsample.1"), training)?
        } else {
            x.shallow_clone()
        };
        Ok((h + shortcut).relu())
    }

    fn linear(&self, x: &Tensor, prefix: &str) -> Tensor {
        x.linear(
            self.get(&format!("{prefix}.weight")),
            Some(self.get(&format!("{prefix}.bias"))),
        )
    }

    fn conv(&self, x: &Tensor, prefix: &str, stride: i64, padding: i64) -> Tensor {
        let bias_name = format!("{prefix}.bias");
        let bias = self
            .tensors
            .iter()
            .find(|(n, _)| n == &bias_name)
            .map(|(_, t)| t);
        x.conv2d(
            self.get(&format!("{prefix}.weight")),
            bias,
            [stride, stride],
            [padding, padding],
            [1, 1],
            1,
        )
    }

    /// Batch norm as `torch.nn.BatchNorm2d`: in training mode (for norms whose statistics
    /// train) it normalises with the batch's statistics and updates the running ones and
    /// `num_batches_tracked`; otherwise it uses the running statistics unchanged. In a
    /// data-parallel run the training mode's statistics are every rank's.
    fn batch_norm(&self, x: &Tensor, prefix: &str, training: bool) -> Result<Tensor> {
        let training = training && self.training_norms.contains(prefix);
        if training {
            tch::no_grad(|| {
                let mut tracked = self
                    .get(&format!("{prefix}.num_batches_tracked"))
                    .shallow_clone();
                let _ = tracked.g_add_scalar_(1);
            });
        }
        let part = |name: &str| self.get(&format!("{prefix}.{name}"));
        if let (true, Some(ranks)) = (training, &self.ranks) {
            return Ok(ranks.sync_batch_norm(
                x,
                [part("weight"), part("bias")],
                [part("running_mean"), part("running_var")],
                BATCH_NORM_MOMENTUM,
                BATCH_NORM_EPS,
            )?);
        }
        Ok(x.batch_norm(
            Some(part("weight")),
            Some(part("bias")),
            Some(part("running_mean")),
            Some(part("running_var")),
            training,
            BATCH_NORM_MOMENTUM,
            BATCH_NORM_EPS,
            false,
        ))
    }

    fn pass(&self, training: bool) -> transformer::Pass {
        transformer::Pass {
            pad: self.pad_token_id,
            training,
            compute: self.compute,
        }
    }

    /// Writes the weights as safetensors with their state-dict names, each in the
    /// architecture's dtype (whatever precision training held it in).
    pub fn save(&self, path: &Path) -> Result<()> {
        let kinds: HashMap<String, &'static str> = self
            .architecture
            .parameters()
            .into_iter()
            .map(|spec| (spec.name, spec.dtype))
            .collect();
        let on_cpu = self
            .tensors
            .iter()
            .map(|(name, tensor)| {
                let tensor = tensor.detach().to_device(Device::Cpu);
                let tensor = match kinds.get(name) {
                    Some(dtype) => tensor.to_kind(kind_of(dtype)?),
                    None => tensor,
                };
                Ok((name.as_str(), tensor.contiguous()))
            })
            .collect::<Result<Vec<_>>>()?;
        Tensor::write_safetensors(&on_cpu, path)?;
        Ok(())
    }
}

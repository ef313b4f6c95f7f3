//! Built-in architectures as named tensors and a forward function.

use crate::error::{Error, Result};
use heirloom_spec::{Architecture, TensorPlan};
use std::collections::HashMap;
use std::path::Path;
use tch::{Device, Kind, Tensor};

pub struct Network {
    architecture: Architecture,
    /// In the architecture's parameter order.
    parameters: Vec<(String, Tensor)>,
}

impl Network {
    /// PyTorch's default initialisation for Linear and Conv2d: uniform in ±1/sqrt(fan_in)
    /// for weights and biases alike.
    pub fn fresh(architecture: &Architecture, device: Device) -> Network {
        let mut parameters = Vec::new();
        // Parameters come weight first, then its bias, which shares the weight's fan-in.
        let mut fan_in = 1;
        for (name, shape) in architecture.parameters() {
            if shape.len() > 1 {
                fan_in = shape[1..].iter().product();
            }
            parameters.push((name, fresh_tensor(&shape, fan_in, device)));
        }
        Network {
            architecture: architecture.clone(),
            parameters,
        }
    }

    /// The starting weights a plan describes: each tensor copied from its origin in a
    /// parent, or fresh.
    pub fn assemble(
        architecture: &Architecture,
        plan: &[TensorPlan],
        parents: &[HashMap<String, Tensor>],
        device: Device,
    ) -> Result<Network> {
        let mut network = Network::fresh(architecture, device);
        for (name, tensor) in &mut network.parameters {
            let tensor_plan = plan
                .iter()
                .find(|t| &t.name == name)
                .ok_or_else(|| Error::InvalidJob(format!("the plan has no entry for {name}")))?;
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
            if inherited.size() != tensor.size() || inherited.kind() != Kind::Float {
                return Err(Error::InvalidJob(format!(
                    "the parent's {} is {:?} {:?}; {name} needs float {:?}",
                    origin.tensor,
                    inherited.kind(),
                    inherited.size(),
                    tensor.size()
                )));
            }
            // A copy: training must never write into the parent's tensors, which the
            // WiSE-FT blend reads afterwards.
            *tensor = inherited.to_device(device).copy();
        }
        Ok(network)
    }

    pub fn parameters_mut(&mut self) -> impl Iterator<Item = (&str, &mut Tensor)> {
        self.parameters
            .iter_mut()
            .map(|(name, tensor)| (name.as_str(), tensor))
    }

    fn get(&self, name: &str) -> &Tensor {
        &self.parameters[self
            .parameters
            .iter()
            .position(|(n, _)| n == name)
            .expect("known parameter")]
        .1
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        match &self.architecture {
            Architecture::Mlp(mlp) => {
                let mut h = x.shallow_clone();
                for i in 0..mlp.hidden.len() {
                    h = self.linear(&h, &format!("hidden.{i}")).relu();
                }
                self.linear(&h, "fc")
            }
            Architecture::SmallCnn(cnn) => {
                let shape = [
                    -1,
                    i64::from(cnn.in_channels),
                    i64::from(cnn.height),
                    i64::from(cnn.width),
                ];
                let mut h = x.reshape(shape);
                for i in 0..cnn.channels.len() {
                    let weight = self.get(&format!("conv.{i}.weight"));
                    let bias = self.get(&format!("conv.{i}.bias"));
                    h = h
                        .conv2d(weight, Some(bias), [1, 1], [1, 1], [1, 1], 1)
                        .relu()
                        .max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], true);
                }
                let pooled = h.mean_dim([2i64, 3].as_slice(), false, Kind::Float);
                self.linear(&pooled, "fc")
            }
        }
    }

    fn linear(&self, x: &Tensor, prefix: &str) -> Tensor {
        x.linear(
            self.get(&format!("{prefix}.weight")),
            Some(self.get(&format!("{prefix}.bias"))),
        )
    }

    /// Writes the weights as safetensors with their state-dict names.
    pub fn save(&self, path: &Path) -> Result<()> {
        let on_cpu: Vec<(&str, Tensor)> = self
            .parameters
            .iter()
            .map(|(name, tensor)| {
                (
                    name.as_str(),
                    tensor.detach().to_device(Device::Cpu).contiguous(),
                )
            })
            .collect();
        Tensor::write_safetensors(&on_cpu, path)?;
        Ok(())
    }
}

fn fresh_tensor(shape: &[usize], fan_in: usize, device: Device) -> Tensor {
    let size: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
    let bound = 1.0 / (fan_in as f64).sqrt();
    Tensor::empty(size.as_slice(), (Kind::Float, device)).uniform_(-bound, bound)
}

//! Datasets: a safetensors file with `x` (float32 [N, F]) and `y` (int64 [N]).

use crate::error::{Error, Result};
use std::path::Path;
use tch::{Device, Kind, Tensor};

pub struct Dataset {
    x: Tensor,
    y: Tensor,
}

impl Dataset {
    pub fn load(path: &Path, features: u64, device: Device) -> Result<Dataset> {
        let mut tensors = Tensor::read_safetensors(path)?;
        let mut take = |name: &str| {
            let at = tensors.iter().position(|(n, _)| n == name).ok_or_else(|| {
                Error::InvalidJob(format!("dataset {} has no tensor `{name}`", path.display()))
            })?;
            Ok::<_, Error>(tensors.swap_remove(at).1)
        };
        let x = take("x")?;
        let y = take("y")?;
        if x.kind() != Kind::Float || y.kind() != Kind::Int64 {
            return Err(Error::InvalidJob(
                "dataset `x` must be float32 and `y` int64".into(),
            ));
        }
        if x.dim() != 2 || x.size()[1] as u64 != features || y.size() != [x.size()[0]] {
            return Err(Error::InvalidJob(format!(
                "dataset shapes x {:?}, y {:?} do not fit a model with {features} inputs",
                x.size(),
                y.size()
            )));
        }
        Ok(Dataset {
            x: x.to_device(device),
            y: y.to_device(device),
        })
    }

    /// Row indices for training and for the held-out split, from a seeded permutation.
    pub fn split(&self, holdout_fraction: f64) -> (Tensor, Tensor) {
        let rows = self.x.size()[0];
        let holdout = ((rows as f64 * holdout_fraction).ceil() as i64).clamp(1, rows - 1);
        // On the CPU whatever the device: CUDA's generator would give other rows.
        let order = Tensor::randperm(rows, (Kind::Int64, Device::Cpu)).to_device(self.x.device());
        (
            order.narrow(0, holdout, rows - holdout),
            order.narrow(0, 0, holdout),
        )
    }

    pub fn rows(&self, indices: &Tensor) -> (Tensor, Tensor) {
        (
            self.x.index_select(0, indices),
            self.y.index_select(0, indices),
        )
    }
}

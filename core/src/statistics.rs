//! A dataset's summary statistics, measured once at registration, and the shift between
//! two datasets that a job's plan reports: how far the data a job trains on lies from
//! the data its parent was trained on.

use serde::{Deserialize, Serialize};

/// Per-feature means and deviations are kept up to this many features.
pub const MAX_PER_FEATURE: usize = 1 << 16;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetStatistics {
    /// How often each label occurs, indexed by label (0 where one does not).
    pub label_counts: Vec<u64>,
    /// Over every value of `x`.
    pub mean: f64,
    pub std: f64,
    /// Per feature; empty above [`MAX_PER_FEATURE`] features.
    pub feature_mean: Vec<f32>,
    pub feature_std: Vec<f32>,
}

impl DatasetStatistics {
    /// Measures `x` (little-endian float32, row-major `[rows, features]`) and the labels
    /// `y` (little-endian int64, each at least 0).
    pub fn measure(x: &[u8], features: usize, y: &[u8]) -> DatasetStatistics {
        let rows = x.len() / 4 / features.max(1);
        let per_feature = features <= MAX_PER_FEATURE;
        let width = if per_feature { features } else { 0 };
        let (mut sums, mut squares) = (vec![0f64; width], vec![0f64; width]);
        let (mut total, mut total_squares) = (0f64, 0f64);
        for row in x.chunks_exact(features * 4) {
            for (j, bytes) in row.chunks_exact(4).enumerate() {
                let value = f64::from(f32::from_le_bytes(bytes.try_into().expect("4 bytes")));
                total += value;
                total_squares += value * value;
                if per_feature {
                    sums[j] += value;
                    squares[j] += value * value;
                }
            }
        }
        let moments = |sum: f64, square: f64, count: f64| {
            let mean = sum / count;
            (mean, (square / count - mean * mean).max(0.0).sqrt())
        };
        let (mean, std) = moments(total, total_squares, (rows * features) as f64);
        let (feature_mean, feature_std) = sums
            .iter()
            .zip(&squares)
            .map(|(&sum, &square)| {
                let (mean, std) = moments(sum, square, rows as f64);
                (mean as f32, std as f32)
            })
            .unzip();
        let mut label_counts = Vec::new();
        for bytes in y.chunks_exact(8) {
            let label = i64::from_le_bytes(bytes.try_into().expect("8 bytes")) as usize;
            if label >= label_counts.len() {
                label_counts.resize(label + 1, 0);
            }
            label_counts[label] += 1;
        }
        DatasetStatistics {
            label_counts,
            mean,
            std,
            feature_mean,
            feature_std,
        }
    }

    /// The labels that occur, ascending.
    pub fn labels(&self) -> Vec<u32> {
        (0..self.label_counts.len() as u32)
            .filter(|&label| self.label_counts[label as usize] > 0)
            .collect()
    }

    fn label_distribution(&self) -> Vec<f64> {
        let total: u64 = self.label_counts.iter().sum();
        self.label_counts
            .iter()
            .map(|&count| count as f64 / total.max(1) as f64)
            .collect()
    }
}

/// How data to train on differs from reference data (a parent's training data).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Shift {
    /// Mean over features of |Δmean| / std(reference).
    pub mean_shift: f64,
    pub max_mean_shift: f64,
    pub max_mean_shift_feature: u32,
    /// Mean over features of std(new) / std(reference).
    pub std_ratio: f64,
    /// Total variation distance between the label distributions, 0 to 1.
    pub label_distance: f64,
    /// Labels the new data has and the reference does not.
    pub new_labels: Vec<u32>,
}

impl Shift {
    /// Compares `new` with `reference`, feature by feature where both kept per-feature
    /// statistics of the same width, else on the overall mean and deviation. A feature's
    /// deviation is floored at 1% of the reference's overall deviation (and 1e-6), so a
    /// constant feature (an image's border) does not divide by zero.
    pub fn between(reference: &DatasetStatistics, new: &DatasetStatistics) -> Shift {
        let floor = (reference.std * 0.01).max(1e-6);
        let pairs: Vec<(f64, f64, f64, f64)> = if !reference.feature_mean.is_empty()
            && reference.feature_mean.len() == new.feature_mean.len()
        {
            (0..reference.feature_mean.len())
                .map(|j| {
                    (
                        f64::from(reference.feature_mean[j]),
                        f64::from(reference.feature_std[j]),
                        f64::from(new.feature_mean[j]),
                        f64::from(new.feature_std[j]),
                    )
                })
                .collect()
        } else {
            vec![(reference.mean, reference.std, new.mean, new.std)]
        };
        let (mut mean_shift, mut std_ratio) = (0.0, 0.0);
        let (mut max_mean_shift, mut max_mean_shift_feature) = (0.0, 0);
        for (j, &(reference_mean, reference_std, new_mean, new_std)) in pairs.iter().enumerate() {
            let scale = reference_std.max(floor);
            let shift = (new_mean - reference_mean).abs() / scale;
            mean_shift += shift;
            std_ratio += new_std.max(floor) / scale;
            if shift > max_mean_shift {
                (max_mean_shift, max_mean_shift_feature) = (shift, j as u32);
            }
        }
        let count = pairs.len().max(1) as f64;
        let (p, q) = (reference.label_distribution(), new.label_distribution());
        let label_distance = (0..p.len().max(q.len()))
            .map(|i| (p.get(i).unwrap_or(&0.0) - q.get(i).unwrap_or(&0.0)).abs())
            .sum::<f64>()
            / 2.0;
        let known = reference.labels();
        Shift {
            mean_shift: mean_shift / count,
            max_mean_shift,
            max_mean_shift_feature,
            std_ratio: std_ratio / count,
            label_distance,
            new_labels: new
                .labels()
                .into_iter()
                .filter(|label| !known.contains(label))
                .collect(),
        }
    }

    /// `none`, `small`, `moderate` or `large`: the larger of the feature shift's and the
    /// label distance's grades (mean shift < 0.1 / 0.5 / 1.0 standard deviations,
    /// label distance < 0.05 / 0.2 / 0.5), and `large` whenever there are new labels.
    pub fn verdict(&self) -> &'static str {
        let grade = |value: f64, limits: [f64; 3]| limits.iter().filter(|&&l| value >= l).count();
        let worst = grade(self.mean_shift, [0.1, 0.5, 1.0])
            .max(grade(self.label_distance, [0.05, 0.2, 0.5]))
            .max(grade(self.std_ratio.ln().abs(), [0.1, 0.4, 0.7]));
        let worst = if self.new_labels.is_empty() { worst } else { 3 };
        ["none", "small", "moderate", "large"][worst]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dataset(rows: &[[f32; 2]], labels: &[i64]) -> DatasetStatistics {
        let x: Vec<u8> = rows
            .iter()
            .flatten()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let y: Vec<u8> = labels.iter().flat_map(|v| v.to_le_bytes()).collect();
        DatasetStatistics::measure(&x, 2, &y)
    }

    #[test]
    fn measures_means_deviations_and_labels() {
        let stats = dataset(&[[1.0, 10.0], [3.0, 10.0]], &[0, 2]);
        assert_eq!(stats.feature_mean, vec![2.0, 10.0]);
        assert_eq!(stats.feature_std, vec![1.0, 0.0]);
        assert_eq!(stats.mean, 6.0);
        assert_eq!(stats.label_counts, vec![1, 0, 1]);
        assert_eq!(stats.labels(), vec![0, 2]);
    }

    #[test]
    fn the_same_data_has_no_shift_and_moved_data_does() {
        let reference = dataset(&[[0.0, 0.0], [2.0, 4.0]], &[0, 1]);
        let same = Shift::between(&reference, &reference);
        assert_eq!(same.mean_shift, 0.0);
        assert_eq!(same.label_distance, 0.0);
        assert!((same.std_ratio - 1.0).abs() < 1e-12);
        assert_eq!(same.verdict(), "none");

        // Feature 1 moves by 3 of its deviations (2), feature 0 stays; one label is new.
        let moved = dataset(&[[0.0, 6.0], [2.0, 10.0]], &[0, 2]);
        let shift = Shift::between(&reference, &moved);
        assert!((shift.max_mean_shift - 3.0).abs() < 1e-9, "{shift:?}");
        assert_eq!(shift.max_mean_shift_feature, 1);
        assert!((shift.mean_shift - 1.5).abs() < 1e-9);
        assert!((shift.label_distance - 0.5).abs() < 1e-12);
        assert_eq!(shift.new_labels, vec![2]);
        assert_eq!(shift.verdict(), "large");
    }

    #[test]
    fn a_constant_feature_does_not_divide_by_zero() {
        let reference = dataset(&[[1.0, 5.0], [3.0, 5.0]], &[0, 0]);
        let new = dataset(&[[1.0, 5.5], [3.0, 5.5]], &[0, 0]);
        let shift = Shift::between(&reference, &new);
        assert!(shift.mean_shift.is_finite() && shift.max_mean_shift > 1.0);
    }
}

//! The targets: each feeds arbitrary bytes to the same functions the coordinator and
//! the worker run on requests, and describes what came out.

use crate::Target;
use heirloom_core::{
    Architecture, Invalid, Module, TensorInfo, TrainablePatterns, check_manifest, limits,
    pattern_matches, plan_compose, plan_scratch, read_dataset_info, read_tensor_infos,
    tensor_hashes,
};
use heirloom_proto::v1 as pb;
use prost::Message;

pub const ALL: &[Target] = &[
    Target {
        name: "architecture_json",
        run: architecture_json,
        dictionary: ARCHITECTURE_WORDS,
    },
    Target {
        name: "architecture_proto",
        run: architecture_proto,
        dictionary: &[],
    },
    Target {
        name: "hyperparameters",
        run: hyperparameters,
        dictionary: &[],
    },
    Target {
        name: "patterns",
        run: patterns,
        dictionary: &[
            "*", ".", "\n", "\n\n", "fc", "weight", "bias", "hidden.", "**", "0",
        ],
    },
    Target {
        name: "module_map",
        run: module_map,
        dictionary: MODULE_MAP_WORDS,
    },
    Target {
        name: "manifest",
        run: manifest,
        dictionary: &[],
    },
    Target {
        name: "safetensors",
        run: safetensors,
        dictionary: SAFETENSORS_WORDS,
    },
];

const ARCHITECTURE_WORDS: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    "\"",
    "null",
    "true",
    "-1",
    "0",
    "1",
    "65536",
    "65537",
    "4294967296",
    "1e309",
    "\"mlp\"",
    "\"small_cnn\"",
    "\"resnet\"",
    "\"vgg\"",
    "\"torchscript\"",
    "\"input_features\"",
    "\"hidden\"",
    "\"num_classes\"",
    "\"in_channels\"",
    "\"height\"",
    "\"width\"",
    "\"depth\"",
    "\"batch_norm\"",
    "\"channels\"",
    "\"program_sha256\"",
    "\"input_shape\"",
    "\"output_size\"",
    "\"parameters\"",
    "\"head\"",
    "\"name\"",
    "\"shape\"",
];

const MODULE_MAP_WORDS: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    "\"",
    "0",
    "1",
    "2",
    "-1",
    "\"architecture\"",
    "\"parents\"",
    "\"modules\"",
    "\"trainable\"",
    "\"hidden.0\"",
    "\"hidden\"",
    "\"fc\"",
    "\"\"",
    "\"*\"",
    "\"mlp\"",
    "\"hidden.1\"",
    "\"conv\"",
    "\"layer4\"",
];

const SAFETENSORS_WORDS: &[&str] = &[
    "{",
    "}",
    "\"dtype\"",
    "\"shape\"",
    "\"data_offsets\"",
    "\"F32\"",
    "\"I64\"",
    "\"F16\"",
    "\"x\"",
    "\"y\"",
    "\"__metadata__\"",
    "[0,0]",
    "[]",
    "[1]",
];

/// An outcome with its numbers blanked, so `refused hidden[3]` and `refused hidden[4]`
/// are one outcome.
fn describe<T>(result: Result<T, Invalid>, ok: impl FnOnce(T) -> String) -> String {
    match result {
        Ok(value) => format!("ok {}", ok(value)),
        Err(invalid) => format!(
            "refused {}: {}",
            blank(&invalid.field),
            gist(&invalid.reason)
        ),
    }
}

/// The words of a reason before anything it quotes or lists: one outcome per kind of
/// refusal, not one per refused value.
fn gist(reason: &str) -> String {
    let plain = reason
        .split(['"', '(', ':', '[', '{'])
        .next()
        .unwrap_or_default();
    let words: Vec<&str> = plain
        .split_whitespace()
        .filter(|word| word.chars().all(|c| c.is_ascii_alphabetic()))
        .take(4)
        .collect();
    words.join(" ")
}

fn blank(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_ascii_digit() { '#' } else { c })
        .collect()
}

fn magnitude(count: usize) -> u32 {
    usize::BITS - count.leading_zeros()
}

/// Everything the coordinator asks of an architecture once it is valid.
fn exercise(architecture: &Architecture) -> String {
    let parameters = architecture.parameters();
    let names = architecture.names();
    assert_eq!(names.len(), parameters.len(), "names and parameters agree");
    let _ = architecture.blocks();
    let _ = architecture.input_features();
    let _ = architecture.head();
    let plan = plan_scratch(architecture);
    assert_eq!(
        plan.len(),
        parameters.len(),
        "a scratch plan covers every tensor"
    );
    let narrowed = architecture.with_num_classes(3);
    let variant = serde_json::to_value(architecture)
        .ok()
        .and_then(|value| value.as_object()?.keys().next().cloned())
        .unwrap_or_default();
    format!(
        "{variant} 2^{} tensors, head valid {}",
        magnitude(parameters.len()),
        narrowed.validate("narrowed").is_ok()
    )
}

fn architecture_json(data: &[u8]) -> String {
    match serde_json::from_slice::<Architecture>(data) {
        Err(err) => format!("json {:?}", err.classify()),
        Ok(architecture) => describe(architecture.validate("architecture"), |()| {
            let round_trip: Architecture =
                serde_json::from_value(serde_json::to_value(&architecture).unwrap()).unwrap();
            assert_eq!(round_trip, architecture, "JSON round trip");
            exercise(&architecture)
        }),
    }
}

fn architecture_proto(data: &[u8]) -> String {
    let Ok(proto) = pb::Architecture::decode(data) else {
        return "undecodable".into();
    };
    let architecture = proto
        .to_core("architecture")
        .and_then(|architecture| architecture.validate("architecture").map(|()| architecture));
    describe(architecture, |architecture| {
        let back = pb::Architecture::from(&architecture)
            .to_core("again")
            .expect("a valid architecture converts back");
        assert_eq!(back, architecture, "protobuf round trip");
        exercise(&architecture)
    })
}

fn hyperparameters(data: &[u8]) -> String {
    let Ok(proto) = pb::Hyperparameters::decode(data) else {
        return "undecodable".into();
    };
    describe(proto.resolve("hyperparameters"), |resolved| {
        resolved
            .validate("resolved")
            .expect("resolved hyperparameters are valid");
        format!("{:?}", resolved.optimizer)
    })
}

/// Lines before the first empty line are patterns; the rest are tensor names.
fn patterns(data: &[u8]) -> String {
    let text = String::from_utf8_lossy(data);
    let (patterns, names) = text.split_once("\n\n").unwrap_or((&text, ""));
    let patterns: Vec<String> = patterns.lines().take(64).map(String::from).collect();
    let names: Vec<String> = names.lines().take(64).map(String::from).collect();
    for pattern in &patterns {
        for name in &names {
            let matched = pattern_matches(pattern, name);
            if pattern == name || pattern == "*" {
                assert!(matched, "{pattern:?} matches {name:?}");
            }
        }
    }
    describe(
        TrainablePatterns::parse("trainable", &patterns, &names),
        |parsed| {
            let trainable = names.iter().filter(|n| parsed.is_trainable(n)).count();
            format!("{} of 2^{}", magnitude(trainable), magnitude(names.len()))
        },
    )
}

#[derive(serde::Deserialize)]
struct ModuleMap {
    architecture: Architecture,
    parents: Vec<Architecture>,
    /// (target prefix, parent index, source prefix)
    modules: Vec<(String, usize, String)>,
    #[serde(default)]
    trainable: Vec<String>,
}

fn module_map(data: &[u8]) -> String {
    let map: ModuleMap = match serde_json::from_slice(data) {
        Ok(map) => map,
        Err(err) => return format!("json {:?}", err.classify()),
    };
    if map.parents.is_empty() || map.parents.len() > 8 || map.modules.len() > 64 {
        return "out of scope".into();
    }
    for architecture in std::iter::once(&map.architecture).chain(&map.parents) {
        if let Err(invalid) = architecture.validate("architecture") {
            return describe(Err::<(), _>(invalid), |()| String::new());
        }
    }
    // As the coordinator builds them: a parent index always names a parent.
    let modules: Vec<Module> = map
        .modules
        .into_iter()
        .map(|(target_prefix, parent, source_prefix)| Module {
            target_prefix,
            parent: parent % map.parents.len(),
            source_prefix,
        })
        .collect();
    let names = map.architecture.names();
    let planned =
        TrainablePatterns::parse("trainable", &map.trainable, &names).and_then(|trainable| {
            plan_compose(
                "modules",
                &map.architecture,
                &modules,
                &map.parents,
                &trainable,
            )
        });
    describe(planned, |plan| {
        assert_eq!(
            plan.len(),
            names.len(),
            "the plan covers every target tensor"
        );
        format!("2^{} tensors", magnitude(plan.len()))
    })
}

fn manifest(data: &[u8]) -> String {
    let Ok(request) = pb::ImportModelRequest::decode(data) else {
        return "undecodable".into();
    };
    let checked = limits::check_tensors(
        "tensors",
        request
            .tensors
            .iter()
            .map(|t| (&t.name[..], &t.shape[..], &t.sha256[..])),
    )
    .and_then(|()| {
        request
            .architecture
            .ok_or_else(|| Invalid::new("architecture", "is required"))?
            .to_core("architecture")
    })
    .and_then(|architecture| {
        architecture.validate("architecture")?;
        let infos: Vec<TensorInfo> = request
            .tensors
            .iter()
            .map(|t| TensorInfo {
                name: t.name.clone(),
                dtype: t.dtype.clone(),
                shape: t.shape.iter().map(|&d| d as usize).collect(),
            })
            .collect();
        check_manifest("tensors", &infos, &architecture)
    });
    describe(checked, |()| {
        format!("2^{} tensors", magnitude(request.tensors.len()))
    })
}

fn safetensors(data: &[u8]) -> String {
    let infos = describe(read_tensor_infos("weights", data), |infos| {
        format!("2^{} tensors", magnitude(infos.len()))
    });
    let hashes = describe(tensor_hashes("weights", data), |hashed| {
        for tensor in &hashed {
            assert!(
                tensor.range.end <= data.len(),
                "a tensor's bytes lie in the file"
            );
            assert!(limits::is_sha256(&tensor.sha256));
        }
        String::new()
    });
    let dataset = describe(read_dataset_info("dataset", data), |info| {
        format!("2^{} examples", magnitude(info.num_examples as usize))
    });
    format!("{infos} | {hashes} | {dataset}")
}

/// Inputs every run starts from, besides `fuzz/corpus/<target>/`: one valid input of
/// each shape the target knows.
pub fn seeds(target: &str) -> Vec<Vec<u8>> {
    let json = |text: &str| text.as_bytes().to_vec();
    let architectures = [
        r#"{"mlp":{"input_features":64,"hidden":[128,64],"num_classes":5}}"#,
        r#"{"small_cnn":{"in_channels":1,"height":8,"width":8,"channels":[8,16],"num_classes":10}}"#,
        r#"{"resnet":{"depth":18,"in_channels":3,"height":32,"width":32,"num_classes":10}}"#,
        r#"{"vgg":{"depth":11,"in_channels":3,"height":32,"width":32,"num_classes":10,"batch_norm":true}}"#,
        r#"{"torchscript":{"input_shape":[3,32,32],"output_size":10,"head":5}}"#,
    ];
    let specs: Vec<Architecture> = architectures
        .iter()
        .filter_map(|text| serde_json::from_str(text).ok())
        .collect();
    match target {
        "architecture_json" => architectures.iter().map(|a| json(a)).collect(),
        "architecture_proto" => specs
            .iter()
            .map(|a| pb::Architecture::from(a).encode_to_vec())
            .collect(),
        "hyperparameters" => vec![
            pb::Hyperparameters {
                epochs: 3,
                batch_size: 32,
                learning_rate: 0.01,
                seed: 7,
                ..Default::default()
            }
            .encode_to_vec(),
            Vec::new(),
        ],
        "patterns" => vec![
            json(
                "fc.*\nhidden.1.*\n\nhidden.0.weight\nhidden.0.bias\nhidden.1.weight\nfc.weight\nfc.bias",
            ),
            json("*\n\nlayer4.1.conv1.weight\nfc.bias"),
            json("a*b*c\n\nabc\naXbYc\nacb"),
        ],
        "module_map" => vec![json(&format!(
            r#"{{"architecture":{0},"parents":[{0},{0}],"modules":[["hidden.0",0,"hidden.0"],["hidden.1",1,"hidden.1"]],"trainable":["fc.*"]}}"#,
            architectures[0]
        ))],
        "manifest" => specs
            .iter()
            .take(4)
            .map(|architecture| {
                pb::ImportModelRequest {
                    name: "seed".into(),
                    architecture: Some(architecture.into()),
                    tensors: architecture
                        .parameters()
                        .into_iter()
                        .map(|tensor| pb::ManifestTensor {
                            name: tensor.name,
                            dtype: tensor.dtype.to_string(),
                            shape: tensor.shape.iter().map(|&d| d as u64).collect(),
                            sha256: "0".repeat(64),
                        })
                        .collect(),
                    ..Default::default()
                }
                .encode_to_vec()
            })
            .collect(),
        "safetensors" => vec![small_safetensors(), dataset_safetensors()],
        _ => Vec::new(),
    }
}

fn small_safetensors() -> Vec<u8> {
    let weight = vec![0u8; 4 * 2 * 3];
    let bias = vec![0u8; 4 * 2];
    let views = [
        (
            "fc.weight",
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![2, 3], &weight)
                .unwrap(),
        ),
        (
            "fc.bias",
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![2], &bias).unwrap(),
        ),
    ];
    safetensors::serialize(views, None).unwrap()
}

fn dataset_safetensors() -> Vec<u8> {
    let x: Vec<u8> = (0..4 * 3).flat_map(|i| (i as f32).to_le_bytes()).collect();
    let y: Vec<u8> = [0i64, 1, 2, 1]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let views = [
        (
            "x",
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![4, 3], &x).unwrap(),
        ),
        (
            "y",
            safetensors::tensor::TensorView::new(safetensors::Dtype::I64, vec![4], &y).unwrap(),
        ),
    ];
    safetensors::serialize(views, None).unwrap()
}

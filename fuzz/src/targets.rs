//! The targets: each feeds arbitrary bytes to the same functions the coordinator and
//! the worker run on requests, and describes what came out.

use crate::Target;
use heirloom_core::{
    Architecture, Invalid, Module, TensorInfo, TrainablePatterns, check_finite_part,
    check_manifest, first_non_finite, limits, pattern_matches, plan_compose, plan_scratch,
    read_dataset_info, read_tensor_infos, tensor_hashes,
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
    Target {
        name: "reference",
        run: reference,
        dictionary: &["@", "@1", "@0", "@-1", "@+3", "@2147483648", "ds", "."],
    },
    Target {
        name: "recipe",
        run: recipe,
        dictionary: RECIPE_WORDS,
    },
    Target {
        name: "finite",
        run: finite,
        // Seeds hold NaN and infinity of each width; raw bytes are not `&str` tokens.
        dictionary: &[],
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

const RECIPE_WORDS: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    "\"",
    "null",
    "0",
    "1",
    "-1",
    "1e309",
    "\u{0}",
    "\"kind\"",
    "\"train\"",
    "\"finetune\"",
    "\"transfer\"",
    "\"direct\"",
    "\"compose\"",
    "\"architecture\"",
    "\"hyperparameters\"",
    "\"epochs\"",
    "\"batch_size\"",
    "\"learning_rate\"",
    "\"trainable\"",
    "\"num_classes\"",
    "\"alpha\"",
    "\"scale\"",
    "\"modules\"",
    "\"parent\"",
    "\"unfreeze_blocks\"",
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

/// A recipe body and a merge patch (separated by a NUL byte), as CreateRecipe and a
/// job's `recipe_overrides_json` take them: a parsed recipe's canonical JSON parses to
/// itself, and the patch between two bodies turns one into the other.
fn recipe(data: &[u8]) -> String {
    use heirloom_coordinator::recipes::{Recipe, merge_patch, parse_json, patch_between};
    let text = String::from_utf8_lossy(data);
    let (body, patch) = text.split_once('\0').unwrap_or((&text, ""));
    let Ok(body) = parse_json("body", body) else {
        return "json".into();
    };
    let parsed = match Recipe::parse("body", &body) {
        Ok(recipe) => {
            let canonical = recipe.to_json();
            let again = Recipe::parse("body", &canonical)
                .unwrap_or_else(|err| panic!("{canonical} no longer parses: {err}"));
            assert_eq!(
                again.to_json(),
                canonical,
                "the canonical body is a fixed point"
            );
            "ok".to_string()
        }
        Err(err) => format!("refused {}", gist(&err.to_string())),
    };
    let Ok(patch) = parse_json("patch", patch) else {
        return format!("{parsed} | no patch");
    };
    let mut patched = body.clone();
    merge_patch(&mut patched, &patch);
    if !contains_null(&patched) {
        let mut rebuilt = body.clone();
        merge_patch(&mut rebuilt, &patch_between(&body, &patched));
        assert_eq!(rebuilt, patched, "patch_between(a, b) turns a into b");
    }
    let outcome = match Recipe::parse("body", &patched) {
        Ok(_) => "ok".to_string(),
        Err(err) => format!("refused {}", gist(&err.to_string())),
    };
    format!("{parsed} | patched {outcome}")
}

/// Whether `value` holds a `null` anywhere (a merge patch can only remove keys, never
/// write a null, so such a target cannot be reached by one).
fn contains_null(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::Null => true,
        serde_json::Value::Array(items) => items.iter().any(contains_null),
        serde_json::Value::Object(map) => map.values().any(contains_null),
        _ => false,
    }
}

/// `name@version` references to datasets and recipes: a version is a whole number from
/// 1, and what is accepted writes back as it was read.
fn reference(data: &[u8]) -> String {
    let text = String::from_utf8_lossy(data);
    describe(
        limits::split_version("reference", &text),
        |(name, version)| {
            match version {
                None => assert_eq!(name, text, "a reference without @ is all name"),
                Some(version) => {
                    assert!(version >= 1, "versions start at 1");
                    let written = format!("{name}@{version}");
                    assert_eq!(
                        limits::split_version("reference", &written).ok(),
                        Some((name, Some(version))),
                        "{written} reads back"
                    );
                }
            }
            format!("versioned {}", version.is_some())
        },
    )
}

/// The finite check on arbitrary tensor bytes: the first byte picks the dtype, the
/// second where a stream would split the tensor. Checked against the standard library's
/// `is_finite` for f32 and f64, and whole against split (as uploads arrive in chunks).
fn finite(data: &[u8]) -> String {
    const DTYPES: [&str; 6] = ["f32", "f64", "f16", "bf16", "i64", "u8"];
    let (Some(&pick), Some(&split)) = (data.first(), data.get(1)) else {
        return "short".into();
    };
    let dtype = DTYPES[pick as usize % DTYPES.len()];
    let bytes = &data[2..];
    let whole = first_non_finite(dtype, bytes);
    let width = match dtype {
        "f64" | "i64" => 8,
        "f32" => 4,
        "f16" | "bf16" => 2,
        _ => 1,
    };
    let oracle = match dtype {
        "f32" => bytes
            .chunks_exact(4)
            .position(|v| !f32::from_le_bytes(v.try_into().unwrap()).is_finite()),
        "f64" => bytes
            .chunks_exact(8)
            .position(|v| !f64::from_le_bytes(v.try_into().unwrap()).is_finite()),
        _ => whole.map(|(index, _)| index),
    };
    assert_eq!(
        whole.map(|(index, _)| index),
        oracle,
        "{dtype} agrees with std"
    );
    if matches!(dtype, "i64" | "u8") {
        assert!(whole.is_none(), "integers are always finite");
    }
    let cut = (split as usize * width).min(bytes.len() / width * width);
    let (first, second) = bytes.split_at(cut);
    let parts = check_finite_part("t", "x", dtype, first, 0)
        .and_then(|()| check_finite_part("t", "x", dtype, second, cut));
    match (whole, parts) {
        (None, Ok(())) => format!("ok {dtype}"),
        (Some((index, value)), Err(invalid)) => {
            assert!(
                invalid.reason.contains(&format!("at element {index}:")),
                "the split check names the element the whole one found: {invalid:?}"
            );
            format!("{dtype} {value}")
        }
        (whole, parts) => panic!("whole {whole:?} but in parts {parts:?}"),
    }
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
                epochs: Some(3),
                batch_size: Some(32),
                learning_rate: Some(0.01),
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
        "recipe" => vec![
            json(&format!(
                r#"{{"kind":"train","architecture":{},"hyperparameters":{{"epochs":3}}}}"#,
                architectures[0]
            )),
            json(
                "{\"kind\":\"finetune\",\"trainable\":[\"fc.*\"]}\u{0}{\"hyperparameters\":{\"epochs\":0}}",
            ),
            json("{\"kind\":\"transfer\",\"num_classes\":4}\u{0}{\"num_classes\":null}"),
        ],
        "reference" => vec![json("digits@3"), json("digits"), json("ds@-1")],
        "finite" => vec![
            [
                &[0u8, 1][..],
                &1.5f32.to_le_bytes(),
                &f32::NAN.to_le_bytes(),
            ]
            .concat(),
            [&[1u8, 0][..], &f64::INFINITY.to_le_bytes()].concat(),
            vec![2, 3, 0, 0x7c, 0, 0x3c],
            vec![3, 0, 0x80, 0xff],
        ],
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

//! Transformer language models, configured with the field names of Hugging Face
//! `transformers`' configs and holding exactly the state dict its `save_pretrained`
//! writes (names, shapes, dtypes): the Llama family (`LlamaConfig`, which Mistral and Qwen
//! share) and GPT-2 (`GPT2Config`, with the `Conv1D` layout that stores linear weights as
//! `[in, out]`). Tied word embeddings are one tensor, as transformers saves them: the
//! head reads the embedding and `lm_head.weight` is absent.

use crate::Invalid;
use crate::architecture::{Init, TensorSpec};
use serde::{Deserialize, Serialize};

/// The largest vocabulary a language model may have.
pub const MAX_VOCABULARY: u32 = 1 << 22;
/// The longest sequence a language model may be configured for.
pub const MAX_POSITIONS: u32 = 1 << 20;
/// The largest width of any of its layers.
const MAX_WIDTH: u32 = 1 << 17;
const MAX_LAYERS: u32 = 512;
/// transformers' `initializer_range` default, for both families.
const INITIALIZER_RANGE: f64 = 0.02;

/// How a model's weights are stored, as transformers names the dtypes in a config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WeightDtype {
    #[default]
    Float32,
    Bfloat16,
    Float16,
}

impl WeightDtype {
    /// The dtype's name in a safetensors file (lowercase), as manifests record it.
    pub fn safetensors(self) -> &'static str {
        match self {
            WeightDtype::Float32 => "f32",
            WeightDtype::Bfloat16 => "bf16",
            WeightDtype::Float16 => "f16",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            WeightDtype::Float32 => "float32",
            WeightDtype::Bfloat16 => "bfloat16",
            WeightDtype::Float16 => "float16",
        }
    }

    pub fn bytes(self) -> u64 {
        match self {
            WeightDtype::Float32 => 4,
            WeightDtype::Bfloat16 | WeightDtype::Float16 => 2,
        }
    }

    fn is_float32(&self) -> bool {
        *self == WeightDtype::Float32
    }
}

fn default_rms_norm_eps() -> f64 {
    Llama::DEFAULT_RMS_NORM_EPS
}
fn default_rope_theta() -> f64 {
    Llama::DEFAULT_ROPE_THETA
}
fn default_layer_norm_epsilon() -> f64 {
    Gpt2::DEFAULT_LAYER_NORM_EPSILON
}
fn default_gpt2_dropout() -> f64 {
    Gpt2::DEFAULT_DROPOUT
}
fn yes() -> bool {
    true
}

/// `LlamaForCausalLM`: RMSNorm, rotary position embeddings (`rope_theta`, the default
/// rope type), grouped-query attention (`num_key_value_heads`), a SwiGLU MLP.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Llama {
    pub vocab_size: u32,
    pub hidden_size: u32,
    pub intermediate_size: u32,
    pub num_hidden_layers: u32,
    pub num_attention_heads: u32,
    /// Unset: `num_attention_heads` (multi-head attention).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_key_value_heads: Option<u32>,
    /// Unset: `hidden_size / num_attention_heads`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_dim: Option<u32>,
    pub max_position_embeddings: u32,
    #[serde(default = "default_rms_norm_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tie_word_embeddings: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub attention_bias: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mlp_bias: bool,
    #[serde(default)]
    pub attention_dropout: f64,
    #[serde(default, skip_serializing_if = "WeightDtype::is_float32")]
    pub dtype: WeightDtype,
}

/// Validation refuses every float that is not finite, so equality is an equivalence.
impl Eq for Llama {}

/// `GPT2LMHeadModel`: learned positions, LayerNorm, the tanh GELU (`gelu_new`), fused
/// `c_attn`, and `Conv1D` weights stored `[in, out]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gpt2 {
    pub vocab_size: u32,
    pub n_positions: u32,
    pub n_embd: u32,
    pub n_layer: u32,
    pub n_head: u32,
    /// Unset: `4 * n_embd`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n_inner: Option<u32>,
    #[serde(default = "default_layer_norm_epsilon")]
    pub layer_norm_epsilon: f64,
    /// transformers ties GPT-2's head to its embedding unless told otherwise.
    #[serde(default = "yes")]
    pub tie_word_embeddings: bool,
    #[serde(default = "default_gpt2_dropout")]
    pub resid_pdrop: f64,
    #[serde(default = "default_gpt2_dropout")]
    pub embd_pdrop: f64,
    #[serde(default = "default_gpt2_dropout")]
    pub attn_pdrop: f64,
    #[serde(default, skip_serializing_if = "WeightDtype::is_float32")]
    pub dtype: WeightDtype,
}

/// Validation refuses every float that is not finite, so equality is an equivalence.
impl Eq for Gpt2 {}

impl Llama {
    /// transformers' defaults for the fields a config may leave out.
    pub const DEFAULT_RMS_NORM_EPS: f64 = 1e-6;
    pub const DEFAULT_ROPE_THETA: f64 = 10_000.0;

    pub fn key_value_heads(&self) -> u32 {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    pub fn head_size(&self) -> u32 {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    pub fn validate(&self, field: &str) -> Result<(), Invalid> {
        let at = |name: &str| format!("{field}.{name}");
        bounded(&at("vocab_size"), self.vocab_size, MAX_VOCABULARY)?;
        bounded(&at("hidden_size"), self.hidden_size, MAX_WIDTH)?;
        bounded(&at("intermediate_size"), self.intermediate_size, MAX_WIDTH)?;
        bounded(&at("num_hidden_layers"), self.num_hidden_layers, MAX_LAYERS)?;
        bounded(
            &at("num_attention_heads"),
            self.num_attention_heads,
            MAX_WIDTH,
        )?;
        bounded(
            &at("max_position_embeddings"),
            self.max_position_embeddings,
            MAX_POSITIONS,
        )?;
        let heads = self.num_attention_heads;
        if let Some(kv) = self.num_key_value_heads {
            bounded(&at("num_key_value_heads"), kv, heads)?;
            if !heads.is_multiple_of(kv) {
                return Err(Invalid::new(
                    at("num_key_value_heads"),
                    format!(
                        "must divide num_attention_heads ({heads}) for grouped-query attention, got {kv}"
                    ),
                ));
            }
        }
        match self.head_dim {
            Some(head_dim) => bounded(&at("head_dim"), head_dim, MAX_WIDTH)?,
            None if !self.hidden_size.is_multiple_of(heads) => {
                return Err(Invalid::new(
                    at("num_attention_heads"),
                    format!(
                        "must divide hidden_size ({}), or set head_dim; got {heads}",
                        self.hidden_size
                    ),
                ));
            }
            None => {}
        }
        if !self.head_size().is_multiple_of(2) {
            return Err(Invalid::new(
                at("head_dim"),
                format!(
                    "rotary embeddings rotate pairs: the head size must be even, is {}",
                    self.head_size()
                ),
            ));
        }
        if u64::from(self.head_size()) * u64::from(heads) > u64::from(MAX_WIDTH) {
            return Err(Invalid::new(
                at("num_attention_heads"),
                format!("heads × head size must be at most {MAX_WIDTH}"),
            ));
        }
        positive_float(&at("rms_norm_eps"), self.rms_norm_eps)?;
        positive_float(&at("rope_theta"), self.rope_theta)?;
        probability(&at("attention_dropout"), self.attention_dropout)
    }

    pub fn parameters(&self) -> Vec<TensorSpec> {
        let (hidden, inner) = (self.hidden_size as usize, self.intermediate_size as usize);
        let queries = (self.num_attention_heads * self.head_size()) as usize;
        let keys = (self.key_value_heads() * self.head_size()) as usize;
        let mut tensors = StateDict::new(self.dtype);
        let normal = Init::Normal(INITIALIZER_RANGE);
        let vocabulary = self.vocab_size as usize;
        tensors.push(
            "model.embed_tokens.weight",
            vec![vocabulary, hidden],
            normal,
        );
        for layer in 0..self.num_hidden_layers {
            let at = |name: &str| format!("model.layers.{layer}.{name}");
            let attention_bias = self.attention_bias.then_some(Init::Zeros);
            let mlp_bias = self.mlp_bias.then_some(Init::Zeros);
            tensors.linear(
                &at("self_attn.q_proj"),
                hidden,
                queries,
                normal,
                attention_bias,
            );
            tensors.linear(
                &at("self_attn.k_proj"),
                hidden,
                keys,
                normal,
                attention_bias,
            );
            tensors.linear(
                &at("self_attn.v_proj"),
                hidden,
                keys,
                normal,
                attention_bias,
            );
            tensors.linear(
                &at("self_attn.o_proj"),
                queries,
                hidden,
                normal,
                attention_bias,
            );
            tensors.linear(&at("mlp.gate_proj"), hidden, inner, normal, mlp_bias);
            tensors.linear(&at("mlp.up_proj"), hidden, inner, normal, mlp_bias);
            tensors.linear(&at("mlp.down_proj"), inner, hidden, normal, mlp_bias);
            tensors.push(&at("input_layernorm.weight"), vec![hidden], Init::Ones);
            tensors.push(
                &at("post_attention_layernorm.weight"),
                vec![hidden],
                Init::Ones,
            );
        }
        tensors.push("model.norm.weight", vec![hidden], Init::Ones);
        if !self.tie_word_embeddings {
            tensors.push("lm_head.weight", vec![vocabulary, hidden], normal);
        }
        tensors.0
    }
}

impl Gpt2 {
    /// transformers' defaults for the fields a config may leave out.
    pub const DEFAULT_LAYER_NORM_EPSILON: f64 = 1e-5;
    pub const DEFAULT_DROPOUT: f64 = 0.1;

    pub fn inner_size(&self) -> u32 {
        self.n_inner.unwrap_or(4 * self.n_embd)
    }

    pub fn validate(&self, field: &str) -> Result<(), Invalid> {
        let at = |name: &str| format!("{field}.{name}");
        bounded(&at("vocab_size"), self.vocab_size, MAX_VOCABULARY)?;
        bounded(&at("n_positions"), self.n_positions, MAX_POSITIONS)?;
        bounded(&at("n_embd"), self.n_embd, MAX_WIDTH / 4)?;
        bounded(&at("n_layer"), self.n_layer, MAX_LAYERS)?;
        bounded(&at("n_head"), self.n_head, self.n_embd.max(1))?;
        if !self.n_embd.is_multiple_of(self.n_head) {
            return Err(Invalid::new(
                at("n_head"),
                format!("must divide n_embd ({}), got {}", self.n_embd, self.n_head),
            ));
        }
        if let Some(inner) = self.n_inner {
            bounded(&at("n_inner"), inner, MAX_WIDTH)?;
        }
        positive_float(&at("layer_norm_epsilon"), self.layer_norm_epsilon)?;
        probability(&at("resid_pdrop"), self.resid_pdrop)?;
        probability(&at("embd_pdrop"), self.embd_pdrop)?;
        probability(&at("attn_pdrop"), self.attn_pdrop)
    }

    pub fn parameters(&self) -> Vec<TensorSpec> {
        let (width, inner) = (self.n_embd as usize, self.inner_size() as usize);
        let mut tensors = StateDict::new(self.dtype);
        let normal = Init::Normal(INITIALIZER_RANGE);
        // GPT-2 scales the residual projections' initialisation by 1/sqrt(2 · layers).
        let residual = Init::Normal(INITIALIZER_RANGE / (2.0 * f64::from(self.n_layer)).sqrt());
        let (vocabulary, positions) = (self.vocab_size as usize, self.n_positions as usize);
        tensors.push("transformer.wte.weight", vec![vocabulary, width], normal);
        tensors.push("transformer.wpe.weight", vec![positions, width], normal);
        for layer in 0..self.n_layer {
            let at = |name: &str| format!("transformer.h.{layer}.{name}");
            tensors.layer_norm(&at("ln_1"), width);
            tensors.conv1d(&at("attn.c_attn"), width, 3 * width, normal);
            tensors.conv1d(&at("attn.c_proj"), width, width, residual);
            tensors.layer_norm(&at("ln_2"), width);
            tensors.conv1d(&at("mlp.c_fc"), width, inner, normal);
            tensors.conv1d(&at("mlp.c_proj"), inner, width, residual);
        }
        tensors.layer_norm("transformer.ln_f", width);
        if !self.tie_word_embeddings {
            tensors.push("lm_head.weight", vec![vocabulary, width], normal);
        }
        tensors.0
    }
}

/// A state dict being listed, every tensor in the model's dtype.
struct StateDict(Vec<TensorSpec>, WeightDtype);

impl StateDict {
    fn new(dtype: WeightDtype) -> StateDict {
        StateDict(Vec::new(), dtype)
    }

    fn push(&mut self, name: &str, shape: Vec<usize>, init: Init) {
        self.0.push(TensorSpec {
            name: name.to_string(),
            shape,
            init,
            buffer: false,
            dtype: self.1.safetensors(),
        });
    }

    /// `torch.nn.Linear`: the weight `[out, in]`, a bias when it has one.
    fn linear(
        &mut self,
        prefix: &str,
        inputs: usize,
        outputs: usize,
        init: Init,
        bias: Option<Init>,
    ) {
        self.push(&format!("{prefix}.weight"), vec![outputs, inputs], init);
        if let Some(bias) = bias {
            self.push(&format!("{prefix}.bias"), vec![outputs], bias);
        }
    }

    /// transformers' `Conv1D`: a linear layer whose weight is stored `[in, out]`.
    fn conv1d(&mut self, prefix: &str, inputs: usize, outputs: usize, init: Init) {
        self.push(&format!("{prefix}.weight"), vec![inputs, outputs], init);
        self.push(&format!("{prefix}.bias"), vec![outputs], Init::Zeros);
    }

    fn layer_norm(&mut self, prefix: &str, width: usize) {
        self.push(&format!("{prefix}.weight"), vec![width], Init::Ones);
        self.push(&format!("{prefix}.bias"), vec![width], Init::Zeros);
    }
}

fn bounded(field: &str, value: u32, most: u32) -> Result<(), Invalid> {
    if value == 0 {
        return Err(Invalid::new(field, "must be greater than 0"));
    }
    if value > most {
        return Err(Invalid::new(
            field,
            format!("must be at most {most}, got {value}"),
        ));
    }
    Ok(())
}

fn positive_float(field: &str, value: f64) -> Result<(), Invalid> {
    if !(value.is_finite() && value > 0.0) {
        return Err(Invalid::new(
            field,
            format!("must be a finite number above 0, got {value}"),
        ));
    }
    Ok(())
}

fn probability(field: &str, value: f64) -> Result<(), Invalid> {
    if !(value.is_finite() && (0.0..1.0).contains(&value)) {
        return Err(Invalid::new(
            field,
            format!("a dropout probability must be in [0, 1), got {value}"),
        ));
    }
    Ok(())
}

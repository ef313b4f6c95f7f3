//! The forward passes of the language models, written as `transformers` writes them
//! (LlamaForCausalLM, GPT2LMHeadModel), so weights from it give its logits here: the
//! same casts (RMSNorm and the rotary tables in float32, everything else in the weights'
//! dtype), attention through libtorch's `scaled_dot_product_attention` (the flash and
//! memory-efficient kernels on CUDA) with a causal mask.
//!
//! A mixed precision casts as PyTorch's autocast does: the matrix products (linear
//! layers, `Conv1D`'s addmm, attention) take their inputs in the 16-bit dtype, and
//! everything else runs in the weights' float32 — embeddings, norms, the residual stream
//! (a 16-bit product added to it comes back float32) and the rotary tables.

use heirloom_core::{Gpt2, Llama};
use tch::{Kind, Tensor};

/// The tensors of a model by state-dict name.
pub trait Weights {
    fn weight(&self, name: &str) -> &Tensor;
    fn has(&self, name: &str) -> bool;
}

// The residual sums are written `h = &h + …`, never `h += …`: that would add in place
// into a tensor the backward pass still needs.

/// Logits `[batch, sequence, vocabulary]` for token ids `[batch, sequence]`.
/// `pad`: the padding token, which no position attends to.
/// How one forward pass runs: padding to mask, training (dropout), and a mixed
/// precision's dtype for the matrix products.
#[derive(Debug, Clone, Copy)]
pub struct Pass {
    pub pad: Option<i64>,
    pub training: bool,
    pub compute: Option<Kind>,
}

impl Pass {
    /// `x` as a matrix product takes it.
    fn cast(&self, x: &Tensor) -> Tensor {
        match self.compute {
            Some(kind) if x.is_floating_point() => x.to_kind(kind),
            _ => x.shallow_clone(),
        }
    }
}

pub fn llama(spec: &Llama, weights: &impl Weights, tokens: &Tensor, pass: Pass) -> Tensor {
    let (batch, length) = (tokens.size()[0], tokens.size()[1]);
    let heads = i64::from(spec.num_attention_heads);
    let key_value_heads = i64::from(spec.key_value_heads());
    let head_size = i64::from(spec.head_size());
    let embedding = weights.weight("model.embed_tokens.weight");
    let mut h = Tensor::embedding(embedding, tokens, -1, false, false);
    let (cos, sin) = rotary_tables(spec, length, h.device(), h.kind());
    let mask = pass.pad.map(|pad| padding_mask(tokens, pad));
    let dropout = if pass.training {
        spec.attention_dropout
    } else {
        0.0
    };
    for layer in 0..spec.num_hidden_layers {
        let at = |name: &str| format!("model.layers.{layer}.{name}");
        let linear = |x: &Tensor, name: &str| linear(weights, x, &at(name), pass);
        let x = rms_norm(
            &h,
            weights.weight(&at("input_layernorm.weight")),
            spec.rms_norm_eps,
        );
        let split =
            |t: Tensor, count: i64| t.view([batch, length, count, head_size]).transpose(1, 2);
        let q = rotate(&split(linear(&x, "self_attn.q_proj"), heads), &cos, &sin);
        let k = rotate(
            &split(linear(&x, "self_attn.k_proj"), key_value_heads),
            &cos,
            &sin,
        );
        let v = split(linear(&x, "self_attn.v_proj"), key_value_heads);
        let attended = attention(
            &q,
            &k,
            &v,
            heads / key_value_heads,
            dropout,
            mask.as_ref(),
            pass,
        );
        let attended = attended
            .transpose(1, 2)
            .reshape([batch, length, heads * head_size]);
        h = &h + linear(&attended, "self_attn.o_proj");
        let x = rms_norm(
            &h,
            weights.weight(&at("post_attention_layernorm.weight")),
            spec.rms_norm_eps,
        );
        let gated = linear(&x, "mlp.gate_proj").silu() * linear(&x, "mlp.up_proj");
        h = &h + linear(&gated, "mlp.down_proj");
    }
    let h = rms_norm(&h, weights.weight("model.norm.weight"), spec.rms_norm_eps);
    pass.cast(&h)
        .linear::<&Tensor>(&pass.cast(head(weights, "model.embed_tokens.weight")), None)
}

/// Logits `[batch, sequence, vocabulary]` for token ids `[batch, sequence]`.
/// No position attends to `pass.pad`.
pub fn gpt2(spec: &Gpt2, weights: &impl Weights, tokens: &Tensor, pass: Pass) -> Tensor {
    let (batch, length) = (tokens.size()[0], tokens.size()[1]);
    let heads = i64::from(spec.n_head);
    let width = i64::from(spec.n_embd);
    let head_size = width / heads;
    let dropout = |x: Tensor, p: f64| x.dropout(p, pass.training);
    let positions = Tensor::arange(length, (Kind::Int64, tokens.device()));
    let embedded = Tensor::embedding(
        weights.weight("transformer.wte.weight"),
        tokens,
        -1,
        false,
        false,
    ) + Tensor::embedding(
        weights.weight("transformer.wpe.weight"),
        &positions,
        -1,
        false,
        false,
    );
    let mut h = dropout(embedded, spec.embd_pdrop);
    let attention_dropout = if pass.training { spec.attn_pdrop } else { 0.0 };
    let mask = pass.pad.map(|pad| padding_mask(tokens, pad));
    for layer in 0..spec.n_layer {
        let at = |name: &str| format!("transformer.h.{layer}.{name}");
        let norm =
            |x: &Tensor, name: &str| layer_norm(weights, x, &at(name), spec.layer_norm_epsilon);
        let conv1d = |x: &Tensor, name: &str| conv1d(weights, x, &at(name), pass);
        let qkv = conv1d(&norm(&h, "ln_1"), "attn.c_attn");
        let split = |t: &Tensor| t.view([batch, length, heads, head_size]).transpose(1, 2);
        let parts = qkv.split(width, 2);
        let (q, k, v) = (split(&parts[0]), split(&parts[1]), split(&parts[2]));
        let attended = attention(&q, &k, &v, 1, attention_dropout, mask.as_ref(), pass)
            .transpose(1, 2)
            .reshape([batch, length, width]);
        h = &h + dropout(conv1d(&attended, "attn.c_proj"), spec.resid_pdrop);
        let inner = conv1d(&norm(&h, "ln_2"), "mlp.c_fc").gelu("tanh");
        h = &h + dropout(conv1d(&inner, "mlp.c_proj"), spec.resid_pdrop);
    }
    let h = layer_norm(weights, &h, "transformer.ln_f", spec.layer_norm_epsilon);
    pass.cast(&h)
        .linear::<&Tensor>(&pass.cast(head(weights, "transformer.wte.weight")), None)
}

/// `lm_head.weight`, or the embedding when the two are tied.
fn head<'a>(weights: &'a impl Weights, embedding: &str) -> &'a Tensor {
    if weights.has("lm_head.weight") {
        weights.weight("lm_head.weight")
    } else {
        weights.weight(embedding)
    }
}

/// Causal scaled dot-product attention over `[batch, heads, sequence, head size]`, each
/// key/value head shared by `group` query heads (grouped-query attention: libtorch's own
/// when nothing is masked, as transformers asks for it; otherwise expanded as its
/// `repeat_kv` does). `mask`: `true` where a position may be attended to.
fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    group: i64,
    dropout: f64,
    mask: Option<&Tensor>,
    pass: Pass,
) -> Tensor {
    let (q, k, v) = (pass.cast(q), pass.cast(k), pass.cast(v));
    let repeat = |t: &Tensor| {
        let [batch, heads, length, size] = t.size()[..] else {
            unreachable!("attention takes [batch, heads, sequence, head size]")
        };
        t.unsqueeze(2)
            .expand([batch, heads, group, length, size], false)
            .reshape([batch, heads * group, length, size])
    };
    match mask {
        None => Tensor::scaled_dot_product_attention::<Tensor>(
            &q,
            &k,
            &v,
            None,
            dropout,
            true,
            None,
            group > 1,
        ),
        Some(mask) if group > 1 => Tensor::scaled_dot_product_attention(
            &q,
            &repeat(&k),
            &repeat(&v),
            Some(mask),
            dropout,
            false,
            None,
            false,
        ),
        Some(mask) => Tensor::scaled_dot_product_attention(
            &q,
            &k,
            &v,
            Some(mask),
            dropout,
            false,
            None,
            false,
        ),
    }
}

/// Which keys each query may attend to, `[batch, 1, sequence, sequence]`: those at or
/// before it that are not padding, and always itself (a padding query attends only to
/// itself, so no row of the softmax is empty; its output is never scored).
fn padding_mask(tokens: &Tensor, pad: i64) -> Tensor {
    let length = tokens.size()[1];
    let options = (Kind::Bool, tokens.device());
    let causal = Tensor::ones([length, length], options).tril(0);
    let keys = tokens.ne(pad).unsqueeze(1).unsqueeze(1);
    let own = Tensor::eye(length, options);
    causal.logical_and(&keys).logical_or(&own)
}

/// LlamaRMSNorm: normalised in float32, scaled in the weights' dtype.
fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Tensor {
    let wide = x.to_kind(Kind::Float);
    let variance = wide.pow_tensor_scalar(2).mean_dim(-1, true, Kind::Float);
    let normed = wide * (variance + eps).rsqrt();
    weight * normed.to_kind(x.kind())
}

/// The rotary tables (cos, sin), `[sequence, head size]`, computed in float32 as
/// LlamaRotaryEmbedding does with the default rope type, then cast to `kind`.
fn rotary_tables(spec: &Llama, length: i64, device: tch::Device, kind: Kind) -> (Tensor, Tensor) {
    let size = i64::from(spec.head_size());
    let exponents = Tensor::arange_start_step(0, size, 2, (Kind::Int64, device))
        .to_kind(Kind::Float)
        / size as f64;
    let inverse_frequencies = Tensor::pow_scalar(spec.rope_theta, &exponents).reciprocal();
    let positions = Tensor::arange(length, (Kind::Float, device));
    let angles = positions
        .unsqueeze(1)
        .matmul(&inverse_frequencies.unsqueeze(0));
    let angles = Tensor::cat(&[&angles, &angles], -1);
    (angles.cos().to_kind(kind), angles.sin().to_kind(kind))
}

/// Rotates pairs of `x` `[batch, heads, sequence, head size]` by the tables.
fn rotate(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
    let half = x.size()[3] / 2;
    let rotated = Tensor::cat(&[&x.narrow(3, half, half).neg(), &x.narrow(3, 0, half)], -1);
    x * cos + rotated * sin
}

fn linear(weights: &impl Weights, x: &Tensor, prefix: &str, pass: Pass) -> Tensor {
    let bias = format!("{prefix}.bias");
    let bias = weights.has(&bias).then(|| pass.cast(weights.weight(&bias)));
    pass.cast(x).linear(
        &pass.cast(weights.weight(&format!("{prefix}.weight"))),
        bias.as_ref(),
    )
}

/// transformers' `Conv1D`: `x · W + b` with `W` stored `[in, out]`.
fn conv1d(weights: &impl Weights, x: &Tensor, prefix: &str, pass: Pass) -> Tensor {
    let weight = pass.cast(weights.weight(&format!("{prefix}.weight")));
    let bias = pass.cast(weights.weight(&format!("{prefix}.bias")));
    let x = pass.cast(x);
    let size = x.size();
    let rows = x.reshape([-1, size[size.len() - 1]]);
    let mut out_size = size.clone();
    *out_size.last_mut().expect("a batch of rows") = weight.size()[1];
    bias.addmm(&rows, &weight).reshape(out_size)
}

fn layer_norm(weights: &impl Weights, x: &Tensor, prefix: &str, eps: f64) -> Tensor {
    let width = x.size()[x.dim() - 1];
    x.layer_norm(
        [width],
        Some(weights.weight(&format!("{prefix}.weight"))),
        Some(weights.weight(&format!("{prefix}.bias"))),
        eps,
        true,
    )
}

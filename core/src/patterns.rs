//! Trainable-tensor patterns: `fc.*`, `hidden.1.weight`, `*`, `model.layers.2[0-9].*`
//! (shell globs: `*` matches any run of characters, dots included, `?` one character,
//! `[…]` one of a set).

use crate::Invalid;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrainablePatterns(Vec<String>);

impl TrainablePatterns {
    /// An empty list means every tensor. Each pattern must match at least one of
    /// `names`, so a typo fails at submission instead of silently freezing everything.
    pub fn parse(field: &str, patterns: &[String], names: &[String]) -> Result<Self, Invalid> {
        for (i, pattern) in patterns.iter().enumerate() {
            let field = format!("{field}[{i}]");
            if pattern.is_empty() || pattern.chars().any(char::is_whitespace) {
                return Err(Invalid::new(
                    field,
                    "must be a non-empty pattern without spaces",
                ));
            }
            if !names.iter().any(|name| pattern_matches(pattern, name)) {
                return Err(Invalid::new(
                    field,
                    format!(
                        "pattern {pattern:?} matches no tensor of the parent (tensors: {})",
                        listing(names)
                    ),
                ));
            }
        }
        Ok(Self(patterns.to_vec()))
    }

    /// Patterns checked before, as a stored job spec holds them.
    pub fn from_checked(patterns: Vec<String>) -> Self {
        Self(patterns)
    }

    pub fn is_trainable(&self, name: &str) -> bool {
        self.0.is_empty() || self.0.iter().any(|pattern| pattern_matches(pattern, name))
    }

    pub fn as_slice(&self) -> &[String] {
        &self.0
    }
}

/// The first names, then how many more: a language model has thousands.
fn listing(names: &[String]) -> String {
    const SHOWN: usize = 24;
    match names.len().checked_sub(SHOWN) {
        Some(more) if more > 0 => format!("{}, and {more} more", names[..SHOWN].join(", ")),
        _ => names.join(", "),
    }
}

/// Glob matching, as shells match file names: `*` matches any run of characters (dots
/// included), `?` any one character, `[…]` one character of a set of characters and
/// ranges (`[0-9]`, `[13579]`; `[!…]` one not in it). Anything else matches itself.
/// `model.layers.2[0-9].*` is every tensor of layers 20 to 29.
pub fn pattern_matches(pattern: &str, name: &str) -> bool {
    let (pattern, name): (Vec<char>, Vec<char>) =
        (pattern.chars().collect(), name.chars().collect());
    matches_from(&pattern, &name)
}

fn matches_from(pattern: &[char], name: &[char]) -> bool {
    match pattern.first() {
        None => name.is_empty(),
        // Runs of stars are one star; then try every split (names are short).
        Some('*') => {
            let rest = &pattern[1..];
            (0..=name.len()).any(|skip| matches_from(rest, &name[skip..]))
        }
        Some(_) if name.is_empty() => false,
        Some('?') => matches_from(&pattern[1..], &name[1..]),
        Some('[') => match Class::parse(&pattern[1..]) {
            Some(class) => class.contains(name[0]) && matches_from(class.rest, &name[1..]),
            // An unclosed bracket is a character like any other.
            None => name[0] == '[' && matches_from(&pattern[1..], &name[1..]),
        },
        Some(&literal) => name[0] == literal && matches_from(&pattern[1..], &name[1..]),
    }
}

/// A `[…]` set: its characters and ranges, whether it is negated, and the pattern after
/// its closing `]`.
struct Class<'a> {
    set: &'a [char],
    negated: bool,
    rest: &'a [char],
}

impl<'a> Class<'a> {
    /// The set a `[` opens (`after` starts just past it); `None` when nothing closes it.
    fn parse(after: &'a [char]) -> Option<Class<'a>> {
        let (negated, body) = match after.first() {
            Some('!') => (true, &after[1..]),
            _ => (false, after),
        };
        // A `]` right after the opening stands for itself.
        let close = body.iter().skip(1).position(|&c| c == ']')? + 1;
        Some(Class {
            set: &body[..close],
            negated,
            rest: &body[close + 1..],
        })
    }

    fn contains(&self, c: char) -> bool {
        let (set, mut i, mut inside) = (self.set, 0, false);
        while i < set.len() {
            if i + 2 < set.len() && set[i + 1] == '-' {
                inside |= (set[i]..=set[i + 2]).contains(&c);
                i += 3;
            } else {
                inside |= set[i] == c;
                i += 1;
            }
        }
        inside != self.negated
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        let check = |pattern: &str, name: &str, expected: bool| {
            assert_eq!(
                pattern_matches(pattern, name),
                expected,
                "{pattern} ~ {name}"
            );
        };
        check("fc.*", "fc.weight", true);
        check("fc.*", "fc", false);
        check("fc.*", "hidden.0.weight", false);
        check("*", "anything.at.all", true);
        check("hidden.*.bias", "hidden.12.bias", true);
        check("hidden.*.bias", "hidden.12.weight", false);
        check("hidden.1.weight", "hidden.1.weight", true);
        check("hidden.1.weight", "hidden.1.weight2", false);
        check("*.weight", "fc.weight", true);
        check("a*b*c", "abc", true);
        check("a*b*c", "acb", false);
        check(
            "model.layers.2[0-9].*",
            "model.layers.27.mlp.up_proj.weight",
            true,
        );
        check(
            "model.layers.2[0-9].*",
            "model.layers.2.mlp.up_proj.weight",
            false,
        );
        check(
            "model.layers.2[0-9].*",
            "model.layers.31.mlp.up_proj.weight",
            false,
        );
        check(
            "model.layers.[13].*",
            "model.layers.3.self_attn.q_proj.weight",
            true,
        );
        check(
            "model.layers.[!13].*",
            "model.layers.3.self_attn.q_proj.weight",
            false,
        );
        check(
            "model.layers.[!13].*",
            "model.layers.2.input_layernorm.weight",
            true,
        );
        check(
            "transformer.h.?.attn.*",
            "transformer.h.7.attn.c_attn.bias",
            true,
        );
        check(
            "transformer.h.?.attn.*",
            "transformer.h.11.attn.c_attn.bias",
            false,
        );
        check("a[b", "a[b", true);
        check("**.bias", "fc.bias", true);
    }

    #[test]
    fn a_pattern_that_matches_nothing_is_refused() {
        let names = vec!["fc.weight".to_string(), "fc.bias".to_string()];
        let err = TrainablePatterns::parse("trainable", &["layer4.*".into()], &names).unwrap_err();
        assert_eq!(err.field, "trainable[0]");
    }
}

//! Trainable-tensor patterns: `fc.*`, `hidden.1.weight`, `*` (`*` matches any run of
//! characters, dots included).

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
                        names.join(", ")
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

/// Glob matching where `*` matches any run of characters.
pub fn pattern_matches(pattern: &str, name: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = name.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
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
    }

    #[test]
    fn a_pattern_that_matches_nothing_is_refused() {
        let names = vec!["fc.weight".to_string(), "fc.bias".to_string()];
        let err = TrainablePatterns::parse("trainable", &["layer4.*".into()], &names).unwrap_err();
        assert_eq!(err.field, "trainable[0]");
    }
}

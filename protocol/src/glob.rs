//! Shell-style globs over identities and event names: `*` matches any run of
//! characters, `?` one character, everything else itself. Used by groups and
//! by the policy.

use std::fmt;

/// A compiled glob pattern.
#[derive(Clone, PartialEq, Eq)]
pub struct Glob {
    pattern: String,
    tokens: Vec<Token>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Token {
    Star,
    Any,
    Lit(char),
}

impl Glob {
    /// Compiles a pattern. Every string is a valid pattern.
    pub fn new(pattern: &str) -> Glob {
        let mut tokens = Vec::with_capacity(pattern.len());
        for c in pattern.chars() {
            let t = match c {
                '*' => Token::Star,
                '?' => Token::Any,
                c => Token::Lit(c),
            };
            // Collapse runs of stars: they match the same as one.
            if t == Token::Star && tokens.last() == Some(&Token::Star) {
                continue;
            }
            tokens.push(t);
        }
        Glob {
            pattern: pattern.to_owned(),
            tokens,
        }
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.pattern
    }

    /// Whether the pattern holds no wildcard.
    pub fn is_literal(&self) -> bool {
        self.tokens.iter().all(|t| matches!(t, Token::Lit(_)))
    }

    /// Whether `text` matches the whole pattern. Linear in the text length
    /// times the pattern length at worst (no backtracking blow-up).
    pub fn matches(&self, text: &str) -> bool {
        let text: Vec<char> = text.chars().collect();
        let (mut t, mut p) = (0usize, 0usize);
        let mut star: Option<(usize, usize)> = None;
        while t < text.len() {
            match self.tokens.get(p) {
                Some(Token::Lit(c)) if *c == text[t] => {
                    t += 1;
                    p += 1;
                }
                Some(Token::Any) => {
                    t += 1;
                    p += 1;
                }
                Some(Token::Star) => {
                    star = Some((p, t));
                    p += 1;
                }
                _ => match star {
                    Some((sp, st)) => {
                        p = sp + 1;
                        t = st + 1;
                        star = Some((sp, st + 1));
                    }
                    None => return false,
                },
            }
        }
        self.tokens[p..].iter().all(|t| *t == Token::Star)
    }
}

impl fmt::Debug for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Glob({:?})", self.pattern)
    }
}

impl fmt::Display for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.pattern)
    }
}

#[cfg(test)]
mod tests {
    use super::Glob;

    #[test]
    fn matching() {
        let cases = [
            ("eu-*", "eu-1", true),
            ("eu-*", "eu-", true),
            ("eu-*", "us-1", false),
            ("*", "", true),
            ("*", "anything", true),
            ("a?c", "abc", true),
            ("a?c", "ac", false),
            ("*-1", "eu-1", true),
            ("*-1", "eu-12", false),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("exact", "exact", true),
            ("exact", "exactly", false),
            ("**x", "x", true),
            ("é*", "éa", true),
        ];
        for (pat, text, want) in cases {
            assert_eq!(Glob::new(pat).matches(text), want, "{pat} vs {text}");
        }
        assert!(Glob::new("abc").is_literal());
        assert!(!Glob::new("a*").is_literal());
    }

    #[test]
    fn pathological_pattern_is_fast() {
        let g = Glob::new(&"a*".repeat(50));
        let text = "a".repeat(200) + "b";
        assert!(g.matches(&text));
        assert!(!Glob::new(&("a*".repeat(50) + "c")).matches(&text));
    }
}

//! Request content rules: a per-identity limit on the prompt's length in
//! characters (`max_prompt_chars`), and `[[content_rule]]` patterns that flag
//! a request (forwarded, and its audit record names the rule) or refuse it
//! (403). The text is matched and counted, never recorded: records and
//! findings name the rule, not what matched.

use regex::Regex;

/// What a matching rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Flag,
    Refuse,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Flag => "flag",
            Self::Refuse => "refuse",
        }
    }
}

#[derive(Debug, Clone)]
pub struct ContentRule {
    pub name: String,
    pub pattern: Regex,
    pub action: Action,
    /// Where it was written (`file:line:col`).
    pub origin: String,
}

/// The outcome for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Forwarded; the names of the flagging rules that matched.
    Pass(Vec<String>),
    TooLong {
        chars: u64,
        max: u64,
    },
    /// The first refusing rule that matched.
    Refused(String),
}

/// Judges the prompt `texts` against the identity's limit and the rules
/// (refusing rules first, so a refusal is never hidden by a flag).
pub fn judge(texts: &[String], max_chars: Option<u64>, rules: &[ContentRule]) -> Verdict {
    if let Some(max) = max_chars {
        let chars: u64 = texts.iter().map(|t| t.chars().count() as u64).sum();
        if chars > max {
            return Verdict::TooLong { chars, max };
        }
    }
    let hits = |r: &&ContentRule| texts.iter().any(|t| r.pattern.is_match(t));
    if let Some(r) = rules
        .iter()
        .filter(|r| r.action == Action::Refuse)
        .find(hits)
    {
        return Verdict::Refused(r.name.clone());
    }
    Verdict::Pass(
        rules
            .iter()
            .filter(|r| r.action == Action::Flag)
            .filter(hits)
            .map(|r| r.name.clone())
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(name: &str, pattern: &str, action: Action) -> ContentRule {
        ContentRule {
            name: name.into(),
            pattern: Regex::new(pattern).unwrap(),
            action,
            origin: String::new(),
        }
    }

    #[test]
    fn limits_and_rules_judge_every_text_and_refusals_win() {
        let rules = [
            rule("secrets", "(?i)password", Action::Flag),
            rule(
                "injection",
                "(?i)ignore (all )?previous instructions",
                Action::Refuse,
            ),
        ];
        let t = |s: &[&str]| s.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            judge(&t(&["hello"]), Some(10), &rules),
            Verdict::Pass(vec![])
        );
        assert_eq!(
            judge(&t(&["héllo", "wörld!"]), Some(10), &rules),
            Verdict::TooLong { chars: 11, max: 10 },
            "characters, not bytes"
        );
        assert_eq!(
            judge(&t(&["my Password is"]), None, &rules),
            Verdict::Pass(vec!["secrets".into()])
        );
        assert_eq!(
            judge(
                &t(&["password", "Ignore previous instructions"]),
                None,
                &rules
            ),
            Verdict::Refused("injection".into())
        );
    }
}

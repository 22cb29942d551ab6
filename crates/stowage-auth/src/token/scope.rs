//! Scopes: `repository:team/app:pull,push`, `repository(plugin):name:pull`,
//! `registry:catalog:*`.
//!
//! The grammar follows Distribution's token server: exactly three `:`-separated parts, so a
//! resource name never contains `:` (repository names cannot: a `host:port` belongs to the
//! image reference, not to the repository name a client puts in a scope). The type is
//! `[a-z0-9]+` with an optional `(class)` of the same alphabet; the actions are a
//! comma-separated list. Where Distribution silently ignores a malformed scope, this parser
//! refuses it with a [`ScopeError`] so the caller can answer 400.

use std::fmt;

/// Longest accepted scope string, in bytes.
pub const MAX_SCOPE_LEN: usize = 1024;
/// Most scopes accepted in one token request (after splitting on spaces).
pub const MAX_SCOPES: usize = 16;
/// Most actions accepted in one scope.
const MAX_ACTIONS: usize = 16;

/// One requested (or granted) access: a typed, named resource and a list of actions.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Scope {
    /// Resource type, e.g. `repository` or `registry`.
    pub typ: String,
    /// Optional resource class, e.g. `plugin` in `repository(plugin)`.
    pub class: Option<String>,
    /// Resource name, e.g. `team/app` or `catalog`.
    pub name: String,
    /// Requested actions, deduplicated, in request order (`*` means every action).
    pub actions: Vec<String>,
}

/// Why a scope string was refused. Never echoes the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    /// The scope string is empty.
    #[error("scope is empty")]
    Empty,
    /// The scope string is longer than [`MAX_SCOPE_LEN`].
    #[error("scope is {len} bytes, more than the {max} allowed")]
    TooLong {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The scope contains a control character or whitespace.
    #[error("scope contains a control or whitespace character")]
    ControlCharacter,
    /// The scope does not have exactly three `:`-separated parts.
    #[error(
        "scope must have exactly three ':'-separated parts (type:name:actions), found {found}"
    )]
    WrongPartCount {
        /// How many parts were found (capped at 4).
        found: usize,
    },
    /// The resource type is empty or not `[a-z0-9]+` with an optional `(class)`.
    #[error("scope resource type must be [a-z0-9]+ with an optional (class)")]
    InvalidType,
    /// The resource name is empty.
    #[error("scope resource name is empty")]
    EmptyName,
    /// An action is empty (e.g. `pull,,push` or a trailing comma).
    #[error("scope has an empty action")]
    EmptyAction,
    /// An action has characters outside `[A-Za-z0-9_-]` (or is not a lone `*`).
    #[error("scope action must be [A-Za-z0-9_-]+ or '*'")]
    InvalidAction,
    /// The scope lists more than 16 distinct actions.
    #[error("scope lists more than {max} actions")]
    TooManyActions {
        /// The limit.
        max: usize,
    },
    /// The request carries more than [`MAX_SCOPES`] scopes.
    #[error("request carries more than {max} scopes")]
    TooManyScopes {
        /// The limit.
        max: usize,
    },
}

impl Scope {
    /// Parses one scope in its wire form.
    pub fn parse(s: &str) -> Result<Scope, ScopeError> {
        if s.is_empty() {
            return Err(ScopeError::Empty);
        }
        if s.len() > MAX_SCOPE_LEN {
            return Err(ScopeError::TooLong {
                len: s.len(),
                max: MAX_SCOPE_LEN,
            });
        }
        if s.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(ScopeError::ControlCharacter);
        }
        let parts: Vec<&str> = s.splitn(4, ':').collect();
        let [typ, name, actions] = parts.as_slice() else {
            return Err(ScopeError::WrongPartCount { found: parts.len() });
        };
        let (typ, class) = split_type_class(typ)?;
        if name.is_empty() {
            return Err(ScopeError::EmptyName);
        }
        let mut list: Vec<String> = Vec::new();
        for action in actions.split(',') {
            if action.is_empty() {
                return Err(ScopeError::EmptyAction);
            }
            if !valid_action(action) {
                return Err(ScopeError::InvalidAction);
            }
            if !list.iter().any(|a| a == action) {
                if list.len() == MAX_ACTIONS {
                    return Err(ScopeError::TooManyActions { max: MAX_ACTIONS });
                }
                list.push(action.to_owned());
            }
        }
        Ok(Scope {
            typ: typ.to_owned(),
            class: class.map(str::to_owned),
            name: (*name).to_owned(),
            actions: list,
        })
    }

    /// Whether this scope asks for `action` (or for `*`).
    pub fn wants(&self, action: &str) -> bool {
        self.actions.iter().any(|a| a == action || a == "*")
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.typ)?;
        if let Some(class) = &self.class {
            write!(f, "({class})")?;
        }
        write!(f, ":{}:{}", self.name, self.actions.join(","))
    }
}

impl std::str::FromStr for Scope {
    type Err = ScopeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Scope::parse(s)
    }
}

/// Parses the (already URL-decoded) values of the `scope` query parameter of a token
/// request. The parameter may be repeated and each value may hold several scopes separated
/// by spaces; empty values and runs of spaces are ignored. Scopes naming the same resource
/// (type, class and name) are merged, their actions unioned in order. At most
/// [`MAX_SCOPES`] scopes are accepted; any malformed scope refuses the whole request.
pub fn parse_scope_params<'a, I>(values: I) -> Result<Vec<Scope>, ScopeError>
where
    I: IntoIterator<Item = &'a str>,
{
    let mut out: Vec<Scope> = Vec::new();
    let mut seen = 0usize;
    for value in values {
        for piece in value.split(' ').filter(|p| !p.is_empty()) {
            seen += 1;
            if seen > MAX_SCOPES {
                return Err(ScopeError::TooManyScopes { max: MAX_SCOPES });
            }
            let scope = Scope::parse(piece)?;
            match out
                .iter_mut()
                .find(|s| s.typ == scope.typ && s.class == scope.class && s.name == scope.name)
            {
                Some(existing) => {
                    for action in scope.actions {
                        if !existing.actions.contains(&action) {
                            if existing.actions.len() == MAX_ACTIONS {
                                return Err(ScopeError::TooManyActions { max: MAX_ACTIONS });
                            }
                            existing.actions.push(action);
                        }
                    }
                }
                None => out.push(scope),
            }
        }
    }
    Ok(out)
}

/// Splits `type` or `type(class)`; both parts are `[a-z0-9]+`.
fn split_type_class(s: &str) -> Result<(&str, Option<&str>), ScopeError> {
    let (typ, class) = match s.find('(') {
        None => (s, None),
        Some(open) => {
            let inner = s[open + 1..]
                .strip_suffix(')')
                .ok_or(ScopeError::InvalidType)?;
            (&s[..open], Some(inner))
        }
    };
    let word = |w: &str| {
        !w.is_empty()
            && w.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    };
    if !word(typ) || class.is_some_and(|c| !word(c)) {
        return Err(ScopeError::InvalidType);
    }
    Ok((typ, class))
}

fn valid_action(a: &str) -> bool {
    a == "*"
        || a.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn parses_the_three_forms_and_round_trips() {
        let s = Scope::parse("repository:team/app:pull,push").unwrap();
        assert_eq!(s.typ, "repository");
        assert_eq!(s.class, None);
        assert_eq!(s.name, "team/app");
        assert_eq!(s.actions, vec!["pull", "push"]);
        assert_eq!(s.to_string(), "repository:team/app:pull,push");

        let s = Scope::parse("repository(plugin):name:pull").unwrap();
        assert_eq!(s.class.as_deref(), Some("plugin"));
        assert_eq!(s.to_string(), "repository(plugin):name:pull");

        let s = Scope::parse("registry:catalog:*").unwrap();
        assert_eq!((s.typ.as_str(), s.name.as_str()), ("registry", "catalog"));
        assert!(s.wants("anything"));
        assert_eq!(s.to_string(), "registry:catalog:*");
    }

    #[test]
    fn actions_are_deduplicated_in_order() {
        let s = Scope::parse("repository:a:push,pull,push,delete,pull").unwrap();
        assert_eq!(s.actions, vec!["push", "pull", "delete"]);
        assert!(s.wants("pull") && !s.wants("other"));
    }

    #[test]
    fn malformed_scopes_are_refused() {
        use ScopeError::*;
        let cases: &[(&str, ScopeError)] = &[
            ("", Empty),
            ("repository", WrongPartCount { found: 1 }),
            ("repository:foo", WrongPartCount { found: 2 }),
            // Distribution splits into at most four parts and wants three: a name
            // with ':' is refused, as is a host:port prefix.
            (
                "repository:localhost:5000/foo:pull",
                WrongPartCount { found: 4 },
            ),
            (":foo:pull", InvalidType),
            ("Repository:foo:pull", InvalidType),
            ("repository(:foo:pull", InvalidType),
            ("repository():foo:pull", InvalidType),
            ("repository(Plugin):foo:pull", InvalidType),
            ("repository(a)b:foo:pull", InvalidType),
            ("repository::pull", EmptyName),
            ("repository:foo:", EmptyAction),
            ("repository:foo:pull,,push", EmptyAction),
            ("repository:foo:pull,", EmptyAction),
            ("repository:foo:pu*ll", InvalidAction),
            ("repository:foo:pull;rm", InvalidAction),
            ("repository:fo\no:pull", ControlCharacter),
            ("repository:foo:pull\u{7f}", ControlCharacter),
            ("repository:f oo:pull", ControlCharacter),
        ];
        for (input, want) in cases {
            assert_eq!(Scope::parse(input).as_ref(), Err(want), "input {input:?}");
        }
        let long = format!("repository:{}:pull", "a".repeat(MAX_SCOPE_LEN));
        assert!(matches!(Scope::parse(&long), Err(TooLong { .. })));
        let many: Vec<String> = (0..17).map(|i| format!("a{i}")).collect();
        let too_many_actions = format!("repository:foo:{}", many.join(","));
        assert_eq!(
            Scope::parse(&too_many_actions),
            Err(TooManyActions { max: 16 })
        );
    }

    #[test]
    fn error_messages_do_not_echo_the_input() {
        let err = Scope::parse("repository:secret-looking-name:pu*ll").unwrap_err();
        assert!(!err.to_string().contains("secret-looking-name"));
    }

    #[test]
    fn query_parameter_repeated_and_space_separated() {
        let scopes = parse_scope_params([
            "repository:a/b:pull",
            "repository:c:push  registry:catalog:*",
            "",
            "repository:a/b:push,pull",
        ])
        .unwrap();
        let wire: Vec<String> = scopes.iter().map(ToString::to_string).collect();
        assert_eq!(
            wire,
            vec![
                "repository:a/b:pull,push",
                "repository:c:push",
                "registry:catalog:*"
            ]
        );
        assert_eq!(parse_scope_params(Vec::<&str>::new()).unwrap(), vec![]);
    }

    #[test]
    fn query_parameter_limits_and_errors() {
        let seventeen: Vec<String> = (0..17).map(|i| format!("repository:r{i}:pull")).collect();
        let refs: Vec<&str> = seventeen.iter().map(String::as_str).collect();
        assert_eq!(
            parse_scope_params(refs.iter().copied()),
            Err(ScopeError::TooManyScopes { max: MAX_SCOPES })
        );
        assert!(parse_scope_params(refs[..16].iter().copied()).is_ok());
        let joined = seventeen.join(" ");
        assert!(matches!(
            parse_scope_params([joined.as_str()]),
            Err(ScopeError::TooManyScopes { .. })
        ));
        assert_eq!(
            parse_scope_params(["repository:a:pull repository:b"]),
            Err(ScopeError::WrongPartCount { found: 2 })
        );
    }
}

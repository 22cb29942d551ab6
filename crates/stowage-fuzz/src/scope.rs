//! Token-request scopes.

use std::sync::OnceLock;

use stowage_auth::token::{parse_scope_params, Scope, ScopeError, MAX_SCOPES, MAX_SCOPE_LEN};

/// `type[(class)]:name:action[,action...]`; the name has no `:`, no whitespace and no
/// control character; an action is `*` or `[A-Za-z0-9_-]+`.
const SCOPE: &str = r"\A([a-z0-9]+)(?:\(([a-z0-9]+)\))?:([^:\s\p{Cc}]+):((?:\*|[A-Za-z0-9_-]+)(?:,(?:\*|[A-Za-z0-9_-]+))*)\z";
/// Most distinct actions in one scope (private in stowage-auth).
const MAX_ACTIONS: usize = 16;

/// Fuzz target: `Scope::parse` on the whole input, and `parse_scope_params` on its lines
/// (each line one value of a repeated `scope` query parameter).
///
/// * `Scope::parse` accepts exactly the strings of the grammar above of at most 1024 bytes
///   with at most 16 distinct actions, and yields the grammar's parts, actions deduplicated
///   in order; the printed scope re-parses to itself.
/// * `parse_scope_params` accepts exactly when every space-separated piece parses and there
///   are at most 16; it yields one scope per resource, holding every requested action.
pub fn scope(data: &[u8]) {
    let s = crate::text(data);
    check_one(&s);
    let values: Vec<&str> = s.split('\n').collect();
    check_params(&values);
}

fn check_one(s: &str) {
    static RE: OnceLock<regex::Regex> = OnceLock::new();
    let caps = crate::regex(&RE, SCOPE).captures(s);
    let expected = caps.as_ref().filter(|_| s.len() <= MAX_SCOPE_LEN).map(|c| {
        let mut actions: Vec<&str> = Vec::new();
        for a in c.get(4).map_or("", |m| m.as_str()).split(',') {
            if !actions.contains(&a) {
                actions.push(a);
            }
        }
        let part = |i: usize| c.get(i).map(|m| m.as_str());
        (part(1), part(2), part(3), actions)
    });
    match (Scope::parse(s), expected) {
        (Ok(scope), Some((typ, class, name, actions))) => {
            assert!(
                actions.len() <= MAX_ACTIONS,
                "{} actions in {s:?}",
                actions.len()
            );
            assert_eq!(Some(scope.typ.as_str()), typ);
            assert_eq!(scope.class.as_deref(), class);
            assert_eq!(Some(scope.name.as_str()), name);
            assert_eq!(scope.actions, actions);
            assert_eq!(Scope::parse(&scope.to_string()).as_ref(), Ok(&scope));
            for a in &scope.actions {
                assert!(scope.wants(a));
            }
        }
        (Err(ScopeError::TooManyActions { max }), Some((.., actions))) => {
            assert_eq!(max, MAX_ACTIONS);
            assert!(actions.len() > MAX_ACTIONS, "TooManyActions for {s:?}");
        }
        (Err(e), Some(_)) => panic!("refused a valid scope {s:?}: {e:?}"),
        (Ok(scope), None) => panic!("accepted {s:?} outside the grammar as {scope:?}"),
        (Err(_), None) => {}
    }
}

fn check_params(values: &[&str]) {
    let pieces: Vec<&str> = values
        .iter()
        .flat_map(|v| v.split(' '))
        .filter(|p| !p.is_empty())
        .collect();
    let result = parse_scope_params(values.iter().copied());
    let Ok(merged) = result else {
        // Refused: too many scopes, a malformed one, or more than 16 actions after merging.
        return;
    };
    assert!(
        pieces.len() <= MAX_SCOPES,
        "{} scopes accepted",
        pieces.len()
    );
    for (i, a) in merged.iter().enumerate() {
        assert!(a.actions.len() <= MAX_ACTIONS);
        assert_eq!(Scope::parse(&a.to_string()).as_ref(), Ok(a));
        for b in &merged[i + 1..] {
            assert!(
                (&a.typ, &a.class, &a.name) != (&b.typ, &b.class, &b.name),
                "resource listed twice after merging: {a} and {b}"
            );
        }
    }
    for piece in pieces {
        let scope = Scope::parse(piece).expect("parse_scope_params accepted every piece");
        let into = merged
            .iter()
            .find(|m| (&m.typ, &m.class, &m.name) == (&scope.typ, &scope.class, &scope.name))
            .expect("every requested resource is in the merged list");
        for action in &scope.actions {
            assert!(
                into.actions.contains(action),
                "action {action} lost merging {piece}"
            );
        }
    }
}

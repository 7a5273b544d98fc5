//! Who is asking, and the patterns rules use to name them.

use std::fmt;

use crate::matcher::{Glob, has_glob_meta};

/// The caller of a request, as established by whoever authenticated it.
///
/// Fill each field only from an authenticated source: `identity` and `roles`
/// from the mesh (the WireGuard peer and its registration), `uid`, `user`,
/// `gids` and `groups` from the local socket's peer credentials
/// (`SO_PEERCRED`). Never from what the request itself claims. A field that
/// is unknown stays empty and then matches no pattern.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Caller {
    /// Mesh identity of the peer (e.g. `alice-laptop`).
    pub identity: Option<String>,
    /// Mesh roles of the peer (e.g. `oncall`).
    pub roles: Vec<String>,
    /// Local uid.
    pub uid: Option<u32>,
    /// Local user name.
    pub user: Option<String>,
    /// Local group ids (primary and supplementary).
    pub gids: Vec<u32>,
    /// Local group names.
    pub groups: Vec<String>,
}

impl Caller {
    /// Build a caller from the same `kind:value` words a rule's `callers`
    /// list uses: `identity:NAME`, `role:NAME`, `uid:N`, `user:NAME`,
    /// `gid:N`, `group:NAME`. Meant for `[[test]]` entries and for
    /// `coral policy explain --as ...`; a daemon fills the fields from
    /// authenticated sources instead.
    ///
    /// ```
    /// let c = coral_policy::Caller::from_specs(&["role:oncall", "uid:1000"]).unwrap();
    /// assert_eq!(c.roles, ["oncall"]);
    /// assert_eq!(c.uid, Some(1000));
    /// ```
    pub fn from_specs<S: AsRef<str>>(specs: &[S]) -> Result<Caller, String> {
        let mut caller = Caller::default();
        for spec in specs {
            let spec = spec.as_ref();
            let (kind, value) = spec.split_once(':').ok_or_else(|| {
                format!(
                    "caller {spec:?} must be kind:value (identity, role, uid, user, gid, group)"
                )
            })?;
            if value.is_empty() {
                return Err(format!("caller {spec:?} has an empty value"));
            }
            match kind {
                "identity" => {
                    if caller.identity.replace(value.to_owned()).is_some() {
                        return Err("a caller has at most one identity".to_owned());
                    }
                }
                "role" => caller.roles.push(value.to_owned()),
                "uid" => caller.uid = Some(parse_id(spec, value)?),
                "user" => caller.user = Some(value.to_owned()),
                "gid" => caller.gids.push(parse_id(spec, value)?),
                "group" => caller.groups.push(value.to_owned()),
                _ => {
                    return Err(format!(
                        "caller {spec:?}: unknown kind {kind:?} (use identity, role, uid, user, gid or group)"
                    ));
                }
            }
        }
        Ok(caller)
    }
}

fn parse_id(spec: &str, value: &str) -> Result<u32, String> {
    value
        .parse()
        .map_err(|_| format!("caller {spec:?}: {value:?} is not a number"))
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = Vec::new();
        if let Some(identity) = &self.identity {
            parts.push(format!("identity:{identity}"));
        }
        parts.extend(self.roles.iter().map(|r| format!("role:{r}")));
        if let Some(uid) = self.uid {
            parts.push(format!("uid:{uid}"));
        }
        if let Some(user) = &self.user {
            parts.push(format!("user:{user}"));
        }
        parts.extend(self.gids.iter().map(|g| format!("gid:{g}")));
        parts.extend(self.groups.iter().map(|g| format!("group:{g}")));
        if parts.is_empty() {
            f.write_str("(anonymous)")
        } else {
            write!(f, "{}", parts.join(" ").escape_debug())
        }
    }
}

/// One entry of a rule's `callers` list.
#[derive(Debug, Clone)]
pub(crate) enum CallerPattern {
    /// `*`: every caller, even one with no attributes.
    Anyone,
    /// `identity:GLOB`.
    Identity(Glob),
    Role(String),
    Uid(u32),
    User(String),
    Gid(u32),
    Group(String),
}

impl CallerPattern {
    pub(crate) fn parse(spec: &str) -> Result<CallerPattern, (String, String)> {
        const KINDS: &str =
            "write \"*\" or kind:value with kind identity, role, uid, user, gid or group";
        if spec == "*" {
            return Ok(CallerPattern::Anyone);
        }
        let Some((kind, value)) = spec.split_once(':') else {
            return Err((
                format!("caller pattern {spec:?} has no kind"),
                KINDS.to_owned(),
            ));
        };
        if value.is_empty() {
            return Err((
                format!("caller pattern {spec:?} has an empty value"),
                KINDS.to_owned(),
            ));
        }
        let exact = |v: &str| -> Result<String, (String, String)> {
            if has_glob_meta(v) {
                Err((
                    format!("caller pattern {spec:?}: only identity takes a glob"),
                    "name the role, user or group exactly".to_owned(),
                ))
            } else {
                Ok(v.to_owned())
            }
        };
        let id = |v: &str| -> Result<u32, (String, String)> {
            v.parse().map_err(|_| {
                (
                    format!("caller pattern {spec:?}: {v:?} is not a number"),
                    "uid and gid take a number; use user: or group: for names".to_owned(),
                )
            })
        };
        Ok(match kind {
            "identity" => CallerPattern::Identity(Glob::new(value).map_err(|e| {
                (
                    format!("caller pattern {spec:?}: bad glob: {e}"),
                    "identity takes a glob such as agent-*".to_owned(),
                )
            })?),
            "role" => CallerPattern::Role(exact(value)?),
            "uid" => CallerPattern::Uid(id(value)?),
            "user" => CallerPattern::User(exact(value)?),
            "gid" => CallerPattern::Gid(id(value)?),
            "group" => CallerPattern::Group(exact(value)?),
            _ => {
                return Err((
                    format!("caller pattern {spec:?}: unknown kind {kind:?}"),
                    KINDS.to_owned(),
                ));
            }
        })
    }

    pub(crate) fn matches(&self, caller: &Caller) -> bool {
        match self {
            CallerPattern::Anyone => true,
            CallerPattern::Identity(glob) => {
                caller.identity.as_deref().is_some_and(|i| glob.is_match(i))
            }
            CallerPattern::Role(role) => caller.roles.iter().any(|r| r == role),
            CallerPattern::Uid(uid) => caller.uid == Some(*uid),
            CallerPattern::User(user) => caller.user.as_deref() == Some(user.as_str()),
            CallerPattern::Gid(gid) => caller.gids.contains(gid),
            CallerPattern::Group(group) => caller.groups.iter().any(|g| g == group),
        }
    }
}

impl fmt::Display for CallerPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallerPattern::Anyone => f.write_str("*"),
            CallerPattern::Identity(glob) => write!(f, "identity:{}", glob.pattern),
            CallerPattern::Role(r) => write!(f, "role:{r}"),
            CallerPattern::Uid(u) => write!(f, "uid:{u}"),
            CallerPattern::User(u) => write!(f, "user:{u}"),
            CallerPattern::Gid(g) => write!(f, "gid:{g}"),
            CallerPattern::Group(g) => write!(f, "group:{g}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pat(s: &str) -> CallerPattern {
        CallerPattern::parse(s).unwrap()
    }

    #[test]
    fn patterns_match_their_field_only() {
        let c = Caller::from_specs(&[
            "identity:alice-laptop",
            "role:oncall",
            "uid:1000",
            "user:alice",
            "gid:27",
            "group:ops",
        ])
        .unwrap();
        for yes in [
            "*",
            "identity:alice-*",
            "identity:alice-laptop",
            "role:oncall",
            "uid:1000",
            "user:alice",
            "gid:27",
            "group:ops",
        ] {
            assert!(pat(yes).matches(&c), "{yes}");
        }
        for no in [
            "identity:bob-*",
            "role:admin",
            "uid:0",
            "user:root",
            "gid:0",
            "group:wheel",
        ] {
            assert!(!pat(no).matches(&c), "{no}");
        }
    }

    #[test]
    fn anonymous_caller_matches_only_star() {
        let c = Caller::default();
        assert!(pat("*").matches(&c));
        for p in [
            "identity:*",
            "role:x",
            "uid:0",
            "user:root",
            "gid:0",
            "group:root",
        ] {
            assert!(!pat(p).matches(&c), "{p}");
        }
    }

    #[test]
    fn bad_patterns_are_refused() {
        for bad in [
            "oncall",
            "role:",
            "team:x",
            "uid:alice",
            "role:on*",
            "gid:-1",
        ] {
            assert!(CallerPattern::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn from_specs_refuses_nonsense() {
        assert!(Caller::from_specs(&["role"]).is_err());
        assert!(Caller::from_specs(&["uid:x"]).is_err());
        assert!(Caller::from_specs(&["identity:a", "identity:b"]).is_err());
        assert!(Caller::from_specs(&["*"]).is_err());
    }

    #[test]
    fn display_lists_attributes() {
        let c = Caller::from_specs(&["role:oncall", "uid:5"]).unwrap();
        assert_eq!(c.to_string(), "role:oncall uid:5");
        assert_eq!(Caller::default().to_string(), "(anonymous)");
    }
}

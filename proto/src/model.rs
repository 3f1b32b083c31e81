//! Validated domain types. Everything that crosses a process boundary is converted into these
//! once, at the edge.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A transaction ID: one per LTX file a writer produced, strictly increasing along a lineage.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Txid(pub u64);

impl Txid {
    pub const ZERO: Txid = Txid(0);

    pub fn next(self) -> Txid {
        Txid(self.0 + 1)
    }
}

impl fmt::Display for Txid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// A generation: one writer's unbroken history under a database's root.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Generation(pub u64);

impl Generation {
    pub fn next(self) -> Generation {
        Generation(self.0 + 1)
    }
}

impl fmt::Display for Generation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid {what} {value:?}: expected 16 lowercase hex digits")]
pub struct ParseIdError {
    what: &'static str,
    value: String,
}

fn parse_hex16(what: &'static str, s: &str) -> Result<u64, ParseIdError> {
    let ok = s.len() == 16 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    let err = || ParseIdError { what, value: s.to_string() };
    if !ok {
        return Err(err());
    }
    u64::from_str_radix(s, 16).map_err(|_| err())
}

impl FromStr for Txid {
    type Err = ParseIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_hex16("transaction id", s).map(Txid)
    }
}

impl FromStr for Generation {
    type Err = ParseIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_hex16("generation", s).map(Generation)
    }
}

/// A position in a database's history.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Position {
    pub generation: Generation,
    pub txid: Txid,
}

/// Why a name was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "invalid {what} name {value:?}: use 1-63 characters from a-z, 0-9, '-' and '_', starting with a letter or digit"
)]
pub struct NameError {
    pub what: &'static str,
    pub value: String,
}

fn validate_name(what: &'static str, s: &str) -> Result<String, NameError> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && s.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(s.to_string())
    } else {
        Err(NameError { what, value: s.to_string() })
    }
}

macro_rules! name_type {
    ($(#[$doc:meta])* $ty:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
        #[serde(transparent)]
        pub struct $ty(String);

        impl $ty {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $ty {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                validate_name($what, s).map($ty)
            }
        }

        impl TryFrom<String> for $ty {
            type Error = NameError;
            fn try_from(s: String) -> Result<Self, Self::Error> {
                s.parse()
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

name_type!(
    /// A project: a group of databases and the scope of an agent token.
    ProjectName,
    "project"
);
name_type!(
    /// A database inside a project (also a path segment of its replica root, so no dots or
    /// slashes).
    DatabaseName,
    "database"
);

/// One agent process start. Never reused (fencing rule 2).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct InstanceId(String);

impl InstanceId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for InstanceId {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
        if ok {
            Ok(InstanceId(s.to_string()))
        } else {
            Err(NameError { what: "instance", value: s.to_string() })
        }
    }
}

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What the controller does when a second live instance asks for a held lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// The holder stops its app, flushes, seals and releases; the newcomer restores and starts.
    Handoff,
    /// The newcomer waits (bounded) for the lease.
    Wait,
    /// Both run, each in its own generation; the fork is recorded.
    Alert,
}

impl Policy {
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Handoff => "handoff",
            Policy::Wait => "wait",
            Policy::Alert => "alert",
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid policy {0:?}: expected handoff, wait or alert")]
pub struct PolicyError(pub String);

impl FromStr for Policy {
    type Err = PolicyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "handoff" => Ok(Policy::Handoff),
            "wait" => Ok(Policy::Wait),
            "alert" => Ok(Policy::Alert),
            _ => Err(PolicyError(s.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_through_their_key_form() {
        let t = Txid(0x1f4);
        assert_eq!(t.to_string(), "00000000000001f4");
        assert_eq!("00000000000001f4".parse::<Txid>(), Ok(t));
        assert!("1f4".parse::<Txid>().is_err());
        assert!("00000000000001F4".parse::<Generation>().is_err());
        assert!("../0000000000001f".parse::<Generation>().is_err());
    }

    #[test]
    fn names_refuse_path_tricks() {
        for bad in ["", "../x", "a/b", "a.b", "A", "-x", "x y", &"a".repeat(64)] {
            assert!(bad.parse::<ProjectName>().is_err(), "{bad:?} accepted");
            assert!(bad.parse::<DatabaseName>().is_err(), "{bad:?} accepted");
        }
        for good in ["shop", "shop-prod", "db_1", "0x"] {
            assert_eq!(good.parse::<DatabaseName>().map(|n| n.to_string()), Ok(good.to_string()));
        }
        assert!("../x".parse::<InstanceId>().is_err());
        assert_eq!("alert".parse::<Policy>(), Ok(Policy::Alert));
        assert!("sometimes".parse::<Policy>().is_err());
    }
}

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
}

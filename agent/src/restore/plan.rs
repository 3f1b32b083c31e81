//! Choosing the LTX files that rebuild a database at a transaction.
//!
//! Start at the newest full snapshot (level 9) at or before the target, then repeatedly take,
//! from any level, the file that continues the chain (its first transaction is at most one
//! past what is applied) and reaches furthest without passing the target. A compacted file that
//! overlaps what is already applied is fine: it carries the final state of every page it
//! touched.

use proto::model::Txid;

use crate::layout::{LtxObject, SNAPSHOT_LEVEL};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("no LTX files under {base:?}")]
    Empty { base: String },
    #[error("no file starts the history at transaction 1 under {base:?} (earliest starts at {first})")]
    NoBase { base: String, first: Txid },
    #[error("transaction {target} is not restorable from {base:?}: history reaches {reached}")]
    NotAvailable { base: String, target: Txid, reached: Txid },
    #[error("history under {base:?} has a gap: have up to {reached}, next file {key} starts at {next}")]
    Gap { base: String, reached: Txid, next: Txid, key: String },
}

pub fn plan(base: &str, files: &[LtxObject], target: Option<Txid>) -> Result<Vec<LtxObject>, PlanError> {
    if files.is_empty() {
        return Err(PlanError::Empty { base: base.to_string() });
    }
    let within = |f: &LtxObject| target.is_none_or(|t| f.max <= t);
    let mut chosen: Vec<LtxObject> = Vec::new();
    if let Some(snap) =
        files.iter().filter(|f| f.level == SNAPSHOT_LEVEL && f.min == Txid(1) && within(f)).max_by_key(|f| f.max)
    {
        chosen.push(snap.clone());
    }
    let mut reached = chosen.last().map(|f| f.max).unwrap_or(Txid::ZERO);
    loop {
        if target.is_some_and(|t| reached >= t) {
            break;
        }
        let next = files
            .iter()
            .filter(|f| f.min.0 <= reached.0 + 1 && f.max > reached && within(f))
            .max_by(|a, b| a.max.cmp(&b.max).then(b.min.cmp(&a.min)).then(a.level.cmp(&b.level)));
        match next {
            Some(f) => {
                reached = f.max;
                chosen.push(f.clone());
            }
            None => break,
        }
    }
    if chosen.is_empty() {
        let first = files.iter().map(|f| f.min).min().unwrap_or(Txid::ZERO);
        return Err(PlanError::NoBase { base: base.to_string(), first });
    }
    match target {
        Some(t) if reached != t => {
            return Err(PlanError::NotAvailable { base: base.to_string(), target: t, reached });
        }
        None => {
            if let Some(gap) = files.iter().filter(|f| f.min.0 > reached.0 + 1).min_by_key(|f| f.min) {
                return Err(PlanError::Gap { base: base.to_string(), reached, next: gap.min, key: gap.key.clone() });
            }
        }
        _ => {}
    }
    Ok(chosen)
}

/// The newest transaction a complete history under `files` reaches, if any.
pub fn latest(files: &[LtxObject]) -> Option<Txid> {
    plan("", files, None).ok().and_then(|p| p.last().map(|f| f.max))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(level: u8, min: u64, max: u64) -> LtxObject {
        LtxObject { key: format!("{level}/{min}-{max}"), level, min: Txid(min), max: Txid(max), size: 1 }
    }

    fn spans(p: &[LtxObject]) -> Vec<(u8, u64, u64)> {
        p.iter().map(|f| (f.level, f.min.0, f.max.0)).collect()
    }

    #[test]
    fn prefers_snapshot_then_compacted_then_l0() {
        let files =
            vec![f(0, 1, 1), f(0, 2, 2), f(0, 3, 3), f(0, 4, 4), f(0, 5, 5), f(1, 1, 3), f(1, 4, 4), f(9, 1, 3)];
        assert_eq!(spans(&plan("", &files, None).expect("plan")), vec![(9, 1, 3), (1, 4, 4), (0, 5, 5)]);
        assert_eq!(spans(&plan("", &files, Some(Txid(2))).expect("plan")), vec![(0, 1, 1), (0, 2, 2)]);
        assert_eq!(spans(&plan("", &files, Some(Txid(3))).expect("plan")), vec![(9, 1, 3)]);
    }

    #[test]
    fn gaps_and_unreachable_targets_are_named() {
        let files = vec![f(0, 1, 1), f(0, 2, 2), f(0, 4, 4)];
        match plan("g/", &files, None) {
            Err(PlanError::Gap { reached, next, .. }) => assert_eq!((reached, next), (Txid(2), Txid(4))),
            other => panic!("expected gap, got {other:?}"),
        }
        assert!(matches!(plan("g/", &files, Some(Txid(3))), Err(PlanError::NotAvailable { .. })));
        assert!(matches!(plan("g/", &[f(0, 2, 2)], None), Err(PlanError::NoBase { .. })));
        assert!(matches!(plan("g/", &[], None), Err(PlanError::Empty { .. })));
    }

    #[test]
    fn a_target_inside_a_compacted_file_needs_the_finer_files() {
        let files = vec![f(1, 1, 4), f(0, 1, 1), f(0, 2, 2), f(0, 3, 3), f(0, 4, 4)];
        assert_eq!(spans(&plan("", &files, Some(Txid(3))).expect("plan")), vec![(0, 1, 1), (0, 2, 2), (0, 3, 3)]);
        assert_eq!(spans(&plan("", &files, None).expect("plan")), vec![(1, 1, 4)]);
    }
}

//! Trimming the change feed: entries every reader has passed are removed, so the feed does
//! not grow for ever.
//!
//! The index records the highest sequence removed (`feed_trimmed_to`). A reader whose
//! position is at or below it has missed entries it can no longer read, and must learn that
//! (replication answers with a full comparison); sequence numbers are never reused, so
//! trimming never changes what a stored sequence means.

use serde::Deserialize;

use crate::{cf, keys, lock, AuditEntry, Batch, Index, IndexError, Op, META_FEED_TRIMMED};

/// Only the time of a feed entry (the age checks read nothing else).
#[derive(Deserialize)]
struct EntryTime {
    #[serde(rename = "ts")]
    ts_ms: u64,
}

impl Index {
    /// The highest feed sequence removed by trimming (0 when nothing was).
    pub fn feed_trimmed_to(&self) -> Result<u64, IndexError> {
        match self.meta_raw(META_FEED_TRIMMED)? {
            Some(v) => keys::take_seq(&v),
            None => Ok(0),
        }
    }

    /// Removes every feed entry with a sequence up to `through` (never past the last one
    /// written), recording the new trimmed point and `audit` in the same write. Returns how
    /// many sequence numbers were trimmed now (0 when the feed was trimmed that far already).
    ///
    /// The caller decides `through`: the index does not know who still reads the feed.
    pub fn trim_feed(&self, through: u64, audit: AuditEntry) -> Result<u64, IndexError> {
        let _one = lock(&self.trim);
        let through = through.min(self.last_seq()?);
        let before = self.feed_trimmed_to()?;
        if through <= before {
            return Ok(0);
        }
        let mut batch = Batch::new();
        batch.ops.push(Op::DeleteRange(
            cf::FEED,
            keys::seq(before.saturating_add(1)).to_vec(),
            keys::seq(through.saturating_add(1)).to_vec(),
        ));
        batch.ops.push(Op::Put(
            cf::META,
            META_FEED_TRIMMED.to_vec(),
            keys::seq(through).to_vec(),
        ));
        batch.audit(audit);
        self.commit(batch)?;
        Ok(through - before)
    }

    /// The highest sequence, at most `upto`, such that it and every stored entry before it
    /// were written before `cutoff_ms`; the trimmed point when the oldest stored entry is
    /// not that old. Reads from the oldest entry and stops at the first younger one.
    pub fn feed_older_than(&self, cutoff_ms: u64, upto: u64) -> Result<u64, IndexError> {
        let mut found = self.feed_trimmed_to()?;
        let start = keys::seq(found.saturating_add(1));
        self.scan(cf::FEED, b"", &start, |k, v| {
            let seq = keys::take_seq(k)?;
            if seq > upto {
                return Ok(false);
            }
            let e: EntryTime = serde_json::from_slice(v)
                .map_err(|e| IndexError::Corrupt(format!("feed entry {seq}: {e}")))?;
            if e.ts_ms >= cutoff_ms {
                return Ok(false);
            }
            found = seq;
            Ok(true)
        })?;
        Ok(found)
    }

    /// When feed entry `seq` was written (unix ms), if it is still stored.
    pub fn feed_time(&self, seq: u64) -> Result<Option<u64>, IndexError> {
        let cf = self.cf(cf::FEED)?;
        match self
            .db
            .get_pinned_cf(&cf, keys::seq(seq))
            .map_err(crate::db_err(format!("reading feed entry {seq}")))?
        {
            Some(v) => {
                let e: EntryTime = serde_json::from_slice(&v)
                    .map_err(|e| IndexError::Corrupt(format!("feed entry {seq}: {e}")))?;
                Ok(Some(e.ts_ms))
            }
            None => Ok(None),
        }
    }
}

//! The audit log: an append-only JSON-lines file (`<store>/audit.jsonl`) of
//! every capability granted to a step and every denial, with the run, the
//! step and the tenant. Each append is one `write` of whole lines followed
//! by an fsync, so a crash can at worst cut the last line, which readers
//! skip and report.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::StoreError;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub at_ms: u64,
    pub run: Option<String>,
    pub tenant: String,
    pub step: Option<String>,
    /// `granted` or `denied`.
    pub event: String,
    pub capability: String,
    pub detail: String,
}

pub struct AuditLog {
    path: PathBuf,
}

impl AuditLog {
    pub fn new(store: &Path) -> Self {
        Self {
            path: store.join("audit.jsonl"),
        }
    }

    pub fn append(&self, entries: &[AuditEntry]) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut text = String::new();
        for entry in entries {
            text.push_str(&serde_json::to_string(entry).expect("audit entries always encode"));
            text.push('\n');
        }
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(|e| StoreError::io(&self.path, e))?;
        file.write_all(text.as_bytes())
            .and_then(|()| file.sync_data())
            .map_err(|e| StoreError::io(&self.path, e))
    }

    /// Every readable entry, and how many lines could not be read.
    pub fn read(&self) -> Result<(Vec<AuditEntry>, usize), StoreError> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
            Err(e) => return Err(StoreError::io(&self.path, e)),
        };
        let mut bad = 0;
        let entries = text
            .lines()
            .filter_map(|line| match serde_json::from_str(line) {
                Ok(entry) => Some(entry),
                Err(_) => {
                    bad += 1;
                    None
                }
            })
            .collect();
        Ok((entries, bad))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(step: &str) -> AuditEntry {
        AuditEntry {
            at_ms: 1,
            run: Some("r".into()),
            tenant: "t".into(),
            step: Some(step.into()),
            event: "granted".into(),
            capability: "env:LANG".into(),
            detail: String::new(),
        }
    }

    #[test]
    fn appends_and_reads_back_skipping_a_torn_last_line() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::new(dir.path());
        log.append(&[entry("a"), entry("b")]).unwrap();
        log.append(&[entry("c")]).unwrap();
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join("audit.jsonl"))
            .unwrap();
        file.write_all(b"{\"at_ms\": 2, \"ru").unwrap();
        let (entries, bad) = log.read().unwrap();
        assert_eq!(
            entries
                .iter()
                .map(|e| e.step.clone().unwrap())
                .collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
        assert_eq!(bad, 1);
    }
}

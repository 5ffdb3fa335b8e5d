//! Run journals: one append-only file per run, `<store>/journal/<run id>.log`,
//! holding the run's [`JournalEvent`]s as JSON lines. Each batch the
//! scheduler hands over is one [`super::log`] frame (or a few, if it is
//! large), so a step's five events cost one checksum between them, not five.
//!
//! A journal is the one thing in the store that cannot be recomputed, so it
//! is never rewritten: events are appended in batches (one `write` each) and
//! made durable with `fdatasync` when the scheduler asks. A torn last frame
//! (power lost mid-write) is cut off before the journal is appended to
//! again and skipped when it is read: its events were never reported
//! durable, as the fsync that would have covered them never returned.
//! Damage anywhere else is an error that names the run.
//!
//! Invariant: events of one run are appended in the order they were given,
//! by one writer at a time (the map of open files is behind a lock).

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::StoreError;
use super::log;
use super::records::{JournalEvent, RunId};

/// A batch's events share a frame until it holds about this many bytes.
const FRAME_TARGET: usize = 1 << 20;

pub struct Journals {
    dir: PathBuf,
    open: Mutex<HashMap<RunId, Open>>,
}

struct Open {
    file: Arc<File>,
    /// Written since its last sync: a sync of a clean file still costs a
    /// disk cache flush, so it is skipped.
    dirty: bool,
}

impl Journals {
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::io(dir, e))?;
        Ok(Self {
            dir: dir.to_owned(),
            open: Mutex::new(HashMap::new()),
        })
    }

    fn path(&self, run: &RunId) -> Result<PathBuf, StoreError> {
        // Run ids become file names: accept nothing that could leave the directory.
        if run.0.is_empty() || !run.0.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(StoreError::Corrupt {
                path: self.dir.clone(),
                reason: format!("{:?} is not a run id", run.0),
            });
        }
        Ok(self.dir.join(format!("{}.log", run.0)))
    }

    /// The run's journal file, opened for appending on first use. An
    /// existing journal is checked first: a torn tail is cut off, damage
    /// refuses the append (adding to it would bury the damage).
    fn file<'o>(
        &self,
        open: &'o mut HashMap<RunId, Open>,
        run: &RunId,
    ) -> Result<&'o mut Open, StoreError> {
        if open.contains_key(run) {
            return Ok(open.get_mut(run).expect("just checked"));
        }
        let path = self.path(run)?;
        let file = log::open(&path).map_err(|e| StoreError::io(&path, e))?;
        let bytes = std::fs::read(&path).map_err(|e| StoreError::io(&path, e))?;
        let scan = log::scan(&bytes);
        if let Some(at) = scan.damage {
            return Err(damaged(run, &path, at));
        }
        if scan.torn(bytes.len()) {
            tracing::warn!(
                "journal of run {run}: cutting off an unfinished write at byte {}",
                scan.valid_len
            );
            file.set_len(scan.valid_len)
                .map_err(|e| StoreError::io(&path, e))?;
        }
        let open = open.entry(run.clone()).or_insert(Open {
            file: Arc::new(file),
            dirty: false,
        });
        Ok(open)
    }

    /// Append events in order with one write. They survive a crash of this
    /// process at once; [`Self::sync`] makes them survive the machine's.
    pub fn append(&self, run: &RunId, events: &[JournalEvent]) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        let mut frames = Vec::with_capacity(events.len() * 160 + log::HEADER);
        let mut lines = Vec::with_capacity(events.len() * 160);
        for event in events {
            if lines.len() >= FRAME_TARGET {
                log::frame(&lines, &mut frames);
                lines.clear();
            } else if !lines.is_empty() {
                lines.push(b'\n');
            }
            // JSON never holds a raw newline, so lines split cleanly.
            serde_json::to_writer(&mut lines, event).map_err(|e| StoreError::Unencodable {
                what: format!("an event of run {run}"),
                reason: e.to_string(),
            })?;
        }
        log::frame(&lines, &mut frames);
        // Holding the lock while writing keeps batches whole and in order.
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let journal = self.file(&mut open, run)?;
        journal.dirty = true;
        let mut file = &*journal.file;
        let len = file.metadata().map(|m| m.len());
        if let Err(e) = file.write_all(&frames) {
            // Cut a partial write so the next batch starts on a frame boundary.
            if let Ok(len) = len {
                let _ = file.set_len(len);
            }
            return Err(StoreError::io(&self.path(run)?, e));
        }
        Ok(())
    }

    /// Make the run's appended events durable.
    pub fn sync(&self, run: &RunId) -> Result<(), StoreError> {
        let file = {
            let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
            let journal = self.file(&mut open, run)?;
            if !std::mem::take(&mut journal.dirty) {
                return Ok(());
            }
            journal.file.clone()
        };
        file.sync_data()
            .map_err(|e| StoreError::io(&self.dir.join(&run.0), e))
    }

    /// Sync the run's journal if it was written to, and let go of its open
    /// file: a run that ended holds no file descriptor. A later append
    /// (a resume) opens it again.
    pub fn close(&self, run: &RunId) -> Result<(), StoreError> {
        self.sync(run)?;
        self.open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(run);
        Ok(())
    }

    /// How many journals are open for appending now.
    pub fn open_count(&self) -> usize {
        self.open.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Make every journal written to since its last sync durable.
    pub fn sync_all(&self) -> Result<(), StoreError> {
        let dirty: Vec<RunId> = self
            .open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(_, journal)| journal.dirty)
            .map(|(run, _)| run.clone())
            .collect();
        for run in dirty {
            self.sync(&run)?;
        }
        Ok(())
    }

    /// Delete a run's journal; returns the bytes it held (0 if it had none).
    pub fn remove(&self, run: &RunId) -> Result<u64, StoreError> {
        let path = self.path(run)?;
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.remove(run);
        let len = match std::fs::metadata(&path) {
            Ok(meta) => meta.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(StoreError::io(&path, e)),
        };
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(len),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(StoreError::io(&path, e)),
        }
    }

    /// The runs that have a journal file. Anything else in the directory
    /// (other names, other extensions, directories) is not listed.
    pub fn runs(&self) -> Result<Vec<RunId>, StoreError> {
        let entries = std::fs::read_dir(&self.dir).map_err(|e| StoreError::io(&self.dir, e))?;
        let mut runs = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| StoreError::io(&self.dir, e))?;
            if !entry.file_type().is_ok_and(|t| t.is_file()) {
                continue;
            }
            let name = entry.file_name();
            let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".log")) else {
                continue;
            };
            let run = RunId(id.to_owned());
            if self.path(&run).is_ok() {
                runs.push(run);
            }
        }
        Ok(runs)
    }

    /// A run's events in order. A run with no journal file has no events.
    pub fn read(&self, run: &RunId) -> Result<Vec<JournalEvent>, StoreError> {
        let (events, _, torn) = self.read_tail(run, JournalMark::START)?;
        if let Some(at) = torn {
            tracing::warn!("journal of run {run}: ignoring an unfinished write at byte {at}");
        }
        Ok(events)
    }

    /// The events appended after `mark` (from an earlier read of this run's
    /// journal, or [`JournalMark::START`]), and the mark to read on from.
    /// A follower of a live run reads each event once this way, however
    /// long the journal grows. A frame still being written is not read:
    /// the mark stops before it, and the next call picks it up whole.
    pub fn read_after(
        &self,
        run: &RunId,
        mark: JournalMark,
    ) -> Result<(Vec<JournalEvent>, JournalMark), StoreError> {
        let (events, mark, _) = self.read_tail(run, mark)?;
        Ok((events, mark))
    }

    /// The events after `mark`, the mark after them, and where an
    /// unfinished write starts if there is one.
    fn read_tail(
        &self,
        run: &RunId,
        mark: JournalMark,
    ) -> Result<(Vec<JournalEvent>, JournalMark, Option<u64>), StoreError> {
        use std::io::{Read, Seek, SeekFrom};
        let path = self.path(run)?;
        let io = |e| StoreError::io(&path, e);
        let mut file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok((Vec::new(), mark, None));
            }
            Err(e) => return Err(io(e)),
        };
        let mut bytes = Vec::new();
        // A journal shorter than the mark was removed and begun again (or
        // cut): there is nothing after the mark to read.
        if file.metadata().map_err(io)?.len() > mark.0 {
            file.seek(SeekFrom::Start(mark.0)).map_err(io)?;
            file.read_to_end(&mut bytes).map_err(io)?;
        }
        let scan = log::scan(&bytes);
        if let Some(at) = scan.damage {
            return Err(damaged(run, &path, mark.0 + at));
        }
        let torn = scan.torn(bytes.len()).then_some(mark.0 + scan.valid_len);
        let events = scan
            .records
            .iter()
            .flat_map(|&(offset, payload)| {
                payload
                    .split(|&b| b == b'\n')
                    .map(move |line| (mark.0 + offset, line))
            })
            .map(|(offset, line)| {
                serde_json::from_slice(line).map_err(|e| StoreError::Corrupt {
                    path: path.clone(),
                    reason: format!(
                        "the journal of run {run} has an unreadable event in the frame at byte {offset} ({e}); that run can no longer be resumed or replayed"
                    ),
                })
            })
            .collect::<Result<_, _>>()?;
        Ok((events, JournalMark(mark.0 + scan.valid_len), torn))
    }
}

/// How far a reader got through a run's journal: the end of the last whole
/// frame it read. Only [`Journals::read_after`] makes one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct JournalMark(u64);

impl JournalMark {
    /// Before the first event (also the default).
    pub const START: Self = Self(0);
}

fn damaged(run: &RunId, path: &Path, at: u64) -> StoreError {
    StoreError::Corrupt {
        path: path.to_owned(),
        reason: format!(
            "the journal of run {run} is damaged at byte {at} (its checksum does not match); that run can no longer be resumed or replayed"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(i: u64) -> JournalEvent {
        JournalEvent::StepScheduled {
            at_ms: i,
            step: format!("s{i}"),
            items: None,
        }
    }

    #[test]
    fn events_read_back_in_order_per_run() {
        let dir = tempfile::tempdir().unwrap();
        let journals = Journals::open(dir.path()).unwrap();
        let (a, b) = (RunId("aaaa".into()), RunId("bbbb".into()));
        journals.append(&a, &[event(1), event(2)]).unwrap();
        journals.append(&b, &[event(9)]).unwrap();
        journals.append(&a, &[event(3)]).unwrap();
        journals.sync_all().unwrap();
        assert_eq!(journals.read(&a).unwrap(), [event(1), event(2), event(3)]);
        assert_eq!(journals.read(&b).unwrap(), [event(9)]);
        assert!(journals.read(&RunId("cccc".into())).unwrap().is_empty());
    }

    #[test]
    fn a_follower_reads_each_event_once_and_never_half_a_batch() {
        let dir = tempfile::tempdir().unwrap();
        let journals = Journals::open(dir.path()).unwrap();
        let run = RunId("abcd".into());
        let (none, start) = journals.read_after(&run, JournalMark::START).unwrap();
        assert!(
            none.is_empty() && start == JournalMark::START,
            "no journal yet"
        );
        journals.append(&run, &[event(1), event(2)]).unwrap();
        let (first, mark) = journals.read_after(&run, start).unwrap();
        assert_eq!(first, [event(1), event(2)]);
        assert_eq!(journals.read_after(&run, mark).unwrap(), (vec![], mark));

        // A batch caught half-written (its writer is mid-`write`) is not
        // read, and the mark stays before it; once whole, it is read whole.
        let mut batch = Vec::new();
        log::frame(&serde_json::to_vec(&event(3)).unwrap(), &mut batch);
        let path = dir.path().join("abcd.log");
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        file.write_all(&batch[..batch.len() / 2]).unwrap();
        assert_eq!(journals.read_after(&run, mark).unwrap(), (vec![], mark));
        file.write_all(&batch[batch.len() / 2..]).unwrap();
        let (second, mark) = journals.read_after(&run, mark).unwrap();
        assert_eq!(second, [event(3)]);
        let fourth_at = std::fs::metadata(&path).unwrap().len();
        journals.append(&run, &[event(4)]).unwrap();
        assert_eq!(journals.read_after(&run, mark).unwrap().0, [event(4)]);
        assert_eq!(
            journals.read(&run).unwrap(),
            [event(1), event(2), event(3), event(4)]
        );

        // Damage after the mark (a bad frame with more after it) is an
        // error that names its place in the whole file.
        let mut bytes = std::fs::read(&path).unwrap();
        *bytes.last_mut().unwrap() ^= 0xff;
        bytes.extend_from_slice(&batch);
        std::fs::write(&path, &bytes).unwrap();
        let err = journals.read_after(&run, mark).unwrap_err().to_string();
        assert!(
            err.contains(&format!("damaged at byte {fourth_at} ")),
            "{err}"
        );

        // A journal removed (and begun again shorter) has nothing after an
        // old mark.
        journals.remove(&run).unwrap();
        assert_eq!(journals.read_after(&run, mark).unwrap().0, []);
    }

    #[test]
    fn only_journal_files_are_listed_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let journals = Journals::open(dir.path()).unwrap();
        let run = RunId("abcd1234".into());
        journals.append(&run, &[event(1)]).unwrap();
        // Things that are not journals: other extensions, names that are
        // not run ids, a directory named like a journal.
        for name in [
            "notes.txt",
            "bad-name.log",
            ".hidden.log",
            "abcd1234.log.bak",
        ] {
            std::fs::write(dir.path().join(name), "x").unwrap();
        }
        std::fs::create_dir(dir.path().join("ffff.log")).unwrap();
        let mut listed = journals.runs().unwrap();
        listed.sort();
        assert_eq!(listed, [RunId("abcd1234".into())]);
        let len = std::fs::metadata(dir.path().join("abcd1234.log"))
            .unwrap()
            .len();
        assert_eq!(journals.remove(&run).unwrap(), len);
        assert_eq!(journals.remove(&run).unwrap(), 0, "already gone");
        assert!(journals.read(&run).unwrap().is_empty());
        // A directory is not deleted as if it were a journal: asked to, by
        // name, it is an error.
        assert!(journals.remove(&RunId("ffff".into())).is_err());
        assert!(dir.path().join("ffff.log").is_dir());
        for name in [
            "notes.txt",
            "bad-name.log",
            ".hidden.log",
            "abcd1234.log.bak",
        ] {
            assert!(dir.path().join(name).exists(), "{name} was left alone");
        }
        assert!(journals.remove(&RunId("../x".into())).is_err());
    }

    #[test]
    fn a_torn_tail_is_skipped_then_cut_before_the_next_append() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunId("abcd".into());
        {
            let journals = Journals::open(dir.path()).unwrap();
            journals.append(&run, &[event(1)]).unwrap();
            journals.append(&run, &[event(2)]).unwrap();
        }
        let path = dir.path().join("abcd.log");
        let len = std::fs::metadata(&path).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len - 3)
            .unwrap();
        let journals = Journals::open(dir.path()).unwrap();
        assert_eq!(journals.read(&run).unwrap(), [event(1)]);
        journals.append(&run, &[event(3)]).unwrap();
        assert_eq!(journals.read(&run).unwrap(), [event(1), event(3)]);
    }

    #[test]
    fn damage_in_the_middle_is_an_error_naming_the_run() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunId("abcd".into());
        let journals = Journals::open(dir.path()).unwrap();
        journals.append(&run, &[event(1)]).unwrap();
        journals.append(&run, &[event(2)]).unwrap();
        let path = dir.path().join("abcd.log");
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[log::HEADER + 2] ^= 0xff;
        std::fs::write(&path, bytes).unwrap();
        let err = journals.read(&run).unwrap_err().to_string();
        assert!(err.contains("run abcd is damaged at byte 0"), "{err}");
        let fresh = Journals::open(dir.path()).unwrap();
        assert!(
            fresh.append(&run, &[event(3)]).is_err(),
            "no appending after damage"
        );
    }

    #[test]
    fn a_batch_shares_frames_and_a_torn_batch_is_dropped_whole() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunId("abcd".into());
        let path = dir.path().join("abcd.log");
        let journals = Journals::open(dir.path()).unwrap();
        journals.append(&run, &[event(1), event(2)]).unwrap();
        let one_batch = std::fs::read(&path).unwrap();
        assert_eq!(
            log::scan(&one_batch).records.len(),
            1,
            "one frame per batch"
        );

        // A batch larger than a frame is split, and reads back whole and in order.
        let big: Vec<JournalEvent> = (3..30_003).map(event).collect();
        journals.append(&run, &big).unwrap();
        let frames = log::scan(&std::fs::read(&path).unwrap()).records.len();
        assert!(frames > 2, "a batch of 1.6 MB is split: {frames} frames");
        let mut expected = vec![event(1), event(2)];
        expected.extend(big);
        assert_eq!(journals.read(&run).unwrap(), expected);

        // The last batch torn: all of it is gone, the one before it stays.
        journals.append(&run, &[event(7), event(8)]).unwrap();
        let len = std::fs::metadata(&path).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len - 5)
            .unwrap();
        assert_eq!(
            Journals::open(dir.path()).unwrap().read(&run).unwrap(),
            expected
        );
    }

    #[test]
    fn run_ids_cannot_name_other_files() {
        let dir = tempfile::tempdir().unwrap();
        let journals = Journals::open(dir.path()).unwrap();
        for bad in ["../x", "", "a/b", "."] {
            assert!(
                journals.append(&RunId(bad.into()), &[event(1)]).is_err(),
                "{bad}"
            );
        }
    }
}

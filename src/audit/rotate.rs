//! A log file rotated by size, as kube-apiserver rotates its audit log (lumberjack): when the
//! next line would take the file past `max_size`, the file is renamed to
//! `<name>-<UTC timestamp>.<ext>` (e.g. `audit-2026-12-05T07-04-13.123.log`) and a new one is
//! started; then backups beyond `max_backups`, or older than `max_age` by the timestamp in their
//! name, are removed. A line is never split across files.
//!
//! Hand-written rather than from `file-rotate` or `rolling-file`: neither keeps a number of
//! backups *and* removes them by age together, as these flags ask, and `file-rotate` drops
//! writes silently when it cannot open its file, where the audit log must count them.
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// lumberjack's default when `--audit-log-maxsize` is 0.
pub const DEFAULT_MAX_SIZE: u64 = 100 * 1024 * 1024;
const BACKUP_TIME_FORMAT: &str = "%Y-%m-%dT%H-%M-%S%.3f";

/// When to rotate and which backups to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes a file may reach before the next line goes to a new one.
    pub max_size: u64,
    /// Backups kept, newest first; 0 keeps all.
    pub max_backups: usize,
    /// Backups older than this are removed; `None` keeps them whatever their age.
    pub max_age: Option<Duration>,
}

/// The audit log file. Not shared: one writer thread owns it.
pub struct RotatingFile {
    path: PathBuf,
    limits: Limits,
    file: Option<BufWriter<File>>,
    size: u64,
    /// The time in the newest backup's name: later backups get later names, also when several
    /// rotations fall in one millisecond.
    last_backup: Option<jiff::Timestamp>,
}

impl RotatingFile {
    /// Opens (or creates, mode 0600) `path` for appending; its directory must exist.
    pub fn open(path: &Path, limits: Limits) -> io::Result<RotatingFile> {
        let mut f = RotatingFile {
            path: path.to_path_buf(),
            limits,
            file: None,
            size: 0,
            last_backup: None,
        };
        f.open_existing()?;
        f.last_backup = f.backups().ok().and_then(|b| b.first().map(|(at, _)| *at));
        Ok(f)
    }

    /// Appends one line (which ends with `\n`), rotating first if it would not fit. A file that
    /// could not be opened or renamed earlier is tried again here.
    pub fn write_line(&mut self, line: &[u8]) -> io::Result<()> {
        self.write_lines(line, &[line.len()]).map_err(|(_, e)| e)
    }

    /// Appends whole lines, the `i`th ending at `ends[i]` in `text`, in as few writes as the
    /// rotations between them allow; as [`write_line`](Self::write_line) would one by one. On an
    /// error, also how many lines were written before it.
    pub fn write_lines(&mut self, text: &[u8], ends: &[usize]) -> Result<(), (usize, io::Error)> {
        let (mut done, mut start) = (0, 0);
        while done < ends.len() {
            if self.file.is_none() {
                self.open_existing().map_err(|e| (done, e))?;
            }
            let len = |last: usize| (ends[last] - start) as u64;
            if self.size > 0 && self.size + len(done) > self.limits.max_size {
                self.rotate().map_err(|e| (done, e))?;
            }
            // The first line goes in whatever its size (a file is never left empty for it);
            // the next ones while they fit.
            let room = self.limits.max_size.saturating_sub(self.size);
            let mut last = done;
            while last + 1 < ends.len() && len(last + 1) <= room {
                last += 1;
            }
            let file = match &mut self.file {
                Some(f) => f,
                None => return Err((done, io::Error::other("audit log file is not open"))),
            };
            file.write_all(&text[start..ends[last]])
                .map_err(|e| (done, e))?;
            self.size += len(last);
            done = last + 1;
            start = ends[last];
        }
        Ok(())
    }

    pub fn flush(&mut self) -> io::Result<()> {
        match &mut self.file {
            Some(f) => f.flush(),
            None => Ok(()),
        }
    }

    fn open_existing(&mut self) -> io::Result<()> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&self.path)?;
        self.size = file.metadata()?.len();
        self.file = Some(BufWriter::with_capacity(64 * 1024, file));
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        if let Some(mut f) = self.file.take() {
            f.flush()?;
        }
        // Room is made before the new backup appears: never more backups than kept, even
        // for a moment.
        if let Err(e) = self.remove_old_backups(jiff::Timestamp::now(), 1) {
            tracing::warn!(error = %e, "audit log: old backups not removed");
        }
        let (at, backup) = self.free_backup_name(jiff::Timestamp::now());
        std::fs::rename(&self.path, &backup)?;
        self.last_backup = Some(at);
        self.open_existing()
    }

    /// `<stem>-<timestamp><.ext>` beside the log, named after the last backup and after any
    /// file already there: a backup is never overwritten, and names sort in the order written.
    fn free_backup_name(&self, now: jiff::Timestamp) -> (jiff::Timestamp, PathBuf) {
        let ms = jiff::SignedDuration::from_millis(1);
        let mut at = match self.last_backup {
            Some(last) if last + ms > now => last + ms,
            _ => now,
        };
        let (stem, ext) = self.name_parts();
        loop {
            let stamp = at.strftime(BACKUP_TIME_FORMAT);
            let candidate = self.path.with_file_name(format!("{stem}-{stamp}{ext}"));
            if !candidate.exists() {
                return (at, candidate);
            }
            at += ms;
        }
    }

    /// The file name without and with its extension's dot: `audit.log` → (`audit`, `.log`).
    fn name_parts(&self) -> (String, String) {
        let stem = self
            .path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let ext = self
            .path
            .extension()
            .map(|e| format!(".{}", e.to_string_lossy()))
            .unwrap_or_default();
        (stem, ext)
    }

    /// The backups beside the log, newest first, with the time in their names.
    pub fn backups(&self) -> io::Result<Vec<(jiff::Timestamp, PathBuf)>> {
        let (stem, ext) = self.name_parts();
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let mut found = Vec::new();
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            let stamp = name
                .strip_prefix(stem.as_str())
                .and_then(|r| r.strip_prefix('-'))
                .and_then(|r| r.strip_suffix(ext.as_str()));
            let parsed = stamp.and_then(|s| {
                jiff::civil::DateTime::strptime(BACKUP_TIME_FORMAT, s)
                    .ok()?
                    .to_zoned(jiff::tz::TimeZone::UTC)
                    .ok()
            });
            if let Some(at) = parsed {
                found.push((at.timestamp(), path));
            }
        }
        found.sort_by(|a, b| b.cmp(a));
        Ok(found)
    }

    /// Remove the backups past `max_backups` (keeping `room` for backups about to be made)
    /// or older than `max_age`.
    fn remove_old_backups(&self, now: jiff::Timestamp, room: usize) -> io::Result<()> {
        let backups = self.backups()?;
        let cutoff = self
            .limits
            .max_age
            .and_then(|age| jiff::SignedDuration::try_from(age).ok())
            .and_then(|age| now.checked_sub(age).ok());
        for (i, (at, path)) in backups.iter().enumerate() {
            let too_many = self.limits.max_backups > 0 && i + room >= self.limits.max_backups;
            let too_old = cutoff.is_some_and(|c| *at < c);
            if too_many || too_old {
                std::fs::remove_file(path)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_size: u64, max_backups: usize) -> Limits {
        Limits {
            max_size,
            max_backups,
            max_age: None,
        }
    }

    fn read(p: &Path) -> String {
        std::fs::read_to_string(p).unwrap()
    }

    #[test]
    fn a_full_file_becomes_a_timestamped_backup_and_lines_stay_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let mut f = RotatingFile::open(&path, limits(10, 0)).unwrap();
        for line in ["aaaa\n", "bbbb\n", "cccc\n"] {
            f.write_line(line.as_bytes()).unwrap();
        }
        f.flush().unwrap();
        assert_eq!(read(&path), "cccc\n");
        let backups = f.backups().unwrap();
        assert_eq!(backups.len(), 1);
        assert_eq!(read(&backups[0].1), "aaaa\nbbbb\n");
        let name = backups[0]
            .1
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        assert!(
            name.starts_with("audit-") && name.ends_with(".log") && name.len() == 33,
            "{name}"
        );
    }

    #[test]
    fn a_batch_of_lines_is_split_only_where_a_file_is_full() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let mut f = RotatingFile::open(&path, limits(10, 0)).unwrap();
        let text = b"aaaa\nbbbb\ncccccccccccc\ndd\n";
        f.write_lines(text, &[5, 10, 23, 26]).unwrap();
        f.flush().unwrap();
        let mut backups: Vec<String> = f.backups().unwrap().iter().map(|b| read(&b.1)).collect();
        backups.reverse();
        assert_eq!(backups, ["aaaa\nbbbb\n", "cccccccccccc\n"]);
        assert_eq!(read(&path), "dd\n");
    }

    #[test]
    fn only_the_newest_backups_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let mut f = RotatingFile::open(&path, limits(5, 2)).unwrap();
        for i in 0..6 {
            f.write_line(format!("{i}{i}{i}{i}\n").as_bytes()).unwrap();
        }
        f.flush().unwrap();
        let kept: Vec<String> = f.backups().unwrap().iter().map(|b| read(&b.1)).collect();
        assert_eq!(kept, ["4444\n", "3333\n"]);
        assert_eq!(read(&path), "5555\n");
    }

    #[test]
    fn backups_older_than_max_age_are_removed_at_the_next_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let old = dir.path().join("audit-2020-01-01T00-00-00.000.log");
        std::fs::write(&old, "old\n").unwrap();
        let unrelated = dir.path().join("audit-notes.log");
        std::fs::write(&unrelated, "keep\n").unwrap();
        let mut f = RotatingFile::open(
            &path,
            Limits {
                max_size: 5,
                max_backups: 0,
                max_age: Some(Duration::from_secs(86_400)),
            },
        )
        .unwrap();
        f.write_line(b"1111\n").unwrap();
        f.write_line(b"2222\n").unwrap();
        assert!(!old.exists());
        assert!(unrelated.exists());
        assert_eq!(f.backups().unwrap().len(), 1);
    }

    #[test]
    fn an_existing_file_is_appended_to_and_counts_towards_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        std::fs::write(&path, "earlier\n").unwrap();
        let mut f = RotatingFile::open(&path, limits(12, 0)).unwrap();
        f.write_line(b"next\n").unwrap();
        f.flush().unwrap();
        assert_eq!(f.backups().unwrap().len(), 1);
        assert_eq!(read(&path), "next\n");
    }
}
